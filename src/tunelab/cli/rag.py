"""`tunelab rag ...` (index, search, ask, eval, train-reader) and `tunelab data factbook-qa`."""

from __future__ import annotations

import json
import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tunelab.backends import CHOICES_HELP
from tunelab.cli._app import app, console, user_errors
from tunelab.cli.core import data_app
from tunelab.data.factbook_qa import CALIBRATION_FIELD_QUESTIONS, CALIBRATION_FIELDS, READER_FIELD_QUESTIONS
from tunelab.rag.answer import MIN_SIMILARITY
from tunelab.rag.reader_choice import LM_MAX_NEW_TOKENS, ReaderOptions, load_reader
from tunelab.rag.reader_data import SCOPES
from tunelab.rag.train_reader import DEFAULT_DISTRACTORS, DISTRACTORS, MISS_ABSTENTION, MISS_KIND, MISS_KINDS, NAMED_DOCUMENT

rag_app = typer.Typer(no_args_is_help=True, help="Retrieval-augmented generation: index documents, search, answer with citations.")
app.add_typer(rag_app, name="rag")


class Mode(StrEnum):
    bm25 = "bm25"
    dense = "dense"
    hybrid = "hybrid"


class StoreKind(StrEnum):
    lancedb = "lancedb"
    qdrant = "qdrant"


class Decoding(StrEnum):
    grounded = "grounded"
    free = "free"


class ContextKind(StrEnum):
    focused = "focused"
    chunks = "chunks"


Scope = StrEnum("Scope", {name: name for name in SCOPES})
SCOPE_HELP = "documents retrieval ranks: all, or named (only those the question names by title, when it names any)"


Distractors = StrEnum("Distractors", {name.replace("-", "_"): name for name in DISTRACTORS})
MissKind = StrEnum("MissKind", {name: name for name in MISS_KINDS})


IndexOpt = Annotated[Path, typer.Option("--index", help="the index folder")]
OptionalIndexOpt = Annotated[
    Path | None, typer.Option("--index", help="the index folder; default (or 'factbook'): the built-in Factbook index, built once into tunelab's cache")
]
ModeOpt = Annotated[Mode, typer.Option("--mode", help="bm25 (keywords), dense (embeddings) or hybrid (both, RRF-fused)")]
WeightsOpt = Annotated[str, typer.Option("--weights", help="hybrid weights 'BM25,DENSE' for reciprocal rank fusion (k=60)")]
RerankOpt = Annotated[
    Path | None, typer.Option("--rerank", help="re-rank candidates with a local cross-encoder folder or a `tunelab train --task pair-classification` run")
]
RerankBackendOpt = Annotated[
    str | None,
    typer.Option(
        "--rerank-backend",
        help=f"--rerank with a pair-classification run: its backend, {CHOICES_HELP} (default: torch); a cross-encoder folder runs on torch only",
    ),
]
QueryBackendOpt = Annotated[
    str | None,
    typer.Option(
        "--backend",
        help="embedding backend of the built-in index: torch (default), onnx, onnx-int8, openvino, openvino-int8 or auto (each behind its recall gate); "
        "a folder index embeds queries with the backend that built it",
    ),
]


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
    url: Annotated[str | None, typer.Option(help="qdrant: http(s)://host:6333, a local folder, or :memory:")] = None,
    collection: Annotated[str, typer.Option(help="qdrant collection name")] = "chunks",
    chunk_tokens: Annotated[int, typer.Option(help="chunk size in the embedding model's tokens")] = 200,
    overlap: Annotated[int, typer.Option(help="tokens shared by consecutive chunks of a split paragraph")] = 32,
    batch_size: Annotated[int, typer.Option(help="embedding batch size")] = 64,
    backend: Annotated[
        str,
        typer.Option(
            help="torch, onnx, onnx-int8 (ONNX Runtime), openvino, openvino-int8 (OpenVINO, the optional extra): each exported once per model and "
            "used only if Factbook train recall@5 stays within 0.005 of fp32 PyTorch's; or auto: the fastest that passes; recorded in the index, "
            "and its queries use the same"
        ),
    ] = "torch",
) -> None:
    """Chunk, embed and store SOURCE; re-running embeds only changed files and drops deleted ones."""
    from tunelab.rag.index import build_index

    report = build_index(
        source,
        index,
        model=model,
        store=store.value,
        url=url,
        collection=collection,
        chunk_tokens=chunk_tokens,
        overlap=overlap,
        batch_size=batch_size,
        backend=backend,
        progress=True,
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
    index: OptionalIndexOpt = None,
    mode: ModeOpt = Mode.hybrid,
    k: Annotated[int, typer.Option("-k", help="how many chunks to return")] = 5,
    weights: WeightsOpt = "1,1",
    rerank: RerankOpt = None,
    rerank_backend: RerankBackendOpt = None,
    backend: QueryBackendOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list for scripts")] = False,
) -> None:
    """Ranked chunks with scores and sources."""
    from tunelab.errors import TunelabError
    from tunelab.rag.builtin import resolve_index
    from tunelab.rag.index import open_index
    from tunelab.runtime.choice import check_backend_name

    if rerank_backend is not None:
        if rerank is None:
            raise TunelabError("--rerank-backend needs --rerank", "add --rerank RUN (a pair-classification run) or leave out --rerank-backend")
        check_backend_name(rerank_backend)  # before the index is built or opened
    index_dir = resolve_index(index, progress=not as_json, backend=backend)
    with open_index(index_dir, rerank=str(rerank) if rerank else None, backend=backend, rerank_backend=rerank_backend or "torch") as opened:
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


# -- readers: options the CLI parses into rag.reader_choice.ReaderOptions -----------------

ReaderOpt = Annotated[
    str | None,
    typer.Option(
        "--reader",
        help="builtin (the built-in extractive reader, trained once), a run directory of `tunelab rag train-reader` or "
        "`tunelab train --task extractive-qa`, or lm (a causal LM, --model) (default: builtin)",
    ),
]
LMModelOpt = Annotated[
    str | None, typer.Option("--model", help="--reader lm: causal LM, a catalogue name, model folder, merged or LoRA run (default: smollm2)")
]
DecodingOpt = Annotated[
    Decoding | None,
    typer.Option("--decoding", help="--reader lm: grounded (the answer is copied from the passages, or 'I don't know') or free (default: grounded)"),
]
ReaderModeOpt = Annotated[Mode | None, typer.Option("--mode", help="retrieval: bm25, dense or hybrid (default: the reader's, else hybrid)")]
KOpt = Annotated[int | None, typer.Option("-k", help="chunks retrieved (default: the reader's rag_reader.json, else 6)")]
ContextOpt = Annotated[
    ContextKind | None,
    typer.Option("--context", help="focused (the retrieved lines closest to the question) or chunks (whole chunks) (default: the reader's, else focused)"),
]
LinesOpt = Annotated[int | None, typer.Option("--lines", help="--context focused: lines shown (default: the reader's, else 5)")]
ScopeOpt = Annotated[Scope | None, typer.Option("--scope", help=f"{SCOPE_HELP} (default: the reader's, else all)")]
MinSimilarityOpt = Annotated[
    float | None,
    typer.Option(
        "--min-similarity",
        help=f"below this query-chunk cosine, answer 'I don't know' (default: the reader's threshold chosen on train, else {MIN_SIMILARITY})",
    ),
]
MaxNewTokensOpt = Annotated[int | None, typer.Option("--max-new-tokens", help=f"--reader lm: longest answer in tokens (default: {LM_MAX_NEW_TOKENS})")]


@rag_app.command("ask")
@user_errors
def ask_cmd(
    question: Annotated[str, typer.Argument(help="the question")],
    index: OptionalIndexOpt = None,
    reader: ReaderOpt = None,
    model: LMModelOpt = None,
    decoding: DecodingOpt = None,
    mode: ReaderModeOpt = None,
    k: KOpt = None,
    context: ContextOpt = None,
    lines: LinesOpt = None,
    scope: ScopeOpt = None,
    min_similarity: MinSimilarityOpt = None,
    max_new_tokens: MaxNewTokensOpt = None,
    backend: QueryBackendOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the answer, its source and quote as JSON")] = False,
) -> None:
    """Answer from the indexed documents (default: the built-in Factbook index and reader), quoting the line
    the answer came from; "I don't know" when they do not cover it."""
    from tunelab.rag.answer import answer
    from tunelab.rag.builtin import resolve_index
    from tunelab.rag.index import open_index

    options = ReaderOptions(reader, model, decoding, mode, k, context, lines, min_similarity, max_new_tokens, scope)
    options.kind()  # a wrong option fails before anything is built or loaded
    index_dir = resolve_index(index, progress=not as_json, backend=backend)
    choice = load_reader(options, progress=not as_json)
    with open_index(index_dir, backend=backend) as opened:
        result = answer(question, opened, choice.reader, **choice.answer_options())
    if as_json:
        print(
            json.dumps(
                {**result.to_dict(), "reader": choice.name, "context": choice.settings.to_dict(), "thresholds": choice.thresholds()},
                ensure_ascii=False,
                indent=2,
            )
        )
    else:
        console.print(result.format(), highlight=False, markup=False, soft_wrap=True)


@rag_app.command("eval")
@user_errors
def eval_cmd(
    qa: Annotated[Path, typer.Argument(help="QA JSONL with question, answer, aliases, doc_id")],
    index: OptionalIndexOpt = None,
    modes: Annotated[str, typer.Option(help="comma-separated retrieval modes to evaluate")] = "bm25,dense,hybrid",
    weights: WeightsOpt = "1,1",
    limit: Annotated[int | None, typer.Option(help="evaluate only the first N questions")] = None,
    with_answers: Annotated[bool, typer.Option("--answer", help="also answer: right, exact match, token F1, abstained, hallucinated")] = False,
    reader: ReaderOpt = None,
    model: LMModelOpt = None,
    decoding: DecodingOpt = None,
    mode: ReaderModeOpt = None,
    k: KOpt = None,
    context: ContextOpt = None,
    lines: LinesOpt = None,
    scope: ScopeOpt = None,
    min_similarity: MinSimilarityOpt = None,
    max_new_tokens: MaxNewTokensOpt = None,
    predictions: Annotated[
        Path | None, typer.Option("--predictions", help="--answer: write every question's answer, sources and verdict to this JSONL file")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the results as JSON")] = False,
) -> None:
    """Recall@1/5/10, MRR, nDCG@10 and latency per mode; with --answer, answer quality too."""
    from tunelab.data.factbook_qa import read_qa
    from tunelab.errors import TunelabError
    from tunelab.rag.builtin import resolve_index
    from tunelab.rag.evaluate import evaluate_answers, evaluate_retrieval
    from tunelab.rag.index import MODES, open_index

    chosen = [m.strip() for m in modes.split(",") if m.strip()]
    for m in chosen:
        if m not in MODES:
            raise TunelabError(f"unknown mode '{m}'", f"modes are: {', '.join(MODES)}")
    options = ReaderOptions(reader, model, decoding, mode, k, context, lines, min_similarity, max_new_tokens, scope)
    if not with_answers:
        given = options.given() + (["--predictions"] if predictions is not None else [])
        if given:
            raise TunelabError(f"{given[0]} needs --answer", "add --answer to answer the questions and score the answers")
    else:
        options.kind()
    rows = read_qa(qa)[:limit] if limit else read_qa(qa)
    index_dir = resolve_index(index, progress=not as_json)
    choice = load_reader(options, progress=not as_json) if with_answers else None
    with open_index(index_dir) as opened:
        results: dict = {"retrieval": evaluate_retrieval(opened, rows, chosen, progress=not as_json, weights=_weights(weights))}
        if choice is not None:
            scored = evaluate_answers(opened, rows, choice.reader, progress=not as_json, **choice.answer_options())
            results["answers"] = {"reader": choice.name, "context_from": choice.sources["context"], "thresholds": choice.thresholds(), **scored}
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
        table.add_row(
            m, *(f"{r[key]:.3f}" for key in ("recall@1", "recall@5", "recall@10", "mrr", "ndcg@10")), f"{r['latency_ms_p50']:.1f}", f"{r['latency_ms_p95']:.1f}"
        )
    console.print(f"{len(rows)} questions from {qa}")
    console.print(table)
    if with_answers:
        a = results["answers"]
        c = a["context"]
        shown = f"{c['context']}, {c['lines']} lines" if c["context"] == "focused" else c["context"]
        shown += ", named documents" if c.get("scope") == "named" else ""
        answers = Table(f"answers ({a['reader']}; {c['mode']} k={c['k']}, {shown})", "share", "95% CI")
        for label, key in (
            ("right", "right"),
            ("EM", "exact_match"),
            ("F1", "token_f1"),
            ("abstained", "abstained"),
            ("hallucinated", "hallucinated"),
            ("answer in context", "answer_in_context"),
        ):
            ci = a.get(f"{key}_ci95")
            answers.add_row(label, f"{a[key]:.3f}", f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else "")
        console.print(answers)
        misses, because = a["retrieval_misses"], ", ".join(f"{reason or 'by itself'} {count}" for reason, count in a["abstained_because"].items())
        if misses["questions"]:
            console.print(f"retrieval misses (no answer in the shown context): {misses['questions']}, abstained on {misses['abstained']:.1%}", highlight=False)
        if because:
            console.print(f"abstained because of: {because}", highlight=False)
        t = a["thresholds"]
        confidence = "none" if t["min_confidence"] is None else f"{t['min_confidence']:.3f}"
        console.print(
            f"abstains below similarity {t['min_similarity']:.3f} ({t['min_similarity_from']}) and confidence {confidence} ({t['min_confidence_from']})"
            + (", and when the answer is not from the document the question names" if t["require_named_document"] else ""),
            highlight=False,
            soft_wrap=True,
        )
        if predictions is not None:
            console.print(f"wrote {len(per_question)} answers with sources and verdicts to {predictions}")


@rag_app.command("train-reader")
@user_errors
def train_reader_cmd(
    qa: Annotated[Path, typer.Argument(help="a QA folder (its train.jsonl is read: tunelab data factbook-qa) or a train JSONL file")],
    out: Annotated[Path, typer.Option("--out", help="the reader's run directory")],
    index: OptionalIndexOpt = None,
    mode: Annotated[Mode, typer.Option("--mode", help="retrieval: bm25, dense or hybrid")] = Mode.hybrid,
    k: Annotated[int, typer.Option("-k", help="chunks retrieved per question")] = 6,
    context: Annotated[ContextKind, typer.Option("--context", help="focused (closest lines) or chunks (whole chunks)")] = ContextKind.focused,
    lines: Annotated[int, typer.Option("--lines", help="--context focused: lines shown")] = 5,
    scope: Annotated[Scope, typer.Option("--scope", help=SCOPE_HELP)] = Scope.all,
    model: Annotated[str, typer.Option("--model", help="encoder to fine-tune: catalogue name or Hugging Face folder")] = "minilm",
    epochs: Annotated[float, typer.Option("--epochs")] = 2.0,
    field_questions: Annotated[
        int,
        typer.Option(
            "--field-questions",
            help="also train on this many questions of fields.jsonl beside "
            "train.jsonl (questions about other fields: the reader generalises to new kinds of question), "
            "spread over its fields; 0 for none",
        ),
    ] = READER_FIELD_QUESTIONS,
    calibration_fields: Annotated[
        int,
        typer.Option(
            "--calibration-fields",
            help=f"keep this many fields of fields.jsonl out of training and choose the thresholds also on {CALIBRATION_FIELD_QUESTIONS} "
            "questions about them, so they fit kinds of question the reader never met; 0 for none",
        ),
    ] = CALIBRATION_FIELDS,
    distractors: Annotated[
        Distractors,
        typer.Option(
            "--distractors",
            help="what a quarter of the training questions are shown instead of their passages, to learn to answer nothing: "
            "another question's passages, or their own best chunks of the other documents (what a retrieval miss shows), or half of each, "
            "or their own retrieval without the lines that hold the answer (line-miss)",
        ),
    ] = Distractors(DEFAULT_DISTRACTORS),
    miss_abstention: Annotated[
        float | None,
        typer.Option(
            "--miss-abstention",
            help="choose the thresholds among those that abstain on at least this share of the calibration questions asked as if "
            "retrieval had missed (--miss-kind; e.g. 0.8); 0 for no such constraint",
        ),
    ] = MISS_ABSTENTION,
    miss_kind: Annotated[
        MissKind,
        typer.Option(
            "--miss-kind",
            help="the misses --miss-abstention asks about: line (the right document, without the lines that answer: what most "
            "real misses are) or retrieval (the question's document missed)",
        ),
    ] = MissKind(MISS_KIND),
    named_document: Annotated[
        bool,
        typer.Option(
            "--named-document/--no-named-document",
            help="the thresholds may also require an answer read from a document the question names by title, when it names any "
            "(chosen on the calibration questions like the others)",
        ),
    ] = NAMED_DOCUMENT,
    seed: Annotated[int, typer.Option("--seed", help="seed of the calibration split, the distractors and training")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing run directory")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the run, thresholds and test metrics as JSON")] = False,
) -> None:
    """Train an extractive RAG reader on train questions, retrieved as at answer time; its abstention
    thresholds are chosen on train questions it was not trained on (rag_reader.json)."""
    from tunelab.data.factbook_qa import field_question_roles, read_qa
    from tunelab.errors import TunelabError
    from tunelab.rag.builtin import resolve_index
    from tunelab.rag.index import open_index
    from tunelab.rag.reader_data import ContextSettings
    from tunelab.rag.train_reader import read_reader_settings, train_rag_reader
    from tunelab.run import refuse_existing

    path = qa.expanduser()
    if path.is_dir():
        path = path / "train.jsonl"
    elif path.name == "test.jsonl":
        raise TunelabError(
            f"'{qa}' is a test split; a reader is trained (and its thresholds chosen) on train questions only", "pass the QA folder or its train.jsonl"
        )
    for flag, value in (("-k", k), ("--lines", lines)):
        if value < 1:
            raise TunelabError(f"{flag} must be at least 1, not {value}", f"e.g. {flag} 5")
    for flag, value in (("--field-questions", field_questions), ("--calibration-fields", calibration_fields)):
        if value < 0:
            raise TunelabError(f"{flag} must be 0 or more, not {value}", f"e.g. {flag} 0 for none")
    if miss_abstention is not None and not 0 <= miss_abstention <= 1:
        raise TunelabError(f"--miss-abstention is a share between 0 and 1, not {miss_abstention}", "e.g. --miss-abstention 0.8, or 0 for none")
    refuse_existing(out, overwrite)  # before the index is opened; train_rag_reader checks again for its other callers
    rows = read_qa(path, required=("question", "answer", "doc_id"))
    fields_path = path.parent / "fields.jsonl"
    pool = read_qa(fields_path, required=("question", "answer", "doc_id")) if fields_path.is_file() else []
    fields = field_question_roles(pool, field_questions, calibration_fields, CALIBRATION_FIELD_QUESTIONS, seed)
    extra = fields.training
    settings = ContextSettings(mode=mode.value, k=k, context=context.value, lines=lines, scope=scope.value)
    with open_index(resolve_index(index, progress=not as_json)) as opened:
        run = train_rag_reader(
            rows,
            opened,
            out,
            settings=settings,
            model=model,
            epochs=epochs,
            seed=seed,
            overwrite=overwrite,
            progress=not as_json,
            extra_rows=extra,
            extra_calibration=fields.calibration,
            min_miss_abstention=miss_abstention or None,
            miss_kind=miss_kind.value,
            distractors=distractors.value,
            named_document=named_document,
        )
    _, abstention = read_reader_settings(run)
    test = json.loads((Path(run) / "metrics.json").read_text()).get("test", {})
    metrics = {key: test.get(key) for key in ("questions", "right", "exact_match", "token_f1", "abstained", "hallucinated")}
    finite = lambda x: x if x is None or math.isfinite(x) else None  # noqa: E731
    if as_json:
        print(
            json.dumps(
                {
                    "run": str(run),
                    "context": settings.to_dict(),
                    "field_questions": len(extra),
                    "calibration_field_questions": len(fields.calibration),
                    "calibration_fields": fields.calibration_fields,
                    "abstention": {**abstention.to_dict(), "min_confidence": finite(abstention.min_confidence)},
                    "test": metrics,
                },
                indent=2,
            )
        )
        return
    console.print(f"trained the reader: {run}" + (f" (with {len(extra)} questions of {fields_path})" if extra else ""), highlight=False, soft_wrap=True)
    console.print(
        f"abstains below retrieval similarity {abstention.min_similarity:.3f} and span margin {abstention.min_confidence:.3f}"
        f"{', and when the answer is not from the document the question names' if abstention.require_named_document else ''} "
        f"(chosen on {abstention.chosen_on}, {abstention.questions} questions)",
        highlight=False,
        soft_wrap=True,
    )
    shown = " ".join(
        f"{label} {metrics[key]:.3f}"
        for label, key in (("right", "right"), ("EM", "exact_match"), ("F1", "token_f1"), ("abstained", "abstained"), ("hallucinated", "hallucinated"))
        if metrics.get(key) is not None
    )
    console.print(
        f"the reader's test split ({metrics.get('questions')} of the train questions' examples, held out of its training): {shown}",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"ask with: tunelab rag ask QUESTION --reader {run}" + (f" --index {index}" if index is not None else ""), highlight=False, soft_wrap=True)


@user_errors
def factbook_qa_cmd(
    out: Annotated[Path, typer.Option("--out", help="folder to write train.jsonl, test.jsonl, fields.jsonl and summary.json into")],
    test_fraction: Annotated[float, typer.Option(help="share of questions in the test split")] = 0.2,
    seed: Annotated[int, typer.Option(help="seed of the split")] = 0,
) -> None:
    """Build a question/answer set with checkable answers from the CIA World Factbook."""
    from tunelab.data.factbook_qa import write_factbook_qa

    summary = write_factbook_qa(out, test_fraction, seed)
    console.print(f"wrote {summary['train']} train and {summary['test']} test questions about {summary['documents']} documents to {out}")
    console.print(", ".join(f"{k} {v}" for k, v in summary["kinds"].items()), highlight=False)
    fields = summary["field_questions"]
    console.print(
        f"and fields.jsonl: {fields['questions']} questions about {fields['fields']} other fields, extra training for a reader "
        "(rag train-reader and strategies use them)",
        highlight=False,
        soft_wrap=True,
    )


data_app.command("factbook-qa")(factbook_qa_cmd)
