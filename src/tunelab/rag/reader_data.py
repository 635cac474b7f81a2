"""Training examples for a RAG reader, made from a QA set and an index as the reader will see them.

Every question is retrieved and focused exactly as at answer time, so the reader learns on the
passages it will be shown, misses included:
  - the gold answer is in the passages  -> the target is its first occurrence (a span);
  - it is not (a retrieval miss)          -> the target is "no answer" / "I don't know";
  - a share of questions get the passages of a different document instead (distractors only), with
    the "no answer" target, so the reader learns to say so when the shown text does not hold it.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from tunelab.answers import ABSTENTION
from tunelab.rag.focus import Passage, focus, whole_chunks

CONTEXTS = ("focused", "chunks")
# Share of training questions shown another document's passages (target: no answer). Retrieval
# misses alone are ~7% of train questions at k=6 (benchmarks/strategies), too few to learn abstaining.
DISTRACTOR_SHARE = 0.25


@dataclass(frozen=True)
class ContextSettings:
    """How a question's context is built: retrieval depth, then whole chunks or the closest lines."""

    mode: str = "hybrid"
    k: int = 6
    context: str = "focused"
    lines: int = 5

    def to_dict(self) -> dict:
        return {"mode": self.mode, "k": self.k, "context": self.context, "lines": self.lines}


@dataclass
class Retrieved:
    passages: list[Passage]
    hits: list  # every retrieved chunk (Hit)
    best_similarity: float
    seconds: float


def retrieve_context(index, question: str, settings: ContextSettings) -> Retrieved:
    import time

    started = time.perf_counter()
    retrieval = index.retrieve(question, settings.mode, settings.k, need_similarity=True)
    best = 0.0 if math.isnan(retrieval.best_similarity) else retrieval.best_similarity  # NaN: the index is empty
    if settings.context == "focused":
        passages = focus(question, retrieval.hits, index.embedder, settings.lines, cache=line_cache(index))
    else:
        passages = whole_chunks(retrieval.hits)
    return Retrieved(passages, retrieval.hits, best, time.perf_counter() - started)


def line_cache(index) -> dict:
    """Line vectors of the index's chunks, kept on the open index (a chunk's lines embed the same every time)."""
    cache = getattr(index, "_line_vectors", None)
    if cache is None or len(cache) > 50_000:  # about 1 GB of float32 vectors at most
        cache = {}
        index._line_vectors = cache
    return cache


def locate(context: str, answer: str, aliases: Sequence[str] = ()) -> tuple[int, str] | None:
    """(start, text) of the first whole-word, case-insensitive occurrence of the answer or, failing
    that, of its longest alias found; None when the context holds none of them."""
    for candidate in [answer, *sorted(aliases, key=len, reverse=True)]:
        candidate = candidate.strip()
        if not candidate:
            continue
        match = re.search(rf"(?<!\w){re.escape(candidate)}(?!\w)", context, flags=re.IGNORECASE)
        if match:
            return match.start(), match.group(0)
    return None


def join_passages(passages: Sequence[Passage]) -> str:
    """The extractive reader's context when the passages are read as one text (training examples)."""
    return "\n".join(p.reader_text() for p in passages)


def reader_examples(rows: Sequence[dict], contexts: Sequence[Retrieved], seed: int = 0, distractor_share: float = DISTRACTOR_SHARE) -> list[dict]:
    """One example per question: {question, passages (texts), answer ('' = none in them), answer_start,
    kind, doc_id, distractor}. Distractor passages come from another question about another document."""
    rng = random.Random(seed)
    order = list(range(len(rows)))
    examples = []
    for row, retrieved in zip(rows, contexts):
        passages = retrieved.passages
        distractor = rng.random() < distractor_share
        if distractor:
            others = [j for j in order if rows[j].get("doc_id") != row.get("doc_id")]
            if others:
                passages = contexts[rng.choice(others)].passages
            else:
                distractor = False
        texts = [p.reader_text() for p in passages]
        context = "\n".join(texts)
        found = locate(context, row["answer"], row.get("aliases") or [])
        examples.append(
            {
                "question": row["question"],
                "passages": texts,
                "context": context,
                "answer": found[1] if found else "",
                "answer_start": found[0] if found else -1,
                "kind": row.get("kind", ""),
                "doc_id": row.get("doc_id", ""),
                "distractor": distractor,
            }
        )
    return examples


def sft_examples(examples: Sequence[dict], template) -> list[dict]:
    """Prompt/response pairs for a generative reader: the answer span, or the abstention phrase."""
    from tunelab.rag.readers import format_passages_text

    return [{"prompt": template.render(e["question"], format_passages_text(e["passages"])), "response": e["answer"] or ABSTENTION} for e in examples]
