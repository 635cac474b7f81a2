"""Token-classification (NER) data: tagged words read from CoNLL/IOB files, JSONL with tokens and
tags, or JSONL with text and character spans; checked, split, and aligned to word pieces.

Every reader gives one frame shape, one row per sentence:
  text   the sentence (CoNLL and tokens+tags rows: the words joined by single spaces)
  words  its words; starts: each word's character offset in text
  tags   one IOB2 tag per word: O, B-TYPE (an entity's first word), I-TYPE (the words after it)
  group  what must stay in one split (the built-in set: the country a sentence comes from; else the row)

The IOB rule. A tag is O, B-TYPE or I-TYPE; anything else (E-, S-, a bare type) is refused. An I-TYPE
that continues no TYPE entity (first in the sentence, after O, or after a B/I of another type) is an
unknown transition. By default it starts a new TYPE entity, as conlleval and seqeval's default mode
read it (so IOB1 files such as the original CoNLL-2003 read correctly), and is rewritten as B-TYPE so
that training sees IOB2 only. With `strict_iob` it is refused in one line naming the row and word.

Text with spans is split into words as BERT's basic tokenizer splits (runs of letters/digits, and
each other non-space character alone): the words `transformers.pipeline("token-classification")`
groups word pieces into, so predicted entities have the same boundaries there and here. A span must
start and end on word boundaries.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunelab.data.load import read_raw, require_columns
from tunelab.errors import TunelabError

CONLL_SUFFIXES = (".conll", ".iob", ".iob2", ".bio")
WORD = re.compile(r"[^\W_]+|[^\s]", re.UNICODE)
IGNORED = -100  # the label id the loss skips: every word piece after a word's first
COLUMNS = ["text", "words", "starts", "tags", "group"]


def split_words(text: str) -> tuple[list[str], list[int]]:
    """The words of `text` (BERT's basic split) and their character offsets."""
    matches = list(WORD.finditer(text))
    return [m.group() for m in matches], [m.start() for m in matches]


def joined(words: Sequence[str]) -> tuple[str, list[int]]:
    """Pre-split words as one text (single spaces) and each word's offset in it."""
    starts, position = [], 0
    for word in words:
        starts.append(position)
        position += len(word) + 1
    return " ".join(words), starts


# -- the IOB rule ---------------------------------------------------------------------------------


def check_tags(tags: Sequence[str], words: Sequence[str], where: str, strict_iob: bool) -> list[str]:
    """The tags as IOB2 (see the module's rule); a malformed tag or, with strict_iob, an unknown transition is refused."""
    out: list[str] = []
    previous = "O"
    for index, tag in enumerate(tags):
        tag = str(tag).strip()
        prefix, _, kind = tag.partition("-")
        if tag != "O" and (prefix not in ("B", "I") or not kind):
            raise TunelabError(
                f"{where}: tag {tag!r} of word {index + 1} ({words[index]!r}) is not an IOB tag", "use O, B-TYPE (an entity's first word) or I-TYPE"
            )
        if prefix == "I" and previous[2:] != kind:
            if strict_iob:
                after = "the sentence start" if index == 0 else repr(previous)
                raise TunelabError(
                    f"{where}: unknown IOB transition {tag!r} after {after} at word {index + 1} ({words[index]!r})",
                    f"strict IOB2: an entity starts with B-{kind}; fix the tag, or drop strict_iob to read it as starting an entity",
                )
            tag = f"B-{kind}"
        out.append(tag)
        previous = tag
    return out


def tagged_row(words: Sequence[Any], tags: Any, where: str, strict_iob: bool, group: str) -> tuple:
    if not isinstance(words, (list, tuple, np.ndarray)) or not isinstance(tags, (list, tuple, np.ndarray)):
        raise TunelabError(f"{where}: tokens and tags must be lists", 'write e.g. {"tokens": ["Paris", "is"], "tags": ["B-LOC", "O"]}')
    words = [str(word) for word in words]
    if len(words) != len(tags):
        raise TunelabError(f"{where}: {len(words)} tokens but {len(tags)} tags", "give exactly one tag per token")
    if any(not word or any(c.isspace() for c in word) for word in words):
        raise TunelabError(f"{where}: a token is empty or holds a space", "split the sentence into tokens without spaces")
    text, starts = joined(words)
    return text, words, starts, check_tags(list(tags), words, where, strict_iob), group


def spans_row(text: Any, spans: Any, where: str, group: str) -> tuple:
    """A text with character spans ({"start", "end", "label"} objects or [start, end, label] lists) as tagged words."""
    if not isinstance(text, str) or not text.strip():
        raise TunelabError(f"{where}: the text is empty", "give every row a text")
    words, starts = split_words(text)
    tags = ["O"] * len(words)
    ends = [start + len(word) for start, word in zip(starts, words)]
    taken = [False] * len(words)
    for span in spans if isinstance(spans, (list, tuple, np.ndarray)) else [spans]:
        if isinstance(span, dict):
            start, end, label = span.get("start"), span.get("end"), span.get("label")
        elif isinstance(span, (list, tuple, np.ndarray)) and len(span) == 3:
            start, end, label = span
        else:
            raise TunelabError(f"{where}: span {span!r} is not a start, end and label", 'write spans as [{"start": 0, "end": 5, "label": "LOC"}]')
        if not isinstance(start, (int, np.integer)) or not isinstance(end, (int, np.integer)) or not (0 <= start < end <= len(text)):
            raise TunelabError(f"{where}: span {start!r}-{end!r} is not inside the text ({len(text)} characters)", "give character offsets, end exclusive")
        if not label or str(label)[:2] in ("B-", "I-"):
            raise TunelabError(f"{where}: span {start}-{end} has label {label!r}", "give the entity type (e.g. LOC), not an IOB tag")
        inside = [i for i in range(len(words)) if starts[i] < end and ends[i] > start]
        if not inside or starts[inside[0]] != start or ends[inside[-1]] != end:
            raise TunelabError(
                f"{where}: span {start}-{end} ({text[start:end]!r}) does not start and end on word boundaries", "move its offsets to whole words"
            )
        if any(taken[i] for i in inside):
            raise TunelabError(f"{where}: span {start}-{end} ({text[start:end]!r}) overlaps another span", "entities cannot overlap")
        for position, i in enumerate(inside):
            tags[i] = f"{'B' if position == 0 else 'I'}-{label}"
            taken[i] = True
    return text, words, starts, tags, group


# -- readers --------------------------------------------------------------------------------------


def load_tagged(
    source: str | os.PathLike,
    tokens_col: str = "tokens",
    tags_col: str = "tags",
    text_col: str = "text",
    spans_col: str = "spans",
    encoding: str = "utf-8",
    strict_iob: bool = False,
) -> pd.DataFrame:
    """A CoNLL/IOB file (by its suffix), or a table with tokens and tags columns, or with text and spans, as tagged sentences."""
    name = str(source)
    if Path(source).suffix.lower() in CONLL_SUFFIXES:
        return read_conll(Path(source), encoding, strict_iob)
    raw = read_raw(source, encoding)
    raw.columns = [str(c) for c in raw.columns]
    groups = raw["group"].astype(str).tolist() if "group" in raw.columns else [str(i) for i in range(len(raw))]
    if tokens_col in raw.columns:
        require_columns(raw, name, {"tags": tags_col})
        rows = [tagged_row(w, t, f"{name}, row {i + 1}", strict_iob, g) for i, (w, t, g) in enumerate(zip(raw[tokens_col], raw[tags_col], groups))]
    elif spans_col in raw.columns:
        require_columns(raw, name, {"text": text_col})
        rows = [spans_row(x, s, f"{name}, row {i + 1}", g) for i, (x, s, g) in enumerate(zip(raw[text_col], raw[spans_col], groups))]
    else:
        raise TunelabError(
            f"{name} has neither a '{tokens_col}' column (with '{tags_col}') nor a '{spans_col}' column (with '{text_col}')",
            f"give tokens and tags lists, or text and character spans, or a CoNLL file ({', '.join(CONLL_SUFFIXES)})",
        )
    return tagged_frame(rows, name)


def looks_tagged(
    source: str | os.PathLike, encoding: str = "utf-8", tokens_col: str = "tokens", spans_col: str = "spans", delimiter: str | None = None
) -> str | None:
    """How `source` holds tagged words (a CoNLL/IOB file, tokens and tags, text and spans, a built-in tagged set), or None."""
    from tunelab.data.builtin import BUILTIN

    if str(source) in BUILTIN:
        return "built-in" if BUILTIN[str(source)].description.startswith("token classification") else None
    if Path(source).suffix.lower() in CONLL_SUFFIXES:
        return "CoNLL/IOB"
    columns = {str(c) for c in read_raw(source, encoding, delimiter).columns}
    if tokens_col in columns:
        return "tokens and tags"
    if spans_col in columns:
        return "text and spans"
    return None


def tagged_source(name: str) -> pd.DataFrame:
    """A built-in token-classification set (its loader gives tagged sentences)."""
    from tunelab.data.builtin import BUILTIN

    frame = BUILTIN[name].load()
    if "words" not in frame.columns:
        raise TunelabError(f"built-in dataset '{name}' is not a token-classification set", "use factbook-entities or a tagged file")
    return frame


def read_conll(path: Path, encoding: str = "utf-8", strict_iob: bool = False) -> pd.DataFrame:
    """CoNLL/IOB columns: one word per line, its first column the word and its last the tag; a blank line ends a sentence; -DOCSTART- lines are skipped."""
    if not path.is_file():
        raise TunelabError(f"data file '{path}' does not exist", "check the path")
    rows, words, tags, first_line = [], [], [], 0

    def close() -> None:
        if words:
            rows.append(tagged_row(words, tags, f"{path}, sentence at line {first_line}", strict_iob, str(len(rows))))
        words.clear()
        tags.clear()

    with open(path, encoding=encoding) as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields or fields[0] == "-DOCSTART-":
                close()
                continue
            if len(fields) < 2:
                raise TunelabError(f"{path} line {number}: {line.strip()!r} has no tag", "write each word and its tag on one line, separated by a space or tab")
            if not words:
                first_line = number
            words.append(fields[0])
            tags.append(fields[-1])
    close()
    return tagged_frame(rows, str(path))


def tagged_frame(rows: list[tuple], name: str) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame = frame[frame["words"].map(len) > 0].reset_index(drop=True)
    if frame.empty:
        raise TunelabError(f"{name} holds no tagged sentences", "check the file")
    if not any(tag != "O" for tags in frame["tags"] for tag in tags):
        raise TunelabError(f"{name} holds no entities: every tag is O", "check the tags column")
    frame.attrs["source"] = name
    return frame


def tag_vocabulary(frames: Sequence[pd.DataFrame]) -> list[str]:
    """O, then B- and I- of every entity type seen, types sorted: the model's outputs in id order."""
    kinds = sorted({tag[2:] for frame in frames for tags in frame["tags"] for tag in tags if tag != "O"})
    return ["O"] + [f"{prefix}-{kind}" for kind in kinds for prefix in ("B", "I")]


def entity_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Entities of each type, most frequent first."""
    counts = Counter(tag[2:] for tags in frame["tags"] for tag in tags if tag.startswith("B-"))
    return dict(counts.most_common())


def profile_tagged(splits: dict[str, pd.DataFrame], tokenizer=None, model_limit: int | None = None) -> dict[str, Any]:
    """data_profile.json for tagged sentences: sentences, words and entities per type in each split, token lengths, warnings."""
    from tunelab.data.tokenize import length_stats, token_lengths

    profile: dict[str, Any] = {"splits": {}, "warnings": []}
    for name, frame in splits.items():
        entry: dict[str, Any] = {"rows": int(len(frame)), "words": int(frame["words"].map(len).sum()), "entity_counts": entity_counts(frame)}
        if tokenizer is not None:
            lengths = token_lengths(tokenizer, frame["text"])
            entry["token_length"] = length_stats(lengths)
            if model_limit and len(lengths) and (lengths > model_limit).any():
                profile["warnings"].append(
                    f"{name}: {int((lengths > model_limit).sum())} sentences are longer than the model's {model_limit} tokens; words past it are tagged O"
                )
        profile["splits"][name] = entry
    train_types = set(profile["splits"].get("train", {}).get("entity_counts", {}))
    for name in ("eval", "test"):
        rare = [kind for kind, n in profile["splits"].get(name, {}).get("entity_counts", {}).items() if n < 10 and kind in train_types]
        if rare:
            profile["warnings"].append(f"{name}: fewer than 10 entities of {', '.join(rare)}: their F1 is noisy")
    return profile


# -- splits ---------------------------------------------------------------------------------------


def split_by_group(frame: pd.DataFrame, eval_fraction: float, test_fraction: float, seed: int) -> dict[str, pd.DataFrame]:
    """Seeded train/eval/test splits of whole groups (the built-in set: countries), so test groups are unseen in training."""
    groups = sorted(frame["group"].unique())
    order = np.random.default_rng(seed).permutation(len(groups))
    n_test = max(1, round(test_fraction * len(groups)))
    n_eval = max(1, round(eval_fraction * len(groups)))
    if len(groups) < n_test + n_eval + 1:
        raise TunelabError(f"only {len(groups)} sentences or groups: too few for train, eval and test splits", "give more data")
    chosen = {"test": order[:n_test], "eval": order[n_test : n_test + n_eval], "train": order[n_test + n_eval :]}
    return {name: frame[frame["group"].isin({groups[i] for i in picks})].reset_index(drop=True) for name, picks in chosen.items()}


def load_tagged_splits(settings) -> dict[str, pd.DataFrame]:
    """The train/eval/test splits a TokenClassificationConfig describes: the built-in set, or the user's files."""
    from tunelab.data.builtin import BUILTIN

    read = lambda source: load_tagged(  # noqa: E731
        source, settings.tokens_col, settings.label_col, settings.text_col, settings.spans_col, settings.encoding, settings.strict_iob
    )
    frame = tagged_source(settings.data) if settings.data in BUILTIN else read(settings.data)
    given = {"eval": settings.eval_data, "test": settings.test_data}
    splits = split_by_group(frame, settings.eval_fraction, settings.test_fraction, settings.seed)
    for name, source in given.items():
        if source is not None:
            splits["train"] = pd.concat([splits["train"], splits[name]], ignore_index=True)
            splits[name] = read(source)
    if settings.max_train_samples is not None and len(splits["train"]) > settings.max_train_samples:
        splits["train"] = splits["train"].sample(settings.max_train_samples, random_state=settings.seed).reset_index(drop=True)
    known = set(tag_vocabulary([splits["train"]]))
    for name in ("eval", "test"):
        unseen = sorted({tag for tags in splits[name]["tags"] for tag in tags} - known)
        if unseen:
            raise TunelabError(f"{name} tags not in the training data: {', '.join(map(repr, unseen))}", "add training sentences with those entity types")
    return splits


# -- alignment to word pieces ---------------------------------------------------------------------


def aligned_labels(word_ids: Sequence[int | None], word_tags: Sequence[int]) -> list[int]:
    """One label per word piece: a word's first piece carries its tag id, the pieces after it and the
    special tokens get IGNORED (-100), which the loss skips."""
    labels, previous = [], None
    for word in word_ids:
        labels.append(IGNORED if word is None or word == previous else int(word_tags[word]))
        previous = word
    return labels


def tokenize_tagged(frame: pd.DataFrame, tokenizer, max_length: int, label2id: dict[str, int]):
    """A datasets.Dataset of input_ids, attention_mask, labels (aligned_labels) and length; words past max_length are cut."""
    import datasets

    encoded = tokenizer(frame["words"].map(list).tolist(), is_split_into_words=True, truncation=True, max_length=max_length)
    labels = [aligned_labels(encoded.word_ids(i), [label2id[tag] for tag in tags]) for i, tags in enumerate(frame["tags"])]
    columns = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": labels}
    columns["length"] = [len(ids) for ids in encoded["input_ids"]]
    return datasets.Dataset.from_dict(columns)
