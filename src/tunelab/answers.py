"""The one answer scorer: used by `rag eval --answer`, `prompts eval`, `strategies` and the readers.

SQuAD-style exact match and token F1, contains-answer ("right"), abstention, hallucination.

Definitions (per question; an item's gold answers are its answer plus its aliases):
  exact_match      normalised prediction equals a normalised gold answer
  contains         a normalised gold answer appears, on word boundaries, in the normalised prediction
                   (small models wrap answers in sentences; "The capital is Paris." is right)
  f1               best token-overlap F1 against any gold answer (SQuAD)
  abstained        the prediction declines to answer ("I don't know", "I'm not sure", ...)
  hallucinated     answered (not abstained) and not `contains` — a confident wrong answer
Citation marks ("[1]", "[1, 2]") are not part of an answer: `score` removes them first.
Rates: hallucination among answered = hallucinated / answered; among all = hallucinated / all.
"""

from __future__ import annotations

import itertools
import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

# What every tunelab reader says when it will not answer; is_abstention recognises it and its variants.
ABSTENTION = "I don't know"

_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ABSTAIN = re.compile(
    r"\b(i (?:do not|don'?t|dont) know|i'?m not sure|i am not sure|not sure|i cannot answer|i can'?t answer|unable to answer"
    r"|(?:i )?(?:do not|don'?t) have (?:enough |any )?information|no information|not enough information"
    r"|(?:context|sources?|text) (?:does not|doesn'?t) (?:contain|mention|say|provide)|cannot be determined|not (?:contained|mentioned|provided|given) in)\b"
)


# "[1]", "[2, 3]": the passage numbers a grounded answer cites (short numbers: "[1990]" is no citation).
_CITATION = re.compile(r"\[\d{1,3}(?:\s*,\s*\d{1,3})*\]")


def strip_citations(text: str) -> str:
    """The text without its citation marks: "Paris [1]." -> "Paris."; "[1, 2]" -> ""."""
    text = _CITATION.sub(" ", text)
    text = re.sub(r"[ \t]+([.,;:!?])", r"\1", text)
    return re.sub(r"[ \t]{2,}", " ", text).strip()


def normalize(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles (a/an/the), single spaces."""
    text = text.lower().replace("’", "'").translate(_NO_PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def golds(answer: str, aliases: Sequence[str] = ()) -> list[str]:
    return [g for g in dict.fromkeys(normalize(a) for a in [answer, *aliases]) if g]


def answer_in_text(text: str, answer: str, aliases: Sequence[str] = ()) -> bool:
    """A gold answer appears in `text` (e.g. the passages shown to a reader) on word boundaries."""
    haystack = f" {normalize(text)} "
    return any(f" {gold} " in haystack for gold in golds(answer, aliases))


def exact_match(prediction: str, answer: str, aliases: Sequence[str] = ()) -> bool:
    pred = normalize(prediction)
    return any(pred == g for g in golds(answer, aliases))


def contains_answer(prediction: str, answer: str, aliases: Sequence[str] = (), question: str = "") -> bool:
    """A gold answer in the prediction. When the gold is also in the question ("What is the capital
    of Djibouti?"), echoing the question is not answering it: the gold must occur more often in the
    prediction than in the question (or the prediction must be exactly the gold)."""
    pred = f" {normalize(prediction)} "
    asked = f" {normalize(question)} "
    for gold in golds(answer, aliases):
        needle = f" {gold} "
        if pred.strip() == gold or _count(pred, needle) > _count(asked, needle):
            return True
    return False


def _count(text: str, needle: str) -> int:
    count, start = 0, text.find(needle)
    while start >= 0:
        count += 1
        start = text.find(needle, start + len(needle) - 1)  # the shared space may start the next match
    return count


def token_f1(prediction: str, answer: str, aliases: Sequence[str] = ()) -> float:
    pred = normalize(prediction).split()
    best = 0.0
    for gold in golds(answer, aliases):
        gold_tokens = gold.split()
        common = sum((Counter(pred) & Counter(gold_tokens)).values())
        if common == 0:
            continue
        precision, recall = common / len(pred), common / len(gold_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def is_abstention(prediction: str) -> bool:
    """True when the text declines to answer; an empty answer counts as declining too."""
    text = prediction.lower().replace("’", "'").strip()
    return not text or bool(_ABSTAIN.search(text))


def score(prediction: str, answer: str, aliases: Sequence[str] = (), question: str = "") -> dict:
    """One question's scores (floats 0/1, f1 in [0, 1]); citation marks are removed first."""
    prediction = strip_citations(prediction)
    abstained = is_abstention(prediction)
    contains = (not abstained) and contains_answer(prediction, answer, aliases, question)
    return {
        "exact_match": float((not abstained) and exact_match(prediction, answer, aliases)),
        "contains": float(contains),
        "f1": 0.0 if abstained else token_f1(prediction, answer, aliases),
        "abstained": float(abstained),
        "hallucinated": float((not abstained) and not contains),
    }


def verdict(scores: dict) -> str:
    """ "right" (a gold answer contained), "abstained" or "hallucinated", from `score`'s fields."""
    if scores["contains"]:
        return "right"
    return "abstained" if scores["abstained"] else "hallucinated"


def bootstrap_ci(values: Sequence[float], resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean."""
    data = np.asarray(values, dtype=float)
    if len(data) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return (float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail)))


def summarise(scores: Sequence[dict], ci: bool = True, seed: int = 0) -> dict:
    """Means of the per-question scores, hallucination rates, and bootstrap 95% CIs of the accuracies."""
    n = len(scores)
    if n == 0:
        return {"n": 0}
    column = {k: [s[k] for s in scores] for k in ("exact_match", "contains", "f1", "abstained", "hallucinated")}
    answered = n - sum(column["abstained"])
    hallucinated = sum(column["hallucinated"])
    out: dict = {
        "n": n,
        "exact_match": float(np.mean(column["exact_match"])),
        "contains": float(np.mean(column["contains"])),
        "f1": float(np.mean(column["f1"])),
        "abstention_rate": float(np.mean(column["abstained"])),
        "hallucination_rate_answered": hallucinated / answered if answered else 0.0,
        "hallucination_rate_all": hallucinated / n,
        # +1 right, -1 wrong, 0 abstained: rewards declining over guessing wrong
        "penalised_score": (sum(column["contains"]) - hallucinated) / n,
    }
    if ci:
        for key in ("exact_match", "contains", "f1"):
            out[f"{key}_ci95"] = list(bootstrap_ci(column[key], seed=seed))
        out["hallucination_rate_all_ci95"] = list(bootstrap_ci(column["hallucinated"], seed=seed))
    return out


def choose_thresholds(
    features: Sequence[Sequence[float]],
    outcomes: Sequence[float],
    margin: float = 1.0,
    max_hallucinated: float | None = None,
    abstain_on: Sequence[Sequence[float]] | None = None,
    min_abstention: float = 0.0,
) -> tuple[list[float], float]:
    """Thresholds, one per feature, that maximise right - hallucinated when a question is answered
    only if every feature reaches its threshold; and that best value per question. With
    `max_hallucinated` (a share of the questions), they maximise right among the thresholds that
    hallucinate on at most that share instead (ties: fewer hallucinated), and the value is right per
    question: a hallucination budget, for a reader whose answers are wrong about as often as right.

    `features[j][i]` is feature j of question i (e.g. retrieval similarity, answer confidence; -inf:
    never answered); `outcomes[i]` is +1 right, -1 hallucinated, 0 abstained anyway, for the answers
    given with no threshold. Candidates per feature lie halfway between its distinct values, plus
    `margin` below the lowest (answer all); ties go to the lowest thresholds (answer more). Choose on
    train or eval questions; a threshold read off the test questions would flatter the test score.

    `abstain_on` (same features, other questions: ones that should get no answer, e.g. questions shown
    no passage that holds their answer) restricts the choice to thresholds that abstain on at least
    `min_abstention` of them; they count in no other way, and their values join the candidates.
    """
    values = np.asarray(features, dtype=float).reshape(len(features), -1)
    gain = np.asarray(outcomes, dtype=float)
    if values.shape[1] != len(gain):
        raise ValueError("one outcome per question")
    if len(gain) == 0:
        return [0.0] * len(values), 0.0
    unanswerable = np.asarray(abstain_on if abstain_on is not None else [[]] * len(values), dtype=float).reshape(len(values), -1)
    needed = min_abstention * unanswerable.shape[1] - 1e-9
    grids = []
    for row, other in zip(values, unanswerable):
        both = np.concatenate([row, other])
        distinct = np.unique(both[np.isfinite(both)])
        if len(distinct) == 0:
            grids.append(np.array([0.0]))
            continue
        grids.append(np.concatenate([[distinct[0] - margin], (distinct[:-1] + distinct[1:]) / 2, [distinct[-1] + margin]]))
    budget = None if max_hallucinated is None else max_hallucinated * len(gain) + 1e-9
    right, wrong = (gain > 0).astype(float), (gain < 0).astype(float)
    # Every candidate point's score in one array; its first maximum in C order is the lexicographically
    # lowest point (answer more on ties). The longest grid is swept at once per point of the others.
    swept = int(np.argmax([len(g) for g in grids]))
    others = [j for j in range(len(grids)) if j != swept]
    scores = np.full([len(g) for g in grids], -np.inf)
    for point in itertools.product(*(range(len(grids[j])) for j in others)):
        limits = np.asarray([grids[j][i] for j, i in zip(others, point)], dtype=float)[:, None]
        passing = np.all(values[others] >= limits, axis=0)
        grid = grids[swept]
        if budget is None:
            score_of = _at_or_above(values[swept][passing], gain[passing], grid)
            feasible = np.ones(len(grid), dtype=bool)
        else:
            hallucinated = _at_or_above(values[swept][passing], wrong[passing], grid)
            score_of = _at_or_above(values[swept][passing], right[passing], grid) * (len(gain) + 1) - hallucinated  # right first, then fewer hallucinated
            feasible = hallucinated <= budget
        if needed > 0:
            answerable = np.all(unanswerable[others] >= limits, axis=0)
            answered_unanswerable = _at_or_above(unanswerable[swept][answerable], np.ones(int(answerable.sum())), grid)
            feasible &= unanswerable.shape[1] - answered_unanswerable >= needed
        index = list(point)
        index.insert(swept, slice(None))
        scores[tuple(index)] = np.where(feasible, score_of, -np.inf)
    first_best = np.unravel_index(int(np.argmax(scores)), scores.shape)
    if not np.isfinite(scores[first_best]):
        return [float(g[0]) for g in grids], float("-inf")
    best = [float(g[i]) for g, i in zip(grids, first_best)]
    if budget is None:
        return best, float(scores[first_best] / len(gain))
    answered = np.all(values >= np.asarray(best)[:, None], axis=0)
    return best, float(right[answered].sum() / len(gain))


def _at_or_above(keys: np.ndarray, weights: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """For each value g of the grid, the sum of the weights whose key is >= g."""
    order = np.argsort(keys, kind="stable")
    suffix = np.concatenate([np.cumsum(weights[order][::-1])[::-1], [0.0]])
    return suffix[np.searchsorted(keys[order], grid, side="left")]
