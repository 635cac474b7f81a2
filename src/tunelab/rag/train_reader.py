"""Train an extractive RAG reader on a QA set and an index, and choose when it abstains.

    run = train_rag_reader(read_qa("qa/train.jsonl"), index, "runs/reader")

Steps: split the train questions into reader-training and calibration questions -> retrieve and
focus each as at answer time -> training examples (spans, misses, distractors; rag/reader_data.py)
-> `train_extractive_qa` -> on the calibration questions, choose the retrieval-similarity and
span-margin thresholds that maximise right - hallucinated -> rag_reader.json in the run directory.
Only train questions are used: the test split is never seen until it is scored.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tunelab import atomic
from tunelab.answers import answer_in_text, choose_thresholds, score
from tunelab.errors import TunelabError
from tunelab.rag.reader_data import (
    ContextSettings,
    Retrieved,
    distractor_rows,
    join_passages,
    reader_examples,
    retrieve_context,
    simulated_miss_context,
)
from tunelab.run import refuse_existing

SETTINGS_FILE = "rag_reader.json"
CALIBRATION_SHARE = 0.15
MIN_CALIBRATION = 50
# Which simulated misses the thresholds may be asked to abstain on (MISS_ABSTENTION of them): "retrieval", the
# calibration questions asked as if retrieval had missed their documents, or "line", as if it had found them but
# not the lines that answer (rag/reader_data.simulated_miss_context).
MISS_KINDS = ("retrieval", "line")
MISS_KIND = "line"
# The default: thresholds that abstain on at least 60% of the calibration questions asked as line misses, chosen on
# train questions (benchmarks/miss_abstention_dev.py, rule 10: seeds 3 and 4 chose it, seeds 5 and 6 confirmed it on
# the questions of the eleven kinds: more real misses abstained on, no more hallucinated, right - hallucinated within
# 3 points). None: the thresholds answer whatever maximises right - hallucinated.
MISS_ABSTENTION = 0.6
# What a distractor example shows the reader instead of its own passages: another question's passages
# (another document, often another field), or the same question's best chunks of the other documents,
# what a retrieval miss shows (rag/reader_data.retrieve_miss_context), or half of each; or "line-miss", its
# own retrieval with every line that holds the answer left out (rag/reader_data.retrieve_line_miss_context):
# the right document, but no line that answers.
DISTRACTORS = ("other-question", "retrieval-miss", "both", "line-miss")
DEFAULT_DISTRACTORS = "other-question"
# Whether the thresholds may require an answer read from a document the question names (reading_features'
# fourth feature). An option, not the default: on train questions it changed nothing at one seed and cost a
# quarter point of right - hallucinated at another (benchmarks/miss_abstention_dev.py, rule 8).
NAMED_DOCUMENT = False


@dataclass
class Abstention:
    """When a RAG pipeline says "I don't know" instead of answering, and on what it was chosen."""

    min_similarity: float = -1.0  # closest chunk's cosine to the question
    min_confidence: float = float("-inf")  # the reader's own confidence (span margin, mean log-prob)
    # Answer only when the answer is quoted, whole words, from a shown passage: a free-decoding LM that
    # says something the passages do not say is guessing. (A span reader and grounded decoding always quote.)
    require_quote: bool = False
    # Answer only from a document the question names, when it names any: "What is the internet country code
    # of Belgium?" answered from France's lines is a retrieval miss, whatever the reader's confidence.
    require_named_document: bool = False
    chosen_on: str = "not chosen"
    questions: int = 0
    criterion: str = "right - hallucinated"
    value: float | None = None  # the criterion per question at the chosen thresholds
    max_hallucinated: float | None = None  # the hallucination budget (share of questions), when the criterion is one
    min_miss_abstention: float | None = None  # the share of simulated misses it must abstain on, when asked
    miss_kind: str | None = None  # which: MISS_KINDS
    simulated_misses: int = 0
    miss_abstention: float | None = None  # the share of them it abstains on

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class TrainedReader:
    """What train_reader_on made: the run, its reader, and the unthresholded readings its thresholds were chosen
    on — the calibration rows' and, when misses were asked for, read_misses of theirs —, to reuse rather than read again."""

    run: Path
    reader: object  # rag.readers.SpanReader of `run`
    readings: list
    misses: tuple[list[Retrieved], list] | None


def split_train(rows: Sequence[dict], share: float = CALIBRATION_SHARE, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(reader-training rows, calibration rows), a seeded split of train questions."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    size = max(MIN_CALIBRATION, round(share * len(rows)))
    if len(rows) < 2 * size:
        raise TunelabError(
            f"{len(rows)} train questions are too few to train a reader and choose its thresholds",
            f"give at least {2 * MIN_CALIBRATION} questions with answers",
        )
    return rows[size:], rows[:size]


def retrieve_all(index, rows: Sequence[dict], settings: ContextSettings, progress: Callable[[int], None] | None = None) -> list[Retrieved]:
    out = []
    for row in rows:
        out.append(retrieve_context(index, row["question"], settings))
        if progress:
            progress(1)
    return out


def reading_features(contexts: Sequence[Retrieved], readings) -> list[list[float]]:
    """What the thresholds look at, per question: retrieval similarity, the reader's confidence,
    whether the answer quotes a shown passage (1 quoted, 0 not: a threshold below 0 answers either way,
    one between them quotes only), and whether that passage is from a document the question names (1 also
    when it names none or the answer quotes nothing, 0 from another document); -inf where the reader
    abstained by itself."""
    similarities = [c.best_similarity for c in contexts]
    confidences = [r.confidence if not r.abstained else float("-inf") for r in readings]
    quoted = [float(r.passage is not None) if not r.abstained else float("-inf") for r in readings]
    named = [float(from_named_document(c, r)) if not r.abstained else float("-inf") for c, r in zip(contexts, readings)]
    return [similarities, confidences, quoted, named]


def from_named_document(context: Retrieved, reading) -> bool:
    """Whether `reading`'s answer is read from a document its question names (True when it names none, or the
    answer's passage is unknown: the quote feature judges that)."""
    if not context.named_documents or reading.passage is None:
        return True
    return context.passages[reading.passage].hit.chunk.doc_id in context.named_documents


def simulated_misses(
    index, rows: Sequence[dict], settings: ContextSettings, progress: Callable[[int], None] | None = None, kind: str = "retrieval"
) -> list[tuple[dict, Retrieved]]:
    """(row, context) pairs: the rows' contexts as if retrieval had missed their documents
    (rag/reader_data.simulated_miss_context; with `kind` "line", as if it had found them but not the lines
    that answer), for the rows whose context then holds no answer either (e.g. a currency two countries share)."""
    out = []
    for row in rows:
        if kind == "line" or row.get("doc_id"):
            missed = simulated_miss_context(index, row, settings, kind)
            if not answer_in_text(join_passages(missed.passages), row["answer"], row.get("aliases") or []):
                out.append((row, missed))
        if progress:
            progress(1)
    return out


def read_misses(reader, misses: Sequence[tuple[dict, Retrieved]]) -> tuple[list[Retrieved], list]:
    """(contexts, unthresholded readings) of simulated misses: what choose_abstention's `misses` takes."""
    contexts = [context for _, context in misses]
    return contexts, reader.read_many([row["question"] for row, _ in misses], [c.passages for c in contexts], threshold=float("-inf"))


def choose_abstention(
    rows: Sequence[dict],
    contexts: Sequence[Retrieved],
    readings,
    chosen_on: str,
    max_hallucinated: float | None = None,
    misses: tuple[Sequence[Retrieved], Sequence] | None = None,
    min_miss_abstention: float | None = None,
    named_document: bool = NAMED_DOCUMENT,
    miss_kind: str = MISS_KIND,
) -> Abstention:
    """Thresholds on retrieval similarity and reader confidence, whether the answer must quote a shown
    passage and, with `named_document`, whether it must be read from a document the question names, from
    unthresholded readings: the most right - hallucinated, or with `max_hallucinated` the most right within
    that hallucination budget. With `misses` (contexts and readings of questions shown no passage that holds
    their answer: simulated_misses of `miss_kind`, read by read_misses) and `min_miss_abstention`, only
    thresholds that abstain on at least that share of them."""
    outcomes = []
    for row, reading in zip(rows, readings):
        verdict = score(reading.text, row["answer"], row.get("aliases") or [], row["question"])
        outcomes.append(verdict["contains"] - verdict["hallucinated"])
    chosen = 4 if named_document else 3  # how many of reading_features' rows get a threshold; the rest answer all
    miss_features = reading_features(*misses)[:chosen] if misses and min_miss_abstention else None
    limits, value = choose_thresholds(
        reading_features(contexts, readings)[:chosen],
        outcomes,
        max_hallucinated=max_hallucinated,
        abstain_on=miss_features,
        min_abstention=min_miss_abstention or 0.0,
    )
    min_similarity, min_confidence, min_quoted, min_named = [*limits, -1.0][:4]
    if min_quoted > 1 or min_named > 1:  # above every answer: answering nothing scored best, which the similarity threshold says alone
        min_similarity, min_quoted, min_named = float("inf"), 0.0, 0.0
    criterion = "right - hallucinated" if max_hallucinated is None else f"right, hallucinated <= {max_hallucinated:.3f}"
    abstention = Abstention(
        min_similarity,
        min_confidence,
        min_quoted > 0,
        min_named > 0,
        chosen_on,
        len(rows),
        criterion=criterion,
        value=value,
        max_hallucinated=max_hallucinated,
    )
    if miss_features is not None:
        abstention.min_miss_abstention = min_miss_abstention
        abstention.miss_kind = miss_kind
        abstention.simulated_misses = len(miss_features[0])
        abstention.miss_abstention = abstention_share(abstention, miss_features)
        abstention.criterion += f", abstaining on >= {min_miss_abstention:.0%} of simulated {miss_kind} misses"
    return abstention


def below_threshold(abstention: Abstention, features: Sequence[Sequence[float]]) -> list[str | None]:
    """The one abstention rule, which the thresholds are chosen by (answers.choose_thresholds) and which
    strategies and rag.answer apply: per question (its reading_features), the first feature below the
    abstention's limit — "similarity", "confidence", "quote" or "named document" — or None when the question is answered.
    A reading the reader abstained on (-inf) falls below "quote" at the latest; NaN reaches no limit.
    `features` may be the similarity row alone: whether retrieval lets a question be read at all."""
    limits = {
        "similarity": abstention.min_similarity,
        "confidence": abstention.min_confidence,
        "quote": 1.0 if abstention.require_quote else -1.0,  # -1: quoted or not, but read
        "named document": 1.0 if abstention.require_named_document else -1.0,
    }
    return [next((name for (name, limit), value in zip(limits.items(), column) if not value >= limit), None) for column in zip(*features)]


def answered_by(abstention: Abstention, features: Sequence[Sequence[float]]) -> list[bool]:
    """Per question (its reading_features), whether the abstention's thresholds let it be answered."""
    return [failed is None for failed in below_threshold(abstention, features)]


def abstention_share(abstention: Abstention, features: Sequence[Sequence[float]]) -> float:
    """The share of questions (their reading_features) the abstention's thresholds answer nothing on."""
    decided = answered_by(abstention, features)
    return 1 - sum(decided) / len(decided) if decided else 0.0


def train_rag_reader(
    rows: Sequence[dict],
    index,
    out: str | Path,
    *,
    settings: ContextSettings = ContextSettings(),
    model: str = "minilm",
    epochs: float = 2.0,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    extra_rows: Sequence[dict] = (),
    extra_calibration: Sequence[dict] = (),
    min_miss_abstention: float | None = MISS_ABSTENTION,
    miss_kind: str = MISS_KIND,
    distractors: str = DEFAULT_DISTRACTORS,
    named_document: bool = NAMED_DOCUMENT,
) -> Path:
    """Train the reader into `out` and write its abstention thresholds; returns `out`.

    `extra_rows` (e.g. field questions, data/factbook_qa.field_question_roles) are trained on only; the
    thresholds are chosen on a share of `rows`, the questions the reader will be asked, plus
    `extra_calibration`: questions unlike any it trained on (field questions about fields kept out of
    its training), so that the thresholds also fit kinds of question the reader has never met; and, with
    `min_miss_abstention`, so that it abstains on that share of the calibration questions asked as if
    retrieval had missed (`miss_kind`: their documents, "retrieval", or the lines that answer, "line").
    """
    out = Path(out).expanduser()
    refuse_existing(out, overwrite)
    rows, extra_rows, extra_calibration = ([r for r in group if str(r.get("answer", "")).strip()] for group in (rows, extra_rows, extra_calibration))
    every = [*rows, *extra_rows, *extra_calibration]
    from tunelab.progress import progress_bar

    with progress_bar(progress) as bar:
        task = bar.add_task("retrieving train questions", total=len(every)) if bar else None
        contexts = retrieve_all(index, every, settings, (lambda n: bar.advance(task, n)) if bar else None)
    context_of = {id(r): c for r, c in zip(every, contexts)}
    reader_rows, calibration = split_train(rows, seed=seed)
    reader_rows += extra_rows
    calibration += extra_calibration
    misses = []
    if min_miss_abstention:
        with progress_bar(progress) as bar:
            task = bar.add_task(f"retrieving as if missed ({miss_kind})", total=len(calibration)) if bar else None
            misses = simulated_misses(index, calibration, settings, (lambda n: bar.advance(task, n)) if bar else None, kind=miss_kind)
    trained = train_reader_on(
        reader_rows,
        [context_of[id(r)] for r in reader_rows],
        calibration,
        [context_of[id(r)] for r in calibration],
        out,
        settings=settings,
        model=model,
        epochs=epochs,
        seed=seed,
        overwrite=overwrite,
        progress=progress,
        calibration_misses=misses,
        min_miss_abstention=min_miss_abstention,
        miss_kind=miss_kind,
        distractors=distractors,
        index=index,
        named_document=named_document,
    )
    return trained.run


def train_reader_on(
    reader_rows: Sequence[dict],
    reader_contexts: Sequence[Retrieved],
    calibration: Sequence[dict],
    calibration_contexts: Sequence[Retrieved],
    out: Path,
    *,
    settings: ContextSettings,
    model: str = "minilm",
    epochs: float = 2.0,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    calibration_misses: Sequence[tuple[dict, Retrieved]] = (),
    min_miss_abstention: float | None = None,
    miss_kind: str = MISS_KIND,
    distractors: str = DEFAULT_DISTRACTORS,
    index=None,
    named_document: bool = NAMED_DOCUMENT,
) -> TrainedReader:
    """The reader trained on `reader_rows` (a TrainedReader), its thresholds chosen on the disjoint `calibration` rows (and
    `calibration_misses`, their simulated misses of `miss_kind`, and `named_document`, see choose_abstention). `distractors`:
    see DISTRACTORS; retrieval-miss distractors are retrieved from `index`."""
    from tunelab.config import ExtractiveQAConfig
    from tunelab.rag.readers import SpanReader
    from tunelab.training.extractive_qa import train_extractive_qa

    out = Path(out).expanduser()
    if distractors not in DISTRACTORS:
        raise TunelabError(f"unknown distractors '{distractors}'", f"use one of {', '.join(DISTRACTORS)}")
    distractor_of = distractor_rows(reader_rows, seed)
    miss_contexts = retrieve_distractor_misses(index, reader_rows, distractor_of, settings, progress, distractors) if distractors != "other-question" else None
    examples = reader_examples(reader_rows, reader_contexts, distractor_of=distractor_of, miss_contexts=miss_contexts)
    # Examples go next to the run (not inside: the trainer publishes the run folder whole).
    data = out.parent / f".{out.name}.examples.jsonl"
    atomic.write_text(data, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples))
    try:
        train_extractive_qa(ExtractiveQAConfig(data=str(data), model=model, epochs=epochs, seed=seed, out=str(out), overwrite=overwrite), progress=progress)
    finally:
        data.unlink(missing_ok=True)
    reader = SpanReader(out)
    readings = reader.read_many([r["question"] for r in calibration], [c.passages for c in calibration_contexts], threshold=float("-inf"))
    misses = None
    if calibration_misses and min_miss_abstention:
        misses = read_misses(reader, calibration_misses)
    abstention = choose_abstention(
        calibration,
        calibration_contexts,
        readings,
        "train (calibration questions the reader was not trained on)",
        misses=misses,
        min_miss_abstention=min_miss_abstention,
        named_document=named_document,
        miss_kind=miss_kind,
    )
    write_reader_settings(out, settings, abstention, examples, distractors)
    return TrainedReader(out, reader, readings, misses)


def retrieve_distractor_misses(
    index, rows: Sequence[dict], distractor_of: Mapping[int, int], settings: ContextSettings, progress: bool, distractors: str = "retrieval-miss"
) -> dict[int, Retrieved]:
    """The distractor rows' (`distractor_of`, reader_data.distractor_rows of `rows`) contexts as a miss would show
    them (DISTRACTORS): retrieval missing their documents ("retrieval-miss"; "both": every other distractor row's,
    the others keep another question's passages), or their own retrieval without the lines that answer ("line-miss")."""
    from tunelab.progress import progress_bar

    if index is None:
        raise TunelabError(f"{distractors} distractors need the index", "pass the index the questions are retrieved from")
    chosen = [i for i in sorted(distractor_of) if rows[i].get("doc_id")]
    chosen = chosen[::2] if distractors == "both" else chosen
    out = {}
    with progress_bar(progress) as bar:
        task = bar.add_task("retrieving distractors as if missed", total=len(chosen)) if bar else None
        for i in chosen:
            out[i] = simulated_miss_context(index, rows[i], settings, "line" if distractors == "line-miss" else "retrieval")
            if bar:
                bar.advance(task, 1)
    return out


def write_reader_settings(
    run_dir: Path, settings: ContextSettings, abstention: Abstention, examples: Sequence[dict], distractors: str = DEFAULT_DISTRACTORS
) -> None:
    atomic.write_json(
        Path(run_dir) / SETTINGS_FILE,
        {
            "context": settings.to_dict(),
            "abstention": abstention.to_dict(),
            "examples": {
                "total": len(examples),
                "with_answer": sum(1 for e in examples if e["answer"]),
                "distractor": sum(1 for e in examples if e["distractor"]),
                "distractors": distractors,
            },
        },
    )


def read_reader_settings(run_dir: str | Path) -> tuple[ContextSettings, Abstention] | None:
    path = Path(run_dir) / SETTINGS_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    # A reader saved before scope was a setting was trained over all documents.
    return ContextSettings(**{"scope": "all", **data["context"]}), Abstention(**data["abstention"])
