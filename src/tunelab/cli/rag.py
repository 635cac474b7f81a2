"""`tunelab rag ...` (index, search, ask, eval) and `tunelab data factbook-qa`."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from tunelab.cli._app import app, console, user_errors
from tunelab.cli.core import data_app
from tunelab.rag.answer import MIN_SIMILARITY

rag_app = typer.Typer(no_args_is_help=True, help="Retrieval-augmented generation: index documents, search, answer with citations.")
app.add_typer(rag_app, name="rag")


class Mode(str, Enum):
    bm25 = "bm25"
    dense = "dense"
    hybrid = "hybrid"


class StoreKind(str, Enum):
    lancedb = "lancedb"
    qdrant = "qdrant"


IndexOpt = Annotated[Path, typer.Option("--index", help="the index folder")]
ModeOpt = Annotated[Mode, typer.Option("--mode", help="bm25 (keywords), dense (embeddings) or hybrid (both, RRF-fused)")]
WeightsOpt = Annotated[str, typer.Option("--weights", help="hybrid weights 'BM25,DENSE' for reciprocal rank fusion (k=60)")]
RerankOpt = Annotated[Optional[Path], typer.Option("--rerank", help="a local cross-encoder model folder to re-rank candidates")]


def _weights(text: str) -> tuple[float, float]:
    from tunelab.errors import TunelabError

    try:
        bm25, dense = (float(x) for x in text.split(","))
    except ValueError:
        raise TunelabError(f"--weights '{text}' is not two numbers", "use e.g. --weights 1,1 (bm25,dense)") from None
    if bm25 < 0 or dense < 0 or bm25 + dense == 0:
        raise TunelabError(f"--weights '{text}' must be non-negative and not both zero", "use e.g. --weights 1,1")
    return bm25, dense


@rag_app.command("index")
@user_errors
def index_cmd(
    source: Annotated[str, typer.Argument(help="a folder of .txt/.md/.html/.json files, or the built-in corpus 'factbook'")],
    index: IndexOpt,
    model: Annotated[str, typer.Option(help="embedding model: catalogue name or sentence-transformers folder")] = "minilm",
    store: Annotated[StoreKind, typer.Option(help="lancedb (embedded, default) or qdrant")] = StoreKind.lancedb,
    url: Annotated[Optional[str], typer.Option(help="qdrant: http(s)://host:6333, a local folder, or :memory:")] = None,
    collection: Annotated[str, typer.Option(help="qdrant collection name")] = "chunks",
    chunk_tokens: Annotated[int, typer.Option(help="chunk size in the embedding model's tokens")] = 200,
    overlap: Annotated[int, typer.Option(help="tokens shared by consecutive chunks of a split paragraph")] = 32,
    batch_size: Annotated[int, typer.Option(help="embedding batch size")] = 64,
) -> None:
    """Chunk, embed and store SOURCE; re-running embeds only changed files and drops deleted ones."""
    from tunelab.rag.index import build_index

    report = build_index(
        source, index, model=model, store=store.value, url=url, collection=collection,
        chunk_tokens=chunk_tokens, overlap=overlap, batch_size=batch_size, progress=True,
    )
    if report.rebuilt:
        console.print(f"[yellow]rebuilt from scratch[/] ({report.rebuilt})")
    console.print(
        f"indexed {index}: {report.added} added, {report.changed} changed, {report.removed} removed, "
        f"{report.unchanged} unchanged; {report.chunks_embedded} chunks embedded, {report.chunks_total} in the index "
        f"({report.seconds:.1f} s)",
        soft_wrap=True,
    )


@rag_app.command("search")
@user_errors
def search_cmd(
    query: Annotated[str, typer.Argument(help="what to search for")],
    index: IndexOpt,
    mode: ModeOpt = Mode.hybrid,
    k: Annotated[int, typer.Option("-k", help="how many chunks to return")] = 5,
    weights: WeightsOpt = "1,1",
    rerank: RerankOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list for scripts")] = False,
) -> None:
    """Ranked chunks with scores and sources."""
    from tunelab.rag.index import open_index

    with open_index(index, rerank=str(rerank) if rerank else None) as opened:
        hits = opened.search(query, mode.value, k, weights=_weights(weights))
    if as_json:
        print(json.dumps([h.to_dict() for h in hits], ensure_ascii=False, indent=2))
        return
    if not hits:
        console.print("no matching chunks")
    for hit in hits:
        where = " — ".join(p for p in (hit.chunk.title, hit.chunk.section) if p)
        console.print(f"[bold]{hit.rank}.[/] {hit.score:.4f}  [cyan]{where}[/]  ({hit.chunk.chunk_id})", highlight=False)
        text = hit.chunk.text if len(hit.chunk.text) < 400 else hit.chunk.text[:400] + " ..."
        console.print(f"   {text}", highlight=False, markup=False)


def _generator(model: str, max_new_tokens: int):
    """rag.answer's `prompt -> text` generator: tunelab's one causal LM (catalogue name, model
    folder, merged or LoRA run), greedy, at most `max_new_tokens` tokens."""
    from functools import partial

    from tunelab.lm.generate import Generator

    return partial(Generator(model), max_new_tokens=max_new_tokens)


@rag_app.command("ask")
@user_errors
def ask_cmd(
    question: Annotated[str, typer.Argument(help="the question")],
    index: IndexOpt,
    model: Annotated[str, typer.Option(help="causal LM: catalogue name (smollm2), model folder or run directory")] = "smollm2",
    mode: ModeOpt = Mode.hybrid,
    k: Annotated[int, typer.Option("-k", help="passages given to the model")] = 4,
    min_similarity: Annotated[float, typer.Option(help="below this query-chunk cosine, answer 'I don't know'")] = MIN_SIMILARITY,
    max_new_tokens: Annotated[int, typer.Option(help="longest answer in tokens")] = 96,
    as_json: Annotated[bool, typer.Option("--json", help="print the answer and its sources as JSON")] = False,
) -> None:
    """Answer from the indexed documents, citing them as [1], [2]; say so when they do not cover it."""
    from tunelab.rag.answer import answer
    from tunelab.rag.index import open_index

    with open_index(index) as opened:
        result = answer(question, opened, _generator(model, max_new_tokens), mode=mode.value, k=k, min_similarity=min_similarity)
    if as_json:
        print(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
    else:
        console.print(result.format(), highlight=False, markup=False, soft_wrap=True)


@rag_app.command("eval")
@user_errors
def eval_cmd(
    qa: Annotated[Path, typer.Argument(help="QA JSONL with question, answer, aliases, doc_id")],
    index: IndexOpt,
    modes: Annotated[str, typer.Option(help="comma-separated modes to evaluate")] = "bm25,dense,hybrid",
    weights: WeightsOpt = "1,1",
    limit: Annotated[Optional[int], typer.Option(help="evaluate only the first N questions")] = None,
    with_answers: Annotated[bool, typer.Option("--answer", help="also generate answers: right, exact match, token F1, abstained, hallucinated")] = False,
    model: Annotated[str, typer.Option(help="causal LM for --answer: catalogue name, model folder or run directory (LoRA or merged)")] = "smollm2",
    min_similarity: Annotated[float, typer.Option(help="--answer: below this query-chunk cosine, answer 'I don't know'")] = MIN_SIMILARITY,
    max_new_tokens: Annotated[int, typer.Option(help="--answer: longest answer in tokens")] = 96,
    predictions: Annotated[Optional[Path], typer.Option("--predictions", help="--answer: write every question's answer, sources and verdict to this JSONL file")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the results as JSON")] = False,
) -> None:
    """Recall@1/5/10, MRR, nDCG@10 and latency per mode; with --answer, answer quality too."""
    from tunelab.data.factbook_qa import read_qa
    from tunelab.errors import TunelabError
    from tunelab.rag.evaluate import evaluate_answers, evaluate_retrieval
    from tunelab.rag.index import MODES, open_index

    chosen = [m.strip() for m in modes.split(",") if m.strip()]
    for m in chosen:
        if m not in MODES:
            raise TunelabError(f"unknown mode '{m}'", f"modes are: {', '.join(MODES)}")
    if predictions is not None and not with_answers:
        raise TunelabError("--predictions needs --answer", "add --answer to generate and score the answers")
    rows = read_qa(qa)[:limit] if limit else read_qa(qa)
    with open_index(index) as opened:
        results: dict = {"retrieval": evaluate_retrieval(opened, rows, chosen, progress=not as_json, weights=_weights(weights))}
        if with_answers:
            results["answers"] = evaluate_answers(
                opened, rows, _generator(model, max_new_tokens), progress=not as_json, min_similarity=min_similarity
            )
    if with_answers:
        per_question = results["answers"].pop("predictions")
        if predictions is not None:
            from tunelab.atomic import write_text

            write_text(predictions, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in per_question))
    if as_json:
        print(json.dumps(results, indent=2))
        return
    table = Table("mode", "recall@1", "recall@5", "recall@10", "MRR", "nDCG@10", "p50 ms", "p95 ms")
    for m, r in results["retrieval"].items():
        table.add_row(m, *(f"{r[key]:.3f}" for key in ("recall@1", "recall@5", "recall@10", "mrr", "ndcg@10")),
                      f"{r['latency_ms_p50']:.1f}", f"{r['latency_ms_p95']:.1f}")
    console.print(f"{len(rows)} questions from {qa}")
    console.print(table)
    if with_answers:
        a = results["answers"]
        answers = Table(f"answers ({a['mode']})", "share", "95% CI")
        for label, key in (("right", "right"), ("EM", "exact_match"), ("F1", "token_f1"), ("abstained", "abstained"),
                           ("hallucinated", "hallucinated"), ("answer in context", "answer_in_context")):
            ci = a.get(f"{key}_ci95")
            answers.add_row(label, f"{a[key]:.3f}", f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else "")
        console.print(answers)
        if predictions is not None:
            console.print(f"wrote {len(per_question)} answers with sources and verdicts to {predictions}")


@user_errors
def factbook_qa_cmd(
    out: Annotated[Path, typer.Option("--out", help="folder to write train.jsonl, test.jsonl and summary.json into")],
    test_fraction: Annotated[float, typer.Option(help="share of questions in the test split")] = 0.2,
    seed: Annotated[int, typer.Option(help="seed of the split")] = 0,
) -> None:
    """Build a question/answer set with checkable answers from the CIA World Factbook."""
    from tunelab.data.factbook_qa import write_factbook_qa

    summary = write_factbook_qa(out, test_fraction, seed)
    console.print(
        f"wrote {summary['train']} train and {summary['test']} test questions about {summary['documents']} documents to {out}"
    )
    console.print(", ".join(f"{k} {v}" for k, v in summary["kinds"].items()), highlight=False)


data_app.command("factbook-qa")(factbook_qa_cmd)
