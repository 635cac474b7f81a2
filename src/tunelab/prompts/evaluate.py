"""`tunelab prompts eval`: score prompt templates on a QA file with one model.

    result = evaluate_templates(["plain", "abstain"], "qa/test.jsonl", model="smollm2")
    result["templates"][0]["summary"]["exact_match"]
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from tunelab.data.factbook_qa import read_qa
from tunelab.errors import TunelabError
from tunelab.prompts.generate import answer_batch
from tunelab.prompts.loader import PromptTemplate, load_template
from tunelab.evaluate.answers import score, summarise


def format_context(hits, max_chars: int = 600) -> str:
    """Retrieved passages as numbered, titled blocks (long chunks cut at a word boundary)."""
    blocks = []
    for hit in hits:
        chunk = hit.chunk
        where = " — ".join(p for p in (chunk.title, chunk.section) if p)
        text = chunk.text if len(chunk.text) <= max_chars else chunk.text[:max_chars].rsplit(" ", 1)[0] + " ..."
        blocks.append(f"[{hit.rank}] {where}\n{text}")
    return "\n\n".join(blocks)


def latency_summary(seconds: Sequence[float]) -> dict:
    if not seconds:
        return {}
    ordered = sorted(seconds)
    return {
        "mean_ms": 1000 * statistics.fmean(ordered),
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p95_ms": 1000 * ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))],
    }


def read_questions(path: str | Path) -> list[dict]:
    """QA JSONL rows with a question and an answer (aliases optional); problems name the line."""
    return read_qa(path, required=("question", "answer"))


def run_template(
    template: PromptTemplate,
    rows: Sequence[dict],
    generator,
    *,
    contexts: Sequence[str] | None = None,
    max_new_tokens: int = 24,
    batch_size: int = 8,
    extra_seconds: Sequence[float] | None = None,
    progress=None,
) -> dict:
    """Answers and scores of one template on `rows` ({question, answer, aliases}); extra_seconds
    (e.g. retrieval time per question) are added to each question's latency."""
    prompts = [template.render(r["question"], contexts[i] if contexts is not None else None) for i, r in enumerate(rows)]
    started = time.perf_counter()
    answers = answer_batch(generator, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, on_batch=progress)
    wall = time.perf_counter() - started
    predictions = []
    for i, (row, answered) in enumerate(zip(rows, answers)):
        seconds = answered.seconds + (extra_seconds[i] if extra_seconds is not None else 0.0)
        predictions.append({
            "question": row["question"],
            "answer": row.get("answer", ""),
            "prediction": answered.text,
            "seconds": seconds,
            "prompt_tokens": answered.prompt_tokens,
            **score(answered.text, row.get("answer", ""), row.get("aliases") or [], row["question"]),
        })
    return {
        "template": template.id,
        "name": template.name,
        "version": template.version,
        "summary": summarise(predictions),
        "latency": latency_summary([p["seconds"] for p in predictions]),
        "wall_seconds": wall,
        "predictions": predictions,
    }


def evaluate_templates(
    templates: Sequence[str],
    qa: str | Path,
    model: str = "smollm2",
    *,
    index: str | Path | None = None,
    limit: int | None = None,
    max_new_tokens: int = 24,
    batch_size: int = 8,
    k: int = 3,
    progress: bool = False,
    generator=None,
) -> dict:
    """Score each template on the QA file's questions; context templates need `index` (retrieval)."""
    if not templates:
        raise TunelabError("no templates to evaluate", "name one or more, e.g. plain abstain few-shot")
    loaded = [load_template(t) for t in templates]
    rows = read_questions(qa)
    if limit is not None:
        if limit < 1:
            raise TunelabError(f"--limit must be at least 1 (got {limit})", "e.g. --limit 50")
        rows = rows[:limit]
    contexts, retrieval_seconds = None, None
    if any(t.needs_context for t in loaded):
        if index is None:
            names = [t.name for t in loaded if t.needs_context]
            raise TunelabError(f"template(s) {', '.join(names)} need retrieved context", "pass --index DIR (built with tunelab rag index)")
        from tunelab.rag.index import open_index

        contexts, retrieval_seconds = [], []
        with open_index(index) as opened:
            for row in rows:
                t = time.perf_counter()
                hits = opened.search(row["question"], "hybrid", k)
                retrieval_seconds.append(time.perf_counter() - t)
                contexts.append(format_context(hits))
    if generator is None:
        from tunelab.lm.generate import Generator

        generator = Generator(model)
    results = []
    bar = progress_bar(progress, len(rows) * len(loaded))
    with bar as shown:
        task = shown.add_task("answering", total=len(rows) * len(loaded)) if shown else None
        advance = (lambda n: shown.advance(task, n)) if shown else None
        for template in loaded:
            results.append(run_template(
                template, rows, generator,
                contexts=contexts if template.needs_context else None,
                extra_seconds=retrieval_seconds if template.needs_context else None,
                max_new_tokens=max_new_tokens, batch_size=batch_size, progress=advance,
            ))
    return {"qa": str(qa), "model": str(model), "questions": len(rows), "max_new_tokens": max_new_tokens, "templates": results}


def progress_bar(enabled: bool, total: int):
    from contextlib import nullcontext

    if not enabled:
        return nullcontext()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
