"""`tunelab prompts eval`: score prompt templates on a QA file with one model.

result = evaluate_templates(["plain", "abstain"], "qa/test.jsonl", model="smollm2")
result["templates"][0]["summary"]["exact_match"]
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from tunelab.answers import score, summarise
from tunelab.data.factbook_qa import read_qa
from tunelab.errors import TunelabError
from tunelab.progress import progress_bar
from tunelab.prompts.generate import answer_batch
from tunelab.prompts.loader import PromptTemplate, load_template

DECODINGS = ("free", "grounded")


def context_passages(hits, max_chars: int = 600) -> list[str]:
    """Each retrieved chunk as the prompt shows it: its title line, then its text (long chunks cut at
    a word boundary). With grounded decoding these are the texts an answer may be copied from."""
    passages = []
    for hit in hits:
        chunk = hit.chunk
        where = " — ".join(p for p in (chunk.title, chunk.section) if p)
        text = chunk.text if len(chunk.text) <= max_chars else chunk.text[:max_chars].rsplit(" ", 1)[0] + " ..."
        passages.append(f"{where}\n{text}")
    return passages


def format_context(hits, max_chars: int = 600) -> str:
    """Retrieved passages as numbered, titled blocks (long chunks cut at a word boundary)."""
    return "\n\n".join(f"[{hit.rank}] {passage}" for hit, passage in zip(hits, context_passages(hits, max_chars)))


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
    passages: Sequence[Sequence[str]] | None = None,
    max_new_tokens: int = 24,
    batch_size: int = 8,
    extra_seconds: Sequence[float] | None = None,
    progress=None,
) -> dict:
    """Answers and scores of one template on `rows` ({question, answer, aliases}); extra_seconds
    (e.g. retrieval time per question) are added to each question's latency. With `passages` (one
    list of texts per row) the answers are decoded grounded: copied from them, or the abstention."""
    prompts = [template.render(r["question"], contexts[i] if contexts is not None else None) for i, r in enumerate(rows)]
    started = time.perf_counter()
    answers = answer_batch(generator, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, on_batch=progress, grounded_passages=passages)
    wall = time.perf_counter() - started
    predictions = []
    for i, (row, answered) in enumerate(zip(rows, answers)):
        seconds = answered.seconds + (extra_seconds[i] if extra_seconds is not None else 0.0)
        predictions.append(
            {
                "question": row["question"],
                "answer": row.get("answer", ""),
                "prediction": answered.text,
                "seconds": seconds,
                "prompt_tokens": answered.prompt_tokens,
                **score(answered.text, row.get("answer", ""), row.get("aliases") or [], row["question"]),
            }
        )
    return {
        "template": template.id,
        "decoding": "grounded" if passages is not None else "free",
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
    decoding: str = "free",
    progress: bool = False,
    generator=None,
) -> dict:
    """Score each template on the QA file's questions; context templates need `index` (retrieval).

    decoding="grounded" constrains every answer to a span copied from the question's retrieved
    passages, or the abstention phrase; it needs `index`, and templates that show the context."""
    if not templates:
        raise TunelabError("no templates to evaluate", "name one or more, e.g. plain abstain few-shot")
    if decoding not in DECODINGS:
        raise TunelabError(f"unknown decoding '{decoding}'", "use --decoding free or --decoding grounded")
    if decoding == "grounded" and index is None:
        raise TunelabError("--decoding grounded needs retrieved passages to copy the answer from", "pass --index DIR, or use --decoding free")
    loaded = [load_template(t) for t in templates]
    if decoding == "grounded":
        closed_book = [t.name for t in loaded if not t.needs_context]
        if closed_book:
            raise TunelabError(
                f"--decoding grounded copies answers from the retrieved context, which template(s) {', '.join(closed_book)} do not show",
                "use templates that need context (e.g. grounded), or --decoding free",
            )
    rows = read_questions(qa)
    if limit is not None:
        if limit < 1:
            raise TunelabError(f"--limit must be at least 1 (got {limit})", "e.g. --limit 50")
        rows = rows[:limit]
    contexts, passages, retrieval_seconds = None, None, None
    if any(t.needs_context for t in loaded):
        if index is None:
            names = [t.name for t in loaded if t.needs_context]
            raise TunelabError(f"template(s) {', '.join(names)} need retrieved context", "pass --index DIR (built with tunelab rag index)")
        from tunelab.rag.index import open_index

        contexts, passages, retrieval_seconds = [], [], []
        with open_index(index) as opened:
            for row in rows:
                t = time.perf_counter()
                hits = opened.search(row["question"], "hybrid", k)
                retrieval_seconds.append(time.perf_counter() - t)
                contexts.append(format_context(hits))
                passages.append(context_passages(hits))
    if generator is None:
        from tunelab.lm.generate import Generator

        generator = Generator(model)
    results = []
    bar = progress_bar(progress)
    with bar as shown:
        task = shown.add_task("answering", total=len(rows) * len(loaded)) if shown else None
        advance = (lambda n: shown.advance(task, n)) if shown else None
        for template in loaded:
            results.append(
                run_template(
                    template,
                    rows,
                    generator,
                    contexts=contexts if template.needs_context else None,
                    passages=passages if decoding == "grounded" else None,
                    extra_seconds=retrieval_seconds if template.needs_context else None,
                    max_new_tokens=max_new_tokens,
                    batch_size=batch_size,
                    progress=advance,
                )
            )
    return {"qa": str(qa), "model": str(model), "questions": len(rows), "max_new_tokens": max_new_tokens, "decoding": decoding, "templates": results}
