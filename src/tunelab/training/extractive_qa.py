"""Fine-tuning an encoder for extractive question answering: the recipe, top to bottom.

set up -> load + validate data -> split by question -> (resuming: the last checkpoint) -> tokenizer -> max
length -> windows with span labels -> model -> stage -> Trainer -> train -> (main process:) save model ->
choose the no-answer threshold on eval -> score the test split with the reader -> publish the run
directory. The steps every encoder task shares are training/trainer_setup.py's.

The trained model is the RAG reader (models/span_reader.py): it answers with a span of a source,
or abstains.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from transformers import AutoModelForQuestionAnswering, Trainer  # noqa: E402

from tunelab import atomic  # noqa: E402
from tunelab.answers import normalize, score, summarise  # noqa: E402
from tunelab.config import ExtractiveQAConfig  # noqa: E402
from tunelab.data.load import is_missing, read_raw  # noqa: E402
from tunelab.data.split import held_out_share, hold_out, load_and_split, splits_needed  # noqa: E402
from tunelab.data.tokenize import choose_max_length  # noqa: E402
from tunelab.errors import TunelabError, did_you_mean  # noqa: E402
from tunelab.models.span_reader import ExtractiveReader, choose_threshold, cls_index, encode_windows  # noqa: E402
from tunelab.run import Run  # noqa: E402
from tunelab.training import trainer_setup  # noqa: E402
from tunelab.training.resume import ResumePoint, resume_point  # noqa: E402

TASK = "extractive-qa"
MIN_MAX_LENGTH = 32  # a window must leave the context room after the question
# summarise()'s names -> the names of metrics.json["test"]
CI_NAMES = {"exact_match": "exact_match", "f1": "token_f1", "contains": "right", "hallucination_rate_all": "hallucinated"}


def train_extractive_qa(config: ExtractiveQAConfig, progress: bool = True, resume: bool = False) -> Run:
    """Fine-tune config.model to point at answer spans in config.data; return the finished run.
    With resume, training continues from the last checkpoint that a killed run left in its staging folder."""
    setup = trainer_setup.start_run(config)
    splits = load_qa_splits(config)  # every answer checked against its context, split by question (seeded)
    point = resume_point(setup.staging, config.epochs, setup.processes) if resume else None
    checkpoint = point.checkpoint if point else None
    pretrained = trainer_setup.load_pretrained(config)
    tokenizer = pretrained.tokenizer
    tokenizer.padding_side = "right"  # "no answer" points at [CLS], index 0 of every padded window
    max_length = config.max_length or choose_qa_max_length(tokenizer, splits["train"], pretrained.limit, config.seed)
    lr = trainer_setup.resolve_lr(config.lr, pretrained.config)
    # Windows of question + context, each labelled with its answer's tokens (or [CLS]).
    datasets = {name: tokenize_qa(splits[name], tokenizer, max_length, config.doc_stride) for name in ("train", "eval")}
    with trainer_setup.quiet_new_head():  # the span head (qa_outputs) is new
        model = AutoModelForQuestionAnswering.from_pretrained(pretrained.folder, **trainer_setup.layer_kwargs(config.layers))
    if progress and setup.is_main:
        print_plan(config, splits, len(datasets["train"]), max_length, lr, setup, sum(p.numel() for p in model.parameters()), point)
    trainer_setup.stage_run(setup, config, splits, checkpoint=checkpoint, task=TASK, kind="transformers", max_length=max_length, lr=lr)
    # The plain Trainer; the best epoch by eval loss is kept. Its batches hold no `labels` (span positions instead), so under
    # --nproc the Trainer leaves the loss a per-process mean rather than scaling it by the process count.
    args = trainer_setup.training_arguments(config, setup, config.batch_size, lr, len(datasets["train"]), best_metric="loss")
    trainer = trainer_setup.build_trainer(Trainer, config, setup, args, model, datasets, tokenizer, progress)
    trained = trainer_setup.train_timed(trainer, checkpoint)
    if setup.is_main:  # launched by torchrun (--nproc), every process trains and the main one writes the run
        facts = trainer_setup.training_metrics(trainer, trained, setup)
        trainer_setup.save_model(trainer, setup.staging / "model")
        test, threshold = score_reader(config, setup, trainer.model.eval(), tokenizer, splits, max_length)
        atomic.write_json(setup.staging / "metrics.json", {"task": TASK, "test": test, **facts, "null_threshold": threshold})
        trainer_setup.publish_run(setup, config.overwrite)
    setup.state.wait_for_everyone()
    return Run.open(setup.out)


def score_reader(config: ExtractiveQAConfig, setup, model, tokenizer, splits, max_length: int) -> tuple[dict, dict]:
    """The trained model as a reader: its no-answer threshold chosen on eval, the test split scored with it
    (predictions.parquet written); returns the test metrics and the threshold."""
    reader = ExtractiveReader(model, tokenizer, max_length, config.doc_stride, config.max_answer_tokens, precision=setup.precision)
    threshold = choose_null_threshold(reader, splits["eval"], config.eval_batch_size)
    test, predictions = score_split(reader, splits["test"], threshold["value"], config.eval_batch_size)
    predictions.to_parquet(setup.staging / "predictions.parquet", index=False)
    return test, threshold


# 1. data -------------------------------------------------------------------------------------
def load_qa_frame(source: str, config: ExtractiveQAConfig) -> pd.DataFrame:
    """question, context, answer ("" when the context does not hold it) and answer_start (-1 then).

    A given answer_start must point at the answer; without it, the answer's first occurrence in
    the context is used. Every mistake names the file and the row.
    """
    raw = read_raw(source, config.encoding, config.delimiter)
    raw.columns = [str(c) for c in raw.columns]
    columns = list(raw.columns)
    for role, column in (("question", config.question_col), ("context", config.context_col), ("answer", config.answer_col)):
        if column not in columns:
            hint = did_you_mean(column, columns)
            raise TunelabError(
                f"{role} column '{column}' not found in {source}; columns are: {', '.join(columns)}",
                hint or f"choose it with --{role}-col",
            )
    given_starts = raw["answer_start"] if "answer_start" in columns else pd.Series([None] * len(raw))
    rows = []
    cells = zip(raw[config.question_col], raw[config.context_col], raw[config.answer_col], given_starts)
    for i, (question, context, answer, given) in enumerate(cells):
        where = f"{source}, row {i + 1}"
        question, context, answer = _text(question), _text(context), _text(answer)
        if not question.strip():
            raise TunelabError(f"{where}: the question is empty", "fill it in or remove the row")
        if not context.strip():
            raise TunelabError(f"{where}: the context is empty", "fill it in or remove the row")
        answer = answer.strip()
        if not answer:
            rows.append((question, context, "", -1))
            continue
        if is_missing(given):
            start = context.find(answer)
            if start < 0:
                raise TunelabError(
                    f"{where}: the answer {answer[:60]!r} does not occur in its context",
                    "fix the answer or the context, or leave the answer empty if the context does not hold it",
                )
        else:
            start = int(given) if float(given).is_integer() else -1
            if start < 0 or context[start : start + len(answer)] != answer:
                raise TunelabError(
                    f"{where}: answer_start {given} does not point at the answer {answer[:60]!r} in its context",
                    "fix answer_start (a character offset into the context), or drop the column to use the first occurrence",
                )
        rows.append((question, context, answer, start))
    if not rows:
        raise TunelabError(f"{source} has no rows", "give a file with question, context and answer columns")
    frame = pd.DataFrame(rows, columns=["question", "context", "answer", "answer_start"])
    frame.attrs["source"] = str(source)
    return frame


def _text(value) -> str:
    if is_missing(value):
        return ""
    if isinstance(value, float) and value.is_integer():  # 1990.0 from a column with empty cells
        return str(int(value))
    return str(value)


def load_qa_splits(config: ExtractiveQAConfig) -> dict[str, pd.DataFrame]:
    splits, _ = load_and_split(config, lambda source: load_qa_frame(source, config), split_by_question)
    return splits


def split_by_question(
    frame: pd.DataFrame,
    eval_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 42,
    eval_frame: pd.DataFrame | None = None,
    test_frame: pd.DataFrame | None = None,
) -> dict[str, pd.DataFrame]:
    """Seeded train/eval/test splits in which all rows of one question (its normalised text) stay
    together, so a test question was never seen in training; user-given splits win."""
    from sklearn.model_selection import GroupShuffleSplit

    source = frame.attrs.get("source", "the data")
    questions = frame["question"].map(normalize).nunique()
    needed = splits_needed(eval_frame, test_frame)
    if questions < needed:
        raise TunelabError(
            f"{source} has {questions} distinct question(s); splitting by question needs at least {needed}",
            "add questions, or pass --eval-data/--test-data",
        )

    def split_off(rest: pd.DataFrame, fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
        groups = rest["question"].map(normalize)
        share = held_out_share(fraction, questions, groups.nunique(), 1)  # at least one question
        kept, held = next(GroupShuffleSplit(n_splits=1, test_size=share, random_state=seed).split(rest, groups=groups))
        return rest.iloc[kept], rest.iloc[held].reset_index(drop=True)

    rest, splits = hold_out({"test": test_frame, "eval": eval_frame}, {"test": test_fraction, "eval": eval_fraction}, frame, split_off)
    splits["train"] = rest.reset_index(drop=True)
    return {name: splits[name] for name in ("train", "eval", "test")}


# 2.-3. tokens --------------------------------------------------------------------------------
def choose_qa_max_length(tokenizer, train: pd.DataFrame, model_limit: int, seed: int, percentile: float = 95) -> int:
    """The 95th percentile of question + context tokens (a seeded sample of 5000 rows), capped by the model."""
    sample = train.sample(n=min(len(train), 5000), random_state=seed)
    encoded = tokenizer(sample["question"].tolist(), sample["context"].tolist(), truncation=False, verbose=False)["input_ids"]
    lengths = np.array([len(ids) for ids in encoded], dtype=np.int64)
    return max(choose_max_length(lengths, model_limit, percentile), min(MIN_MAX_LENGTH, model_limit))


def tokenize_qa(frame: pd.DataFrame, tokenizer, max_length: int, doc_stride: int):
    """A datasets.Dataset of windows with start_positions / end_positions, unpadded."""
    import datasets

    encoded = encode_windows(tokenizer, frame["question"].tolist(), frame["context"].tolist(), max_length, doc_stride)
    starts, ends = window_labels(encoded, frame["answer_start"].tolist(), frame["answer"].str.len().tolist(), tokenizer)
    columns = {name: encoded[name] for name in ("input_ids", "token_type_ids", "attention_mask") if name in encoded}
    columns.update(start_positions=starts, end_positions=ends)
    return datasets.Dataset.from_dict(columns)


def window_labels(encoded, answer_starts: list[int], answer_lengths: list[int], tokenizer) -> tuple[list[int], list[int]]:
    """Each window's answer tokens: the first and last context tokens covering the answer's
    characters; [CLS] when the row has no answer or the window does not hold all of it."""
    starts, ends = [], []
    for window, offsets in enumerate(encoded["offset_mapping"]):
        row = encoded["overflow_to_sample_mapping"][window]
        cls = cls_index(encoded["input_ids"][window], tokenizer)
        first_char = answer_starts[row]
        end_char = first_char + answer_lengths[row]
        context = [t for t, sequence in enumerate(encoded.sequence_ids(window)) if sequence == 1]
        if first_char < 0 or not context or offsets[context[0]][0] > first_char or offsets[context[-1]][1] < end_char:
            starts.append(cls)
            ends.append(cls)
            continue
        start = context[0]
        while start <= context[-1] and offsets[start][0] <= first_char:
            start += 1
        end = context[-1]
        while end >= context[0] and offsets[end][1] >= end_char:
            end -= 1
        starts.append(start - 1)
        ends.append(end + 1)
    return starts, ends


# 8. threshold, test scores, metrics ------------------------------------------------------------
def read_split(reader: ExtractiveReader, split: pd.DataFrame, batch_size: int):
    """Each row read on its own context: the question's one passage."""
    return reader.read_many(split["question"].tolist(), [[context] for context in split["context"]], batch_size=batch_size)


def choose_null_threshold(reader: ExtractiveReader, eval_split: pd.DataFrame, batch_size: int) -> dict:
    """The margin threshold with the most right - hallucinated answers on the eval split."""
    results = read_split(reader, eval_split, batch_size)
    right = [
        r.candidate is not None and score(r.candidate.text, answer, question=question)["contains"] > 0
        for r, answer, question in zip(results, eval_split["answer"], eval_split["question"])
    ]
    value = choose_threshold([r.margin for r in results], right)
    answered = [r.margin >= value for r in results]
    gain = sum((1 if ok else -1) for ok, a in zip(right, answered) if a)
    return {
        "value": value,
        "chosen_on": "eval",
        "criterion": "right - hallucinated",
        "eval_questions": len(results),
        "eval_right_minus_hallucinated": gain,
    }


def score_split(reader: ExtractiveReader, split: pd.DataFrame, threshold: float, batch_size: int) -> tuple[dict, pd.DataFrame]:
    """Test metrics with tunelab's one answer scorer, and the per-row predictions."""
    results = [r.at_threshold(threshold) for r in read_split(reader, split, batch_size)]
    scores = [score(r.text, answer, question=question) for r, answer, question in zip(results, split["answer"], split["question"])]
    has_answer = split["answer"].str.len().to_numpy() > 0
    answered = np.array([not r.abstained for r in results])
    overall = summarise(scores)
    answerable = summarise([s for s, has in zip(scores, has_answer) if has], ci=False)
    metrics = {
        "questions": overall["n"],
        "exact_match": overall["exact_match"],
        "token_f1": overall["f1"],
        "right": overall["contains"],
        "abstained": overall["abstention_rate"],
        "hallucinated": overall["hallucination_rate_all"],
        "hallucination_rate_answered": overall["hallucination_rate_answered"],
        "penalised_score": overall["penalised_score"],
        "has_answer_accuracy": float(np.mean(answered == has_answer)),
        "answerable": {
            "questions": int(has_answer.sum()),
            "exact_match": answerable.get("exact_match"),
            "token_f1": answerable.get("f1"),
            "right": answerable.get("contains"),
        },
        "unanswerable": {
            "questions": int((~has_answer).sum()),
            "abstained": float(np.mean(~answered[~has_answer])) if (~has_answer).any() else None,
        },
        **{f"{name}_ci95": overall[f"{key}_ci95"] for key, name in CI_NAMES.items() if f"{key}_ci95" in overall},
    }
    predictions = pd.DataFrame(
        {
            "question": split["question"],
            "answer": split["answer"],
            "prediction": [r.text for r in results],
            "candidate": [r.candidate.text if r.candidate else None for r in results],
            "margin": [r.margin for r in results],
            "abstained": [r.abstained for r in results],
            "exact_match": [s["exact_match"] for s in scores],
            "right": [s["contains"] for s in scores],
            "f1": [s["f1"] for s in scores],
            "hallucinated": [s["hallucinated"] for s in scores],
        }
    )
    return metrics, predictions


def print_plan(
    config: ExtractiveQAConfig, splits, windows: int, max_length: int, lr: float, setup: trainer_setup.RunSetup, parameters: int, resuming: ResumePoint | None
) -> None:
    """The plan on stderr; for a resumed run, which checkpoint it continues from."""
    from rich.console import Console

    train = splits["train"]
    unanswerable = float((train["answer"] == "").mean())
    effective = config.batch_size * setup.processes
    steps = max(1, windows // effective) * config.epochs
    console = Console(stderr=True)
    console.print(
        f"[bold]plan[/]: {config.model} on {config.data}, extractive QA — {len(train)} train / {len(splits['eval'])} eval / "
        f"{len(splits['test'])} test rows ({unanswerable:.0%} of train unanswerable), {windows} train windows\n"
        f"      max length {max_length}, doc stride {config.doc_stride}, batch {config.batch_size} × {setup.processes} process(es) = {effective}, "
        f"≈{steps:.0f} steps, learning rate {lr:g}, {setup.precision}; parameters {parameters / 1e6:.1f}M",
        highlight=False,
    )
    if resuming is not None:
        console.print(resuming.describe(), highlight=False)
