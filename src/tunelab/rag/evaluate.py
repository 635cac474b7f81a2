"""How well an index finds the document that answers each question, and how fast.

Relevance is by document: a question's gold `doc_id` counts once, at the rank of its first
chunk in the top 10. So recall@k is the share of questions whose document appears in the
first k chunks, MRR averages 1/rank, and nDCG@10 with a single relevant document is
1/log2(rank + 1).
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Sequence

import numpy as np

from tunelab.evaluate.answers import normalize as normalize_answer
from tunelab.rag.index import MODES, Index

DEPTH = 10


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


def token_f1(prediction: str, truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = sum((Counter(pred) & Counter(gold)).values())
    if not pred or not gold or common == 0:
        return float(pred == gold)
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def answer_scores(prediction: str, answers: Sequence[str]) -> tuple[float, float]:
    """(exact match, token F1) against the best of the accepted answers.

    Exact match also accepts a prediction that contains an accepted answer as whole words:
    generated answers are sentences ("The capital of France is Paris [1]."). Citation marks
    are not part of the answer and are removed first.
    """
    prediction = re.sub(r"\[\d+(?:\s*,\s*\d+)*\]", " ", prediction)
    norm = normalize_answer(prediction)
    exact = any(
        normalize_answer(a) and (norm == normalize_answer(a) or f" {normalize_answer(a)} " in f" {norm} ") for a in answers
    )
    return float(exact), max((token_f1(prediction, a) for a in answers), default=0.0)


def in_context(answers: Sequence[str], context: str) -> bool:
    norm = f" {normalize_answer(context)} "
    return any(normalize_answer(a) and f" {normalize_answer(a)} " in norm for a in answers)


def evaluate_retrieval(
    index: Index, rows: Sequence[dict], modes: Sequence[str] = MODES, depth: int = DEPTH, progress: bool = False, **search
) -> dict[str, dict]:
    """Per mode: recall@1/5/10, MRR, nDCG@10 against doc_id, latency and CPU time p50/p95 in ms."""
    results = {}
    index.embed_query("warm up")  # the first call pays for lazy model loading
    for mode in modes:
        ranks, latencies, cpu = [], [], []
        for row in _progress(rows, f"eval {mode}", progress):
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


def evaluate_answers(index: Index, rows: Sequence[dict], generator, mode: str = "hybrid", k: int = 4, progress: bool = False, **kwargs) -> dict:
    """Exact match, token F1, answer-in-context and abstention rates of generated answers."""
    from tunelab.rag.answer import answer

    em = f1 = found = abstained = 0.0
    for row in _progress(rows, "answering", progress):
        accepted = [row.get("answer", ""), *row.get("aliases", [])]
        result = answer(row["question"], index, generator, mode=mode, k=k, **kwargs)
        context = "\n".join(h.chunk.text for h in result.hits)
        found += in_context(accepted, context)
        abstained += result.abstained
        if not result.abstained:
            e, f = answer_scores(result.text, accepted)
            em, f1 = em + e, f1 + f
    n = max(len(rows), 1)
    return {
        "mode": mode,
        "questions": len(rows),
        "exact_match": round(em / n, 4),
        "token_f1": round(f1 / n, 4),
        "answer_in_context": round(found / n, 4),
        "abstained": round(abstained / n, 4),
    }


def _progress(rows, label: str, enabled: bool):
    if not enabled:
        return rows
    from rich.progress import track

    return track(rows, description=label, transient=True)
