"""The bias probe: swap paired terms (he/she, male/female first names, ...) and watch predictions.

A model that learned a stereotype from its data changes its answer when only a gendered word
changes. For each list of pairs we rewrite every evaluation text that contains one of its terms,
score the rewritten text, and report how often the predicted label flips and how far the
probability of the originally predicted label moves.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.errors import TunelabError

Pairs = list[tuple[str, str]]

# When a term sits in two pairs ("her" is both "his" and "him"), the first pair wins the swap back:
# "her" -> "his". Possessive use is the more common, and a probe tolerates the odd ungrammatical swap.
BUILTIN_PAIRS: dict[str, Pairs] = {
    "pronouns": [("he", "she"), ("his", "her"), ("him", "her"), ("himself", "herself"), ("hers", "his")],
    "gendered nouns": [
        ("man", "woman"),
        ("men", "women"),
        ("boy", "girl"),
        ("boys", "girls"),
        ("father", "mother"),
        ("son", "daughter"),
        ("brother", "sister"),
        ("husband", "wife"),
        ("king", "queen"),
        ("mr", "mrs"),
        ("gentleman", "lady"),
        ("uncle", "aunt"),
        ("dad", "mom"),
        ("boyfriend", "girlfriend"),
    ],
    "first names": [
        ("james", "mary"),
        ("john", "patricia"),
        ("robert", "jennifer"),
        ("michael", "linda"),
        ("william", "elizabeth"),
        ("david", "barbara"),
        ("richard", "susan"),
        ("joseph", "jessica"),
        ("thomas", "sarah"),
        ("charles", "karen"),
        ("daniel", "nancy"),
        ("matthew", "lisa"),
        ("anthony", "betty"),
        ("mark", "margaret"),
        ("paul", "sandra"),
        ("steven", "ashley"),
        ("andrew", "emily"),
        ("kevin", "donna"),
        ("brian", "michelle"),
        ("george", "emma"),
    ],
}


class Swapper:
    """Replaces each term of a pair list by its partner, both ways, keeping the case of the original."""

    def __init__(self, pairs: Pairs):
        mapping: dict[str, str] = {}
        for a, b in pairs:
            mapping.setdefault(a.lower(), b.lower())
            mapping.setdefault(b.lower(), a.lower())
        self.mapping = mapping
        # Longest first so a multi-word term wins over a term inside it.
        alternatives = "|".join(re.escape(t) for t in sorted(mapping, key=len, reverse=True))
        self.pattern = re.compile(rf"\b({alternatives})\b", re.IGNORECASE)

    def __call__(self, text: str) -> str:
        return self.pattern.sub(self._replace, text)

    def _replace(self, match: re.Match) -> str:
        found = match.group(0)
        swapped = self.mapping[found.lower()]
        if len(found) > 1 and found.isupper():
            return swapped.upper()
        if found[0].isupper():
            return swapped[0].upper() + swapped[1:]
        return swapped


def bias_probe(
    texts: Sequence[str],
    proba: np.ndarray,
    score: Callable[[list[str]], np.ndarray],
    labels: Sequence[str],
    pair_lists: dict[str, Pairs],
    max_examples: int = 20,
) -> dict[str, Any]:
    """Flip rate and probability shift per pair list.

    texts/proba: the evaluation texts and the model's probabilities for them; score: texts ->
    probabilities (the same model). Only texts that contain a term of a list are rewritten and counted.
    """
    proba = np.asarray(proba, dtype=float)
    predicted = proba.argmax(axis=1)
    result: dict[str, Any] = {"lists": {}}
    for name, pairs in pair_lists.items():
        swap = Swapper(pairs)
        swapped_all = [swap(t) for t in texts]
        index = [i for i, (t, s) in enumerate(zip(texts, swapped_all)) if s != t]
        entry: dict[str, Any] = {"pairs": len(pairs), "texts_probed": len(index)}
        result["lists"][name] = entry
        if not index:
            entry.update(flip_rate=None, flipped=0, mean_abs_shift=None, mean_shift=None, max_abs_shift=None, examples=[])
            entry["reason"] = "no evaluation text contains a term from this list"
            continue
        new_proba = np.asarray(score([swapped_all[i] for i in index]), dtype=float)
        old_pred = predicted[index]
        new_pred = new_proba.argmax(axis=1)
        rows = np.arange(len(index))
        # Shift of the probability the model gave its original answer: negative = less sure after the swap.
        shift = new_proba[rows, old_pred] - proba[index, old_pred]
        flipped = new_pred != old_pred
        entry.update(
            flipped=int(flipped.sum()),
            flip_rate=float(flipped.mean()),
            mean_abs_shift=float(np.abs(shift).mean()),
            mean_shift=float(shift.mean()),
            max_abs_shift=float(np.abs(shift).max()),
        )
        order = sorted(np.flatnonzero(flipped), key=lambda r: -abs(shift[r]))[:max_examples]
        entry["examples"] = [
            {
                "text": texts[index[r]],
                "swapped": swapped_all[index[r]],
                "predicted": labels[old_pred[r]],
                "predicted_after_swap": labels[new_pred[r]],
                "confidence": float(proba[index[r], old_pred[r]]),
                "confidence_after_swap": float(new_proba[r, old_pred[r]]),
            }
            for r in order
        ]
    return result


def load_pairs(path: str | os.PathLike) -> dict[str, Pairs]:
    """User pair lists from a file.

    Text format: one pair per line ("he she", "he,she", "he/she" or tab-separated), '#' comments,
    and optional "[list name]" lines that start a new list (without one, the list is named after
    the file). A .yaml/.yml/.json file maps list names to lists of [term, term] pairs.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise TunelabError(f"bias pairs file '{path}' does not exist", "pass a text file with one pair per line, e.g. 'he,she'")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        lists = _from_mapping(path, text)
    else:
        lists = _from_text(path, text)
    lists = {name: pairs for name, pairs in lists.items() if pairs}
    if not lists:
        raise TunelabError(f"bias pairs file '{path}' has no pairs", "write one pair per line, e.g. 'he,she'")
    return lists


def _from_text(path: Path, text: str) -> dict[str, Pairs]:
    lists: dict[str, Pairs] = {}
    name = path.stem
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            name = line[1:-1].strip() or path.stem
            continue
        terms = [t.strip() for t in re.split(r"[,\t/]", line) if t.strip()] if re.search(r"[,\t/]", line) else line.split()
        lists.setdefault(name, []).append(_pair(terms, f"{path}:{number}"))
    return lists


def _from_mapping(path: Path, text: str) -> dict[str, Pairs]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise TunelabError(f"bias pairs file '{path}' is not valid YAML/JSON: {error}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise TunelabError(f"bias pairs file '{path}' must map list names to lists of pairs", "e.g. {titles: [[sir, madam]]}")
    lists: dict[str, Pairs] = {}
    for name, pairs in data.items():
        if not isinstance(pairs, list):
            raise TunelabError(f"bias pairs list '{name}' in '{path}' is not a list of pairs", "e.g. [[he, she], [his, her]]")
        lists[str(name)] = [_pair(p if isinstance(p, list) else [p], f"{path}: list '{name}'") for p in pairs]
    return lists


def _pair(terms: list, where: str) -> tuple[str, str]:
    terms = [str(t).strip() for t in terms]
    if len(terms) != 2 or not all(terms):
        raise TunelabError(f"{where}: expected two terms, got {terms}", "write one pair per line, e.g. 'he,she'")
    if terms[0].lower() == terms[1].lower():
        raise TunelabError(f"{where}: a term cannot be paired with itself ('{terms[0]}')")
    return terms[0], terms[1]
