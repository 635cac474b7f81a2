"""Extractive QA: span labels, a training run on a tiny BERT, the reader's guarantees, the threshold, bad input."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from tunelab.answers import ABSTENTION, normalize
from tunelab.cli import app
from tunelab.config import ExtractiveQAConfig
from tunelab.errors import TunelabError
from tunelab.models.span_reader import ExtractiveReader, best_span, choose_threshold, encode_windows
from tunelab.run import Run
from tunelab.training.extractive_qa import load_qa_frame, tokenize_qa

NAMES = "alpha beta gamma delta omega sigma kappa theta zeta lambda rho tau phi chi psi iota eta mu nu xi pi upsilon epsilon omicron".split()
COLOURS = "red blue green black white pink".split()
OTHERS = "big small tall short happy sad calm angry".split()
FILLER = "what is the code of ? .".split()

runner = CliRunner()


def write_qa_bert(folder: Path) -> Path:
    """A 2-layer BERT, hidden size 32, with a WordPiece vocabulary of the QA test words."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *FILLER, *NAMES, *COLOURS, *OTHERS]
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True, model_max_length=128)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def qa_frame(rows: int = 300, seed: int = 0, unanswerable: float = 0.2) -> pd.DataFrame:
    """ "what is the code of X ?" over 1-3 facts about X; the code is the one colour word, and a
    context without a colour does not hold the answer. A 32-wide BERT learns it in about a second
    (0.71-0.77 right on the test split over seeds 0-3: every answerable row; the rest abstained)."""
    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        name = rng.choice(NAMES)
        values = rng.sample(OTHERS, rng.randint(1, 2))
        answer = "" if rng.random() < unanswerable else rng.choice(COLOURS)
        if answer:
            values.insert(rng.randint(0, len(values)), answer)
        out.append({"question": f"what is the code of {name} ?", "context": " ".join(f"{name} is {v} ." for v in values), "answer": answer})
    return pd.DataFrame(out)


@pytest.fixture(scope="module")
def qa_bert(tmp_path_factory) -> Path:
    return write_qa_bert(tmp_path_factory.mktemp("qa-bert"))


@pytest.fixture(scope="module")
def tokenizer(qa_bert):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qa_bert)


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory, qa_bert) -> tuple[Path, str]:
    """One run trained through the CLI, shared by the tests that read it."""
    folder = tmp_path_factory.mktemp("qa-run")
    data = folder / "qa.jsonl"
    qa_frame(300, seed=0).to_json(data, orient="records", lines=True)
    result = runner.invoke(
        app,
        [
            "train",
            "--task",
            "extractive-qa",
            "--model",
            str(qa_bert),
            "--data",
            str(data),
            "--epochs",
            "5",
            "--lr",
            "3e-3",
            "--precision",
            "fp32",
            "--seed",
            "0",
            "--out",
            str(folder / "run"),
        ],
    )
    assert result.exit_code == 0, result.output
    return folder / "run", result.output


# labels --------------------------------------------------------------------------------------
def labelled_windows(tokenizer, frame: pd.DataFrame, max_length: int, doc_stride: int):
    dataset = tokenize_qa(frame, tokenizer, max_length, doc_stride)
    encoded = encode_windows(tokenizer, frame["question"].tolist(), frame["context"].tolist(), max_length, doc_stride)
    return dataset, encoded


def test_span_labels_decode_to_the_answer_and_no_answer_points_at_cls(tokenizer):
    context = "alpha is red . alpha is big . alpha is red ."
    second_red = context.rindex("red")
    frame = pd.DataFrame(
        {
            "question": ["what is the code of alpha ?", "what is the code of alpha ?"],
            "context": [context, "alpha is big ."],
            "answer": ["red", ""],
            "answer_start": [second_red, -1],  # the second "red": the label must follow the offset, not the first match
        }
    )
    dataset, encoded = labelled_windows(tokenizer, frame, max_length=64, doc_stride=16)
    assert len(dataset) == 2  # short contexts: one window each
    start, end = dataset[0]["start_positions"], dataset[0]["end_positions"]
    offsets = encoded["offset_mapping"][0]
    assert encoded.sequence_ids(0)[start] == encoded.sequence_ids(0)[end] == 1
    assert (offsets[start][0], offsets[end][1]) == (second_red, second_red + 3)
    assert context[offsets[start][0] : offsets[end][1]] == "red"
    assert tokenizer.decode(dataset[0]["input_ids"][start : end + 1]) == "red"
    assert (dataset[1]["start_positions"], dataset[1]["end_positions"]) == (0, 0)


def test_a_long_context_is_windowed_and_only_windows_holding_the_answer_point_at_it(tokenizer):
    facts = [f"alpha is {v} ." for v in OTHERS * 3]
    facts.insert(12, "alpha is pink .")  # the answer, far from both ends
    context = " ".join(facts)
    answer_start = context.index("pink")
    frame = pd.DataFrame({"question": ["what is the code of alpha ?"], "context": [context], "answer": ["pink"], "answer_start": [answer_start]})
    dataset, encoded = labelled_windows(tokenizer, frame, max_length=32, doc_stride=8)
    assert len(dataset) >= 4
    holding = []
    for window in range(len(dataset)):
        offsets = encoded["offset_mapping"][window]
        inside = [offsets[t] for t, s in enumerate(encoded.sequence_ids(window)) if s == 1]
        holds = inside[0][0] <= answer_start and answer_start + 4 <= inside[-1][1]
        start, end = dataset[window]["start_positions"], dataset[window]["end_positions"]
        if holds:
            holding.append(window)
            assert context[offsets[start][0] : offsets[end][1]] == "pink", window
        else:
            assert (start, end) == (0, 0), window
    assert holding and len(holding) < len(dataset)
    # Consecutive windows share doc_stride context tokens.
    first = [i for t, i in zip(encoded.sequence_ids(0), encoded["input_ids"][0]) if t == 1]
    second = [i for t, i in zip(encoded.sequence_ids(1), encoded["input_ids"][1]) if t == 1]
    assert first[-8:] == second[:8]


def test_answer_start_is_honoured_and_checked_and_defaults_to_the_first_occurrence(tmp_path):
    context = "alpha is red . beta is red ."
    path = tmp_path / "qa.csv"
    pd.DataFrame({"question": ["q ?", "r ?"], "context": [context, context], "answer": ["red", ""]}).to_csv(path, index=False)
    frame = load_qa_frame(str(path), ExtractiveQAConfig(data=str(path)))
    assert frame["answer_start"].tolist() == [context.index("red"), -1]
    assert frame["answer"].tolist() == ["red", ""]

    starts = [context.rindex("red"), 3]  # row 2's offset points at "ha "
    pd.DataFrame({"question": ["q ?", "r ?"], "context": [context] * 2, "answer": ["red"] * 2, "answer_start": starts}).to_csv(path, index=False)
    with pytest.raises(TunelabError, match=r"row 2: answer_start 3 does not point at the answer 'red'"):
        load_qa_frame(str(path), ExtractiveQAConfig(data=str(path)))
    pd.DataFrame({"question": ["q ?"], "context": [context], "answer": ["red"], "answer_start": [context.rindex("red")]}).to_csv(path, index=False)
    assert load_qa_frame(str(path), ExtractiveQAConfig(data=str(path)))["answer_start"].tolist() == [context.rindex("red")]


# training run --------------------------------------------------------------------------------
def test_training_writes_a_complete_run_that_learned(qa_run):
    path, output = qa_run
    run = Run.open(path)
    assert run.task == "extractive-qa"
    files = (
        "config.yaml",
        "model/config.json",
        "history.jsonl",
        "metrics.json",
        "predictions.parquet",
        *(f"splits/{s}.parquet" for s in ("train", "eval", "test")),
    )
    for name in files:
        assert (path / name).is_file(), name
    assert not (path / "checkpoints").exists()
    assert not any(p.name.endswith(".partial") for p in path.parent.iterdir())
    config = yaml.safe_load((path / "config.yaml").read_text())
    assert config["task"] == "extractive-qa" and config["kind"] == "transformers"
    assert isinstance(config["max_length"], int) and config["precision"] == "fp32"
    assert ExtractiveQAConfig(**config).task == "extractive-qa"  # config.yaml is itself a valid config

    metrics = run.metrics
    assert metrics["task"] == "extractive-qa"
    for key in ("questions", "exact_match", "token_f1", "right", "abstained", "hallucinated", "has_answer_accuracy"):
        assert key in metrics["test"], key
    assert metrics["train"]["train_samples"] > 0 and metrics["train"]["train_samples_per_second"] > 0
    assert metrics["null_threshold"]["chosen_on"] == "eval" and math.isfinite(metrics["null_threshold"]["value"])
    # About 80% of the rows are answerable; a model that always abstains scores 0, one that guesses a
    # random word of the context about 0.1.
    assert metrics["test"]["right"] >= 0.6, metrics["test"]
    assert metrics["test"]["has_answer_accuracy"] >= 0.8, metrics["test"]
    assert "test right" in output and str(path) in " ".join(output.split())

    # Split by question: no question's rows are in two splits.
    seen = [set(run.split(s)["question"].map(normalize)) for s in ("train", "eval", "test")]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])


# the reader ----------------------------------------------------------------------------------
def test_the_reader_answers_only_with_a_span_of_a_passage_or_abstains(qa_run):
    path, _ = qa_run
    reader = ExtractiveReader.load(path, threads=1)
    assert reader.null_threshold == Run.open(path).metrics["null_threshold"]["value"]
    rng = random.Random(5)
    questions, passage_lists = [], []
    for _ in range(30):
        frame = qa_frame(rng.randint(1, 4), seed=rng.randint(0, 10_000))
        questions.append(frame["question"][0])
        passage_lists.append(frame["context"].tolist())
    one_by_one = [reader.read(q, passages) for q, passages in zip(questions, passage_lists)]
    batched = reader.read_many(questions, passage_lists, batch_size=3)
    answered = 0
    for single, many, passages in zip(one_by_one, batched, passage_lists):
        for result in (single, many):
            if result.abstained:
                assert (result.text, result.passage) == (ABSTENTION, None)
            else:
                answered += 1
                assert passages[result.passage][result.char_start : result.char_end] == result.text
                assert result.text and result.margin >= reader.null_threshold
        assert single.text == many.text and abs(single.margin - many.margin) < 1e-3  # padding does not change the answer
    assert answered > 0
    assert reader.read("what is the code of alpha ?", []).abstained


def test_the_span_search_stays_inside_the_context(tokenizer):
    encoded = encode_windows(tokenizer, ["what is the code of alpha ?"], ["alpha is big . alpha is red . alpha is sad ."], 64, 16)
    in_context = np.array([s == 1 for s in encoded.sequence_ids(0)])
    context = np.flatnonzero(in_context)
    assert len(context) == 12  # fewer than top-20: the search sees every context token, like the brute force below
    rng = np.random.default_rng(0)
    for _ in range(50):
        start, end = rng.normal(0, 3, size=(2, len(in_context)))
        start[~in_context] += 50  # [CLS], the question and [SEP] score highest: never an answer
        end[~in_context] += 50
        expected = max((start[i] + end[j], i, j) for i in context for j in context if i <= j < i + 3)
        score, first, last = best_span(start, end, in_context, max_answer_tokens=3)
        assert (first, last) == expected[1:] and score == pytest.approx(expected[0])
    assert best_span(start, end, np.zeros(len(in_context), dtype=bool)) is None


# the threshold -------------------------------------------------------------------------------
def test_choose_threshold_maximises_right_minus_hallucinated():
    margins = [-2.0, -1.0, 0.5, 1.0, 3.0]
    right = [False, False, True, False, True]
    # answer all: 2 - 3 = -1; above -1.5: 2 - 2 = 0; above -0.25: 2 - 1 = 1; above 0.75: 1 - 1 = 0;
    # above 2: 1 - 0 = 1 (a tie: the lower threshold wins); above 4: 0.
    assert choose_threshold(margins, right) == -0.25
    abstain_all = choose_threshold([1.0, 2.0], [False, False])
    assert math.isfinite(abstain_all) and abstain_all > 2.0  # all wrong: abstain on everything
    assert choose_threshold([1.0, 2.0], [True, True]) < 1.0  # all right: answer everything
    assert choose_threshold([-math.inf, 0.5], [False, True]) < 0.5  # no span at all: never answered, still finite
    assert choose_threshold([], []) == 0.0


# bad input through the CLI -------------------------------------------------------------------
def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 or "error:" in lines[0], result.output
    joined = " ".join(result.output.split())
    for fragment in fragments:
        assert fragment in joined, (fragment, result.output)


def test_the_labelling_commands_refuse_a_qa_run_in_one_line_whatever_the_backend(qa_bert, tmp_path, monkeypatch):
    """predict, eval, serve, export and compare handle labelling runs only; an extractive-QA run (no ONNX graph of its
    own) is refused in one line on every backend, before anything is loaded, exported or written."""
    import shutil

    import uvicorn

    from tests.test_cli_errors import assert_user_error

    def started(*args, **kwargs):
        raise AssertionError("tunelab serve started a server")

    monkeypatch.setattr(uvicorn, "run", started)
    run = tmp_path / "qa-run"
    shutil.copytree(qa_bert, run / "model")
    (run / "config.yaml").write_text(yaml.safe_dump({"task": "extractive-qa"}), encoding="utf-8")
    source = tmp_path / "in.csv"
    pd.DataFrame({"text": ["what is the capital?"]}).to_csv(source, index=False)

    def cli(*args):
        return runner.invoke(app, [str(a) for a in args])

    for backend in ("torch", "onnx", "auto"):
        assert_user_error(cli("predict", run, "what is the capital?", "--backend", backend), "tunelab predict does not handle extractive-qa runs")
        assert_user_error(cli("predict", run, "--file", source, "--out", tmp_path / "o.csv", "--backend", backend), "does not handle extractive-qa runs")
        assert_user_error(cli("eval", run, "--backend", backend, "--out", tmp_path / "ev"), "it is not a text classifier (task: extractive-qa)")
        assert_user_error(cli("serve", run, "--backend", backend), "tunelab serve does not handle extractive-qa runs")
        assert_user_error(cli("compare", run, run, "--backend", backend, "--out", tmp_path / "cmp"), "tunelab compare does not handle extractive-qa runs")
    for format in ("onnx", "openvino"):
        assert_user_error(cli("export", run, "--format", format), "tunelab export does not handle extractive-qa runs")
    assert sorted(path.name for path in run.iterdir()) == ["config.yaml", "model"] and sorted(path.name for path in tmp_path.iterdir()) == ["in.csv", "qa-run"]


@pytest.fixture
def qa_args(qa_bert, tmp_path):
    return ["train", "--task", "extractive-qa", "--model", str(qa_bert), "--out", str(tmp_path / "out")]


def test_a_missing_context_column_is_named(qa_args, tmp_path):
    path = tmp_path / "qa.csv"
    qa_frame(20).rename(columns={"context": "passage"}).to_csv(path, index=False)
    result = runner.invoke(app, [*qa_args, "--data", str(path)])
    assert_one_line_error(result, "context column 'context' not found", "columns are: question, passage, answer")
    assert not (tmp_path / "out").exists()


def test_an_answer_missing_from_its_context_names_the_row(qa_args, tmp_path):
    frame = qa_frame(20)
    frame.loc[2, ["context", "answer"]] = ["alpha is big .", "red"]
    path = tmp_path / "qa.jsonl"
    frame.to_json(path, orient="records", lines=True)
    assert_one_line_error(runner.invoke(app, [*qa_args, "--data", str(path)]), f"{path}, row 3", "'red' does not occur in its context")
    assert not (tmp_path / "out").exists()


def test_classification_flags_are_refused_with_extractive_qa(qa_args, tmp_path):
    path = tmp_path / "qa.jsonl"
    qa_frame(20).to_json(path, orient="records", lines=True)
    result = runner.invoke(app, [*qa_args, "--data", str(path), "--label-col", "answer"])
    assert_one_line_error(result, "--label-col does not apply to --task extractive-qa")
    result = runner.invoke(app, ["train", "--data", str(path), "--question-col", "q"])
    assert_one_line_error(result, "--question-col applies only to --task extractive-qa")
    assert not (tmp_path / "out").exists()
