"""How well an index finds the document that answers each question, and how fast.

Relevance is by document: a question's gold `doc_id` counts once, at the rank of its first
chunk in the top 10. So recall@k is the share of questions whose document appears in the
first k chunks, MRR averages 1/rank, and nDCG@10 with a single relevant document is
1/log2(rank + 1).

Generated answers (`evaluate_answers`) are scored by tunelab.answers, the scorer that
`prompts eval` and `strategies` use too, so a verdict means the same everywhere.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence

import numpy as np

from tunelab.answers import answer_in_text, score, summarise, verdict
from tunelab.progress import track
from tunelab.rag.index import MODES, Index

DEPTH = 10
BATCH = 16  # questions read together: readers run several times faster per question in batches


def first_relevant_rank(doc_ids: Sequence[str], gold: str) -> int | None:
    """1-based rank of the first retrieved chunk from the gold document, None if absent."""
    for rank, doc_id in enumerate(doc_ids, start=1):
        if doc_id == gold:
            return rank
    return None


def ranking_metrics(ranks: Sequence[int | None], depth: int = DEPTH) -> dict[str, float]:
    n = len(ranks)
    if n == 0:
        return {}

    def share(k: int) -> float:
        return sum(1 for r in ranks if r is not None and r <= k) / n

    return {
        "recall@1": share(1),
        "recall@5": share(5),
        "recall@10": share(10),
        "mrr": sum(1.0 / r for r in ranks if r is not None and r <= depth) / n,
        "ndcg@10": sum(1.0 / math.log2(r + 1) for r in ranks if r is not None and r <= depth) / n,
    }


def evaluate_retrieval(
    index: Index, rows: Sequence[dict], modes: Sequence[str] = MODES, depth: int = DEPTH, progress: bool = False, **search
) -> dict[str, dict]:
    """Per mode: recall@1/5/10, MRR, nDCG@10 against doc_id, latency and CPU time p50/p95 in ms."""
    results = {}
    index.embed_query("warm up")  # the first call pays for lazy model loading
    for mode in modes:
        ranks, latencies, cpu = [], [], []
        for row in track(rows, f"eval {mode}", progress):
            started, cpu_started = time.perf_counter(), time.process_time()
            hits = index.search(row["question"], mode, depth, **search)
            latencies.append((time.perf_counter() - started) * 1000)
            cpu.append((time.process_time() - cpu_started) * 1000)
            ranks.append(first_relevant_rank([h.chunk.doc_id for h in hits], row["doc_id"]))
        metrics = ranking_metrics(ranks, depth)
        metrics["latency_ms_p50"] = float(np.percentile(latencies, 50))
        metrics["latency_ms_p95"] = float(np.percentile(latencies, 95))
        # CPU time of the process per search: what the latency would be on idle cores, which the
        # wall clock does not show when other jobs share the machine.
        metrics["cpu_ms_p50"] = float(np.percentile(cpu, 50))
        metrics["cpu_ms_p95"] = float(np.percentile(cpu, 95))
        metrics["questions"] = len(rows)
        results[mode] = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
    return results


def evaluate_answers(index: Index, rows: Sequence[dict], reader, *, settings=None, progress: bool = False, seed: int = 0, **kwargs) -> dict:
    """Answers of a RAG reader scored by tunelab.answers (the one scorer), over `rows`
    ({question, answer, aliases, doc_id}); `settings` is the context (rag.reader_data.ContextSettings),
    `kwargs` go to rag.answer.answer_many (e.g. min_similarity).

    right = a gold answer contained in the answer as whole words; hallucinated = answered and not
    right; answer_in_context = a gold answer appears in the passages shown. `predictions` holds one
    dict per question (answer, sources, verdict and the score fields)."""
    from tunelab.rag.answer import answer_many
    from tunelab.rag.reader_data import ContextSettings

    settings = settings or ContextSettings()
    predictions = []
    for start in track(range(0, len(rows), BATCH), "answering", progress):
        batch = rows[start : start + BATCH]
        results = answer_many([r["question"] for r in batch], index, reader, settings=settings, **kwargs)
        for row, result in zip(batch, results):
            predictions.append(prediction_record(row, result))
    summary = summarise(predictions, seed=seed)
    n = len(predictions)

    def rate(key: str) -> float:
        return round(float(summary.get(key, 0.0)), 4)

    def interval(key: str) -> list[float] | None:
        return [round(v, 4) for v in summary[key]] if key in summary else None

    return {
        "context": settings.to_dict(),
        "questions": n,
        "right": rate("contains"),
        "right_ci95": interval("contains_ci95"),
        "exact_match": rate("exact_match"),
        "token_f1": rate("f1"),
        "abstained": rate("abstention_rate"),
        "hallucinated": rate("hallucination_rate_all"),
        "hallucinated_ci95": interval("hallucination_rate_all_ci95"),
        "answer_in_context": round(sum(p["answer_in_context"] for p in predictions) / n, 4) if n else 0.0,
        "retrieval_misses": retrieval_misses(predictions),
        "abstained_because": dict(Counter(p["abstain_reason"] for p in predictions if p["verdict"] == "abstained")),
        "predictions": predictions,
    }


def retrieval_misses(predictions: list[dict]) -> dict:
    """The questions whose shown context held no answer (`answer_in_context` false), and the share of them abstained on
    (answering one is a guess): `rag eval --answer`'s and `strategies`' figure alike."""
    missed = [p for p in predictions if not p["answer_in_context"]]
    return {"questions": len(missed), "abstained": round(sum(bool(p["abstained"]) for p in missed) / len(missed), 4) if missed else None}


def prediction_record(row: dict, result) -> dict:
    """One question's answer, its sources and its verdict, as `rag eval --predictions` writes it."""
    gold, aliases = row.get("answer", ""), list(row.get("aliases") or [])
    scores = score(result.text, gold, aliases, row["question"])
    shown = "\n".join(p.reader_text() for p in result.shown) if result.shown else "\n".join(h.chunk.text for h in result.hits)
    return {
        "question": row["question"],
        "answer": gold,
        "aliases": aliases,
        "doc_id": row.get("doc_id"),
        "kind": row.get("kind"),
        "prediction": result.text,
        "verdict": verdict(scores),
        "abstain_reason": result.reason,
        "confidence": result.to_dict()["confidence"],
        "quote": result.passage.text if result.passage is not None else None,
        "sources": [{"rank": h.rank, "doc_id": h.chunk.doc_id, "chunk_id": h.chunk.chunk_id} for h in result.sources],
        "answer_in_context": answer_in_text(shown, gold, aliases),
        "best_similarity": round(result.best_similarity, 4),
        **scores,
    }
