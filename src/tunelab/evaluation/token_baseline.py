"""The token-classification baseline: a gazetteer of the train split's entity strings.

Every entity of the train split (its words, in order) is an entry, with the type it has most often
there. In a sentence, the longest entry starting at a word is tagged (B- on its first word, I- on the
rest) and matching goes on after it; words that start no entry are O. No learning, no context: what
a model must beat to show it reads more than names it has seen.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import pandas as pd

from tunelab.evaluation.token_metrics import entity_scores
from tunelab.runtime.tagger import entity_words

NAME = "gazetteer"


def build_gazetteer(train: pd.DataFrame) -> dict[tuple[str, ...], str]:
    """Entity word sequence -> the type it has most often in the train split."""
    seen: defaultdict[tuple[str, ...], Counter[str]] = defaultdict(Counter)
    for words, tags in zip(train["words"], train["tags"]):
        for kind, first, last in entity_words(tags):
            seen[tuple(words[first : last + 1])][kind] += 1
    return {entry: counts.most_common(1)[0][0] for entry, counts in seen.items()}


def gazetteer_tags(sentences: Sequence[Sequence[str]], gazetteer: dict[tuple[str, ...], str]) -> list[list[str]]:
    """Each sentence's tags from the longest gazetteer match at each word, left to right."""
    longest = max((len(entry) for entry in gazetteer), default=0)
    out = []
    for words in sentences:
        words, tags, i = list(words), ["O"] * len(words), 0
        while i < len(words):
            for size in range(min(longest, len(words) - i), 0, -1):
                kind = gazetteer.get(tuple(words[i : i + size]))
                if kind is not None:
                    tags[i : i + size] = [f"B-{kind}"] + [f"I-{kind}"] * (size - 1)
                    i += size
                    break
            else:
                i += 1
        out.append(tags)
    return out


def score_baseline(train: pd.DataFrame, sentences: Sequence[Sequence[str]], true_tags: Sequence[Sequence[str]], model_scores: dict[str, Any]) -> dict[str, Any]:
    """The gazetteer's entity scores on the rows the model was scored on, and the comparison the report heads with."""
    gazetteer = build_gazetteer(train)
    scores = entity_scores(true_tags, gazetteer_tags(sentences, gazetteer))
    gap = model_scores["f1_micro"] - scores["f1_micro"]
    beats = gap > 0
    headline = (
        f"The model {'beats' if beats else 'does not beat'} the gazetteer baseline: entity micro-F1 "
        f"{model_scores['f1_micro']:.3f} vs {scores['f1_micro']:.3f} ({100 * gap:+.1f} points)"
    )
    advice = (
        []
        if beats
        else ["train more epochs or on more sentences", "check the test split's entity strings: a gazetteer wins when test names were all seen in training"]
    )
    return {
        "name": NAME,
        "description": f"the {len(gazetteer)} entity strings of the train split, longest match first",
        "train_rows": len(train),
        "test_rows": len(true_tags),
        **scores,
        "comparison": {"beats_baseline": beats, "f1_micro_points": 100 * gap, "headline": headline, "advice": advice},
    }
