"""Grounded decoding: a causal LM's answer may only be a span copied from the retrieved passages,
or the abstention phrase.

Why: a small model given the answer in its context still often says something else (a paraphrase,
a neighbouring fact, a fluent invention). Constraining every generated token to continue a span of
the passages makes any answer checkable against a source: either it is there, word for word, or the
model said "I don't know".

    constraint = CopyConstraint(tokenizer, [passages_row0, passages_row1], prompt_length=width)
    model.generate(..., prefix_allowed_tokens_fn=constraint)

The constraint is transformers' own `prefix_allowed_tokens_fn` hook (PrefixConstrainedLogitsProcessor
masks every other token), so greedy, sampling and beam search all keep working.
"""

from __future__ import annotations

import unicodedata
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

from tunelab.answers import ABSTENTION

_SPACE_MARKERS = ("Ġ", "▁")  # byte-level BPE and SentencePiece spell a leading space so


def _is_punctuation(char: str) -> bool:
    return bool(char) and unicodedata.category(char).startswith("P")


class _Pieces:
    """Per-token facts for one tokenizer (text, leading space, no-space variant), computed on demand."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._info: dict[int, tuple[str, bool, int | None]] = {}

    def info(self, token_id: int) -> tuple[str, bool, int | None]:
        """(decoded text, has a leading space, id of the same token without its leading space or None)."""
        known = self._info.get(token_id)
        if known is None:
            tok = self.tokenizer
            raw = tok.convert_ids_to_tokens(token_id) or ""
            text = tok.decode([token_id])
            lead = raw[:1] in _SPACE_MARKERS or text[:1] == " "
            variant = None
            if lead and len(raw) > 1 and raw[:1] in _SPACE_MARKERS:
                candidate = tok.convert_tokens_to_ids(raw[1:])
                if candidate is not None and candidate != tok.unk_token_id and tok.convert_ids_to_tokens(candidate) == raw[1:]:
                    variant = int(candidate)
            known = self._info[token_id] = (text, lead, variant)
        return known


_PIECES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _pieces(tokenizer) -> _Pieces:
    try:
        pieces = _PIECES.get(tokenizer)
        if pieces is None:
            pieces = _PIECES[tokenizer] = _Pieces(tokenizer)
        return pieces
    except TypeError:  # not weak-referenceable: no cache across batches
        return _Pieces(tokenizer)


def eos_ids(tokenizer, model: Any = None) -> list[int]:
    """The end-of-turn ids: the model's generation_config.eos_token_id (an int or a list) and the tokenizer's."""
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in ([configured] if isinstance(configured, int) else list(configured or [])) + [tokenizer.eos_token_id]:
        if value is not None and int(value) not in ids:
            ids.append(int(value))
    if not ids:
        raise ValueError("the tokenizer and the model define no end-of-sequence token")
    return ids


class _Row:
    """One batch row's allowed sequences: every span of its passages, and the abstention phrase."""

    def __init__(self, pieces: _Pieces, passages: Sequence[Sequence[int]], abstention: Sequence[int], whole_words: bool):
        self.passages = [list(p) for p in passages]
        self.abstention = list(abstention)
        self.starts: dict[int, list[tuple[int, int]]] = {}  # first token -> the (passage, position) it matches
        self.ends: set[tuple[int, int]] = set()  # (passage, position) where a span may stop (before that token)
        for p, toks in enumerate(self.passages):
            texts = [pieces.info(t)[0] for t in toks]
            for j, t in enumerate(toks):
                text, lead, variant = pieces.info(t)
                word_start = j == 0 or lead or texts[j - 1][-1:].isspace() or _is_punctuation(texts[j - 1][-1:])
                if whole_words:
                    if word_start or text[:1].isspace() or _is_punctuation(text[:1]):
                        self.ends.add((p, j))
                    if not word_start or not text.strip():
                        continue
                else:
                    self.ends.add((p, j))
                    if not text.strip():
                        continue
                self.starts.setdefault(t, []).append((p, j))
                if variant is not None:  # the answer's first token usually has no leading space
                    self.starts.setdefault(variant, []).append((p, j))
            self.ends.add((p, len(toks)))

    def first(self, token: int) -> set[tuple[int, int]]:
        return {(p, j + 1) for p, j in self.starts.get(token, ())}

    def advance(self, pointers: set[tuple[int, int]], token: int) -> set[tuple[int, int]]:
        return {(p, j + 1) for p, j in pointers if j < len(self.passages[p]) and self.passages[p][j] == token}


class CopyConstraint:
    """`prefix_allowed_tokens_fn` for model.generate: each row's answer is a span of that row's
    passages (starting and ending on word boundaries when `whole_words`), or the abstention phrase,
    followed by an end-of-sequence token.

    tokenizer         the model's tokenizer
    passages          one list of passage texts per batch row (an empty list allows only the abstention)
    abstention        the phrase that declines to answer
    prompt_length     where the generated tokens start: the input width (one int for a left-padded
                      batch) or one int per row
    eos_token_ids     the ids that end an answer; default: eos_ids(tokenizer)
    whole_words       spans start at a word start (a token with a leading space, the start of a
                      passage or line, or after punctuation) and end before the next word or
                      punctuation; False allows any token span

    Allowed after the generated tokens g: every t with g + [t] a prefix of an allowed sequence; EOS
    once g is itself a span (or the whole abstention phrase); only EOS when nothing continues g.
    The first token may also be the no-leading-space form of a passage token (after the assistant
    turn's start, answers begin without a space) and then continues that passage.
    """

    def __init__(
        self,
        tokenizer,
        passages: Sequence[Sequence[str]],
        abstention: str = ABSTENTION,
        prompt_length: int | Sequence[int] = 0,
        *,
        eos_token_ids: Iterable[int] | None = None,
        whole_words: bool = True,
    ):
        pieces = _pieces(tokenizer)
        encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        abstention_ids = encode(abstention) if abstention else []
        self.eos = sorted(set(eos_token_ids if eos_token_ids is not None else eos_ids(tokenizer)))
        self.rows = [_Row(pieces, [encode(text) for text in row if text.strip()], abstention_ids, whole_words) for row in passages]
        lengths = [prompt_length] * len(self.rows) if isinstance(prompt_length, int) else list(prompt_length)
        if len(lengths) != len(self.rows):
            raise ValueError(f"{len(lengths)} prompt lengths for {len(self.rows)} rows of passages")
        self.prompt_lengths = [int(n) for n in lengths]
        self._last: dict[int, tuple[list[int], set[tuple[int, int]]]] = {}  # row -> (g, its pointers)

    def __call__(self, batch_id: int, input_ids) -> list[int]:
        generated = input_ids[self.prompt_lengths[batch_id] :]
        return self.allowed(batch_id, generated.tolist() if hasattr(generated, "tolist") else list(generated))

    def allowed(self, batch_id: int, generated: Sequence[int]) -> list[int]:
        """The tokens allowed after `generated` (the row's answer tokens so far)."""
        g = list(generated)
        if not g:
            row = self.rows[batch_id]
            return sorted(set(row.starts) | set(row.abstention[:1])) or list(self.eos)
        if any(t in self.eos for t in g):  # finished: generate pads the row, anything goes
            return list(self.eos)
        row = self.rows[batch_id]
        pointers = self._pointers(batch_id, g)
        allowed = {row.passages[p][j] for p, j in pointers if j < len(row.passages[p])}
        if len(g) < len(row.abstention) and g == row.abstention[: len(g)]:
            allowed.add(row.abstention[len(g)])
        if g == row.abstention or any(pointer in row.ends for pointer in pointers):
            allowed.update(self.eos)
        return sorted(allowed) or list(self.eos)

    def _pointers(self, batch_id: int, g: list[int]) -> set[tuple[int, int]]:
        """The (passage, next position) pairs whose span so far equals g, advanced from the last call when it can."""
        row = self.rows[batch_id]
        last = self._last.get(batch_id)
        if last is not None and len(last[0]) == len(g) - 1 and last[0] == g[:-1]:
            pointers = row.advance(last[1], g[-1])
        elif last is not None and last[0] == g:
            pointers = last[1]
        else:
            pointers = row.first(g[0])
            for token in g[1:]:
                pointers = row.advance(pointers, token)
        self._last[batch_id] = (g, pointers)
        return pointers


def _squash(text: str) -> str:
    return " ".join(text.split())


def is_copied(answer: str, passages: Sequence[str], abstention: str = ABSTENTION) -> bool:
    """Whether `answer` is, up to whitespace, a non-empty span of one of `passages` or the abstention phrase."""
    answer = _squash(answer)
    if not answer:
        return False
    return answer == _squash(abstention) or any(answer in _squash(p) for p in passages)
