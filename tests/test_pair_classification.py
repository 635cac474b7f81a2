"""Pair classification: text pairs tokenized as the tokenizer's pairs (token_type_ids), a run trained on a
tiny BERT through the CLI, its metrics equal to scikit-learn's, predict (pairs and files), eval, the
ONNX export's parity, the service's request schema, bad inputs, and `data inspect`'s detection."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score
from typer.testing import CliRunner

from tests._serve_fixtures import running
from tests.conftest import FILLER, NEGATIVE, POSITIVE
from tests.test_cli_errors import assert_user_error
from tunelab import textpairs
from tunelab.cli import app

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def pairs_frame(rows: int = 240, seed: int = 0) -> pd.DataFrame:
    """premise: filler words only; hypothesis: positive or negative words. The label ("yes" when the
    hypothesis is positive) is readable only from the second text, so a model that drops it cannot learn."""
    rng = random.Random(seed)
    out = []
    for i in range(rows):
        label = "yes" if i % 2 else "no"
        words = rng.sample(POSITIVE if label == "yes" else NEGATIVE, 2) + rng.sample(FILLER, 2)
        rng.shuffle(words)
        out.append({"premise": " ".join(rng.sample(FILLER, 4)), "hypothesis": " ".join(words), "label": label})
    return pd.DataFrame(out)


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory, tiny_bert) -> Path:
    """One pair-classification run trained through the CLI, shared by the tests that read it."""
    folder = tmp_path_factory.mktemp("pair-run")
    data = folder / "nli.csv"
    pairs_frame().to_csv(data, index=False)
    result = cli(
        "train",
        "--task",
        "pair-classification",
        "--model",
        tiny_bert,
        "--data",
        data,
        "--text-col",
        "premise",
        "--text-pair-col",
        "hypothesis",
        "--epochs",
        6,
        "--lr",
        1e-3,
        "--seed",
        1,
        "--out",
        folder / "run",
    )
    assert result.exit_code == 0, result.output
    return folder / "run"


# -- tokenization ------------------------------------------------------------------------------


def test_pairs_are_tokenized_as_the_tokenizers_text_pairs(tiny_bert):
    from transformers import AutoTokenizer

    from tunelab.data.tokenize import token_lengths, tokenize_frame

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    pairs = [("the good film", "bad awful"), ("a table", "the chair and the door")]
    encoded = textpairs.tokenize(tokenizer, pairs)
    assert encoded["input_ids"] == tokenizer(["the good film", "a table"], ["bad awful", "the chair and the door"])["input_ids"]
    # [CLS] the good film [SEP] bad awful [SEP]: segment 0 up to the first [SEP], segment 1 after it
    assert encoded["token_type_ids"][0] == [0, 0, 0, 0, 0, 1, 1, 1]
    frame = pd.DataFrame({"text": [a for a, _ in pairs], "text_pair": [b for _, b in pairs], "label": ["x", "y"]})
    dataset = tokenize_frame(frame, tokenizer, 64, {"x": 0, "y": 1})
    assert dataset["token_type_ids"][1] == encoded["token_type_ids"][1] and list(dataset["length"]) == [8, 10]
    assert token_lengths(tokenizer, textpairs.frame_inputs(frame)).tolist() == [8, 10]
    with pytest.raises(ValueError, match="all texts or all"):
        textpairs.tokenize(tokenizer, ["a text", ("a", "pair")])


def test_the_classifier_scores_a_pair_as_one_input(tmp_path):
    import torch
    from transformers import AutoTokenizer

    from tests.conftest import write_tiny_bert
    from tunelab.models.classifier import Classifier

    folder = write_tiny_bert(tmp_path / "m", num_labels=2)
    classifier = Classifier.load(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    pairs = [("good film", "the bad film was dull"), ("a table", "chair")]
    with torch.inference_mode():
        expected = classifier.model(**tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt")).logits.numpy()
    np.testing.assert_allclose(classifier.logits(pairs, batch_size=1), expected, atol=1e-5)
    assert np.abs(classifier.logits([a for a, _ in pairs]) - expected).max() > 1e-5  # the second text counts


# -- a trained run -----------------------------------------------------------------------------


def test_run_learns_from_the_second_text_and_keeps_pairs_in_its_splits(pair_run):
    from tunelab.run import Run

    run = Run.open(pair_run)
    assert run.task == "pair-classification" and run.config["text_pair_col"] == "hypothesis"
    test = run.split("test")
    assert list(test.columns[:3]) == ["text", "text_pair", "label"]
    assert run.metrics["accuracy"] > 0.9, run.metrics["accuracy"]
    assert "missing" in run.metrics["baseline"]  # TF-IDF cannot compare two texts: said, not faked
    assert (pair_run / "report.html").is_file()


def test_metrics_equal_scikit_learns(pair_run):
    from tunelab.run import Run

    run = Run.open(pair_run)
    predictions = pd.read_parquet(pair_run / "predictions.parquet")
    assert predictions["text_pair"].tolist() == run.split("test")["text_pair"].tolist()
    test = run.metrics["test"]
    assert test["accuracy"] == pytest.approx(accuracy_score(predictions["label"], predictions["predicted"]))
    assert test["f1_macro"] == pytest.approx(f1_score(predictions["label"], predictions["predicted"], average="macro"))


def test_predict_pairs_texts_and_files(pair_run, tmp_path):
    result = cli("predict", pair_run, "the a", "good great", "--pair", "excellent lovely", "--pair", "awful bad", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert [row["text_pair"] for row in shown] == ["excellent lovely", "awful bad"]
    assert [row["label"] for row in shown] == ["yes", "no"]

    data = tmp_path / "pairs.csv"
    pd.DataFrame({"premise": ["the a", "the a"], "hypothesis": ["good wonderful", "terrible nasty"]}).to_csv(data, index=False)
    out = tmp_path / "preds.csv"
    result = cli("predict", pair_run, "--file", data, "--text-col", "premise", "--out", out)
    assert result.exit_code == 0, result.output
    written = pd.read_csv(out)
    assert written["text_pair"].tolist() == ["good wonderful", "terrible nasty"] and written["label"].tolist() == ["yes", "no"]


def test_eval_on_a_file_reads_the_runs_pair_column(pair_run, tmp_path):
    data = tmp_path / "more.csv"
    pairs_frame(40, seed=9).to_csv(data, index=False)
    result = cli("eval", pair_run, "--data", data, "--text-col", "premise", "--out", tmp_path / "eval", "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert metrics["test"]["n"] == 40 and metrics["accuracy"] > 0.8
    # The Python API reads a file's `text` and `text_pair` columns
    from tunelab.evaluation import evaluate_run

    named = tmp_path / "named.csv"
    pairs_frame(40, seed=9).rename(columns={"premise": "text", "hypothesis": "text_pair"}).to_csv(named, index=False)
    assert evaluate_run(pair_run, named, out_dir=tmp_path / "api", progress=False)["accuracy"] == metrics["accuracy"]


def test_onnx_export_checks_parity_on_the_pairs(pair_run):
    from tunelab.run import Run
    from tunelab.runtime.export import export_onnx
    from tunelab.runtime.scorers import open_scorer

    run = Run.open(pair_run)
    report = export_onnx(run)
    assert report.fp32_argmax_agreement == 1.0 and report.fp32_max_abs_diff < 1e-3
    pairs = textpairs.frame_inputs(run.split("test"))
    np.testing.assert_allclose(open_scorer(run, "onnx").logits(pairs), open_scorer(run, "torch").logits(pairs), atol=1e-4)


def test_openvino_backends_score_the_pairs_and_calibrate_on_train_pairs(pair_run, tmp_path, monkeypatch):
    """Both OpenVINO backends read a pair as the tokenizer's pair (token_type_ids); int8 is calibrated on train pairs."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    import shutil

    from tunelab.run import Run
    from tunelab.runtime import load_scorer, openvino_export
    from tunelab.runtime.choice import exported, refusals

    run = Run.open(shutil.copytree(pair_run, tmp_path / "run", ignore=shutil.ignore_patterns("onnx")))
    feeds: list = []
    real = openvino_export.calibration_feeds
    monkeypatch.setattr(openvino_export, "calibration_feeds", lambda *args: feeds.extend(real(*args)) or feeds)
    refused = refusals(exported(run, "auto", say=lambda line: None))
    assert feeds and all(feed["token_type_ids"].max() == 1 for feed in feeds)  # each calibration input is a pair
    pairs = textpairs.frame_inputs(run.split("test"))
    reference = load_scorer(run, "torch").logits(pairs)
    for backend in ("openvino", "openvino-int8"):
        if backend in refused:  # a tiny model's int8 may miss the gate: then the reason is on record
            assert "agrees with PyTorch on" in refused[backend]
            continue
        logits = load_scorer(run, backend, say=lambda line: None).logits(pairs)
        assert (logits.argmax(axis=1) == reference.argmax(axis=1)).all(), backend
    assert "openvino" not in refused


def test_the_service_takes_pairs_and_documents_them(pair_run):
    from tunelab.prediction import predict
    from tunelab.serve.app import create_app

    pairs = [("the a", "good great"), ("the a", "awful bad")]
    with running(create_app(pair_run, api_key="")) as client:
        schema = client.get("/openapi.json").json()["components"]["schemas"]
        assert set(schema["TextPair"]["required"]) == {"text", "text_pair"}
        response = client.post("/v1/predict", json={"pairs": [{"text": a, "text_pair": b} for a, b in pairs]})
        assert response.status_code == 200, response.text
        served = [p["label"] for p in response.json()["predictions"]]
        assert served == [p["label"] for p in predict(pair_run, pairs)] == ["yes", "no"]
        texts = client.post("/v1/predict", json={"texts": ["good great"]})
        assert texts.status_code == 422 and "classifies text pairs" in texts.json()["error"]
        missing = client.post("/v1/predict", json={"pairs": [{"text": "only one"}]})
        assert missing.status_code == 422 and "text_pair" in missing.json()["error"]


def test_a_single_text_service_refuses_pairs(trained_run):
    from tunelab.serve.app import create_app

    with running(create_app(trained_run, api_key="")) as client:
        response = client.post("/v1/predict", json={"pairs": [{"text": "a", "text_pair": "b"}]})
        assert response.status_code == 422 and "single texts" in response.json()["error"]


# -- bad input ----------------------------------------------------------------------------------


def test_a_missing_text_pair_column_is_one_line(tmp_path, tiny_bert):
    data = tmp_path / "nli.csv"
    pairs_frame(20).to_csv(data, index=False)
    result = cli("train", "--task", "pair-classification", "--model", tiny_bert, "--data", data, "--text-col", "premise", "--text-pair-col", "hypothesys")
    assert_user_error(result, "text-pair column 'hypothesys' not found", "did you mean 'hypothesis'")
    assert not (tmp_path / "runs").exists()


def test_pair_flags_on_the_wrong_task_or_run_are_one_line(tmp_path, pair_run, trained_run):
    assert_user_error(cli("train", "--data", "x.csv", "--text-pair-col", "hypothesis"), "--text-pair-col applies only to --task pair-classification")
    assert_user_error(cli("predict", pair_run, "a premise only"), "classifies text pairs")
    assert_user_error(cli("predict", pair_run, "one", "two", "--pair", "only one"), "2 texts but 1 --pair texts")
    assert_user_error(cli("predict", trained_run, "good", "--pair", "bad"), "classifies single texts")


# -- data inspect --------------------------------------------------------------------------------


def test_inspect_detects_text_pair_columns(tmp_path):
    from tunelab.inspection import inspect_source

    data = tmp_path / "nli.csv"
    pairs_frame(30).to_csv(data, index=False)
    profile = inspect_source(str(data), model=None)
    assert profile["likely_task"] == "pair-classification"
    assert profile["text_pair"]["text_pair_col"] == "hypothesis" and "--task pair-classification --text-col premise" in profile["text_pair"]["advice"]
    single = tmp_path / "single.csv"
    pairs_frame(30).rename(columns={"premise": "text"}).drop(columns="hypothesis").to_csv(single, index=False)
    assert inspect_source(str(single), model=None)["likely_task"] == "classification"
    result = cli("data", "inspect", data, "--model", "")
    assert result.exit_code == 0 and "likely task: pair-classification" in result.output, result.output


# -- the RAG reranker -----------------------------------------------------------------------------


def test_a_pair_run_reranks_search_hits_by_its_relevant_probability(pair_run, trained_run):
    from tunelab.errors import TunelabError
    from tunelab.prediction import predict
    from tunelab.rag.chunk import Chunk
    from tunelab.rag.index import Hit
    from tunelab.rag.rerank import RunReranker, open_reranker

    texts = ["awful bad", "good great", "terrible nasty", "wonderful lovely"]
    hits = [Hit(rank, 0.0, Chunk(f"d#{rank}", "d", "", "", text, rank)) for rank, text in enumerate(texts)]
    reranker = open_reranker(pair_run)
    assert isinstance(reranker, RunReranker)
    reranked = reranker.rerank("the a", hits)
    expected = {text: p["probabilities"]["yes"] for text, p in zip(texts, predict(pair_run, [("the a", t) for t in texts]))}
    assert [h.chunk.text for h in reranked[:2]] == sorted(["good great", "wonderful lovely"], key=lambda t: -expected[t])
    assert [h.score for h in reranked] == pytest.approx(sorted(expected.values(), reverse=True), abs=1e-5)
    with pytest.raises(TunelabError, match="a reranker reads \\(query, passage\\) pairs"):
        open_reranker(trained_run)


RERANKED = ["awful bad", "good great", "terrible nasty", "wonderful lovely", "the a", "lovely film table", "bad chair", "great awful"]


def search_hits(texts: list[str]) -> list:
    from tunelab.rag.chunk import Chunk
    from tunelab.rag.index import Hit

    return [Hit(rank, 0.0, Chunk(f"d#{rank}", "d", "", "", text, rank)) for rank, text in enumerate(texts)]


def unexported_copy(run: Path, folder: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, folder, ignore=shutil.ignore_patterns("onnx")))


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8", "openvino"])
def test_a_pair_run_reranks_on_a_runtime_backend_in_torchs_order(pair_run, tmp_path, backend):
    from tunelab.rag.rerank import open_reranker
    from tunelab.runtime.scorers import missing_package

    pytest.importorskip("onnxruntime")
    if missing_package(backend):
        pytest.skip(f"{backend} needs the openvino extra")
    run = unexported_copy(pair_run, tmp_path / "run")
    torch_order = open_reranker(run).rerank("the a", search_hits(RERANKED))
    lines: list[str] = []
    reranker = open_reranker(run, backend=backend, say=lines.append)
    assert reranker.scorer.backend == backend and "first use; checked against PyTorch on its test split" in lines[0]
    reranked = reranker.rerank("the a", search_hits(RERANKED))
    assert [hit.chunk.text for hit in reranked] == [hit.chunk.text for hit in torch_order]
    # int8 keeps the order (its gate is on the argmax) but moves the probabilities a little.
    assert [hit.score for hit in reranked] == pytest.approx([hit.score for hit in torch_order], abs=0.05 if backend == "onnx-int8" else 1e-4)


def test_a_reranker_backend_that_fails_its_gate_is_refused_and_auto_says_why(pair_run, tmp_path):
    from tunelab.errors import TunelabError
    from tunelab.rag.rerank import open_reranker
    from tunelab.run import Run
    from tunelab.runtime.choice import exported

    pytest.importorskip("onnxruntime")
    run = unexported_copy(pair_run, tmp_path / "run")
    exported(Run.open(run), "auto", say=lambda line: None)
    parity_path = run / "onnx" / "parity.json"
    parity = json.loads(parity_path.read_text())
    parity_path.write_text(json.dumps({**parity, "fp32_argmax_agreement": 0.9}))
    with pytest.raises(TunelabError, match=r"backend onnx is refused for this run: the fp32 ONNX model agrees with PyTorch on 90\.00%"):
        open_reranker(run, backend="onnx")
    lines: list[str] = []
    reranker = open_reranker(run, backend="auto", say=lines.append)
    assert reranker.scorer.backend != "onnx" and "not used: onnx: the fp32 ONNX model agrees with PyTorch on 90.00%" in lines[-1]


def test_rag_search_reranks_with_a_pair_run_on_the_backend_asked_for(pair_run, tmp_path):
    from tests._rag_fixtures import ConceptEmbedder, write_docs
    from tunelab.rag.index import build_index

    pytest.importorskip("onnxruntime")
    run = unexported_copy(pair_run, tmp_path / "run")
    build_index(write_docs(tmp_path / "docs"), tmp_path / "index", embedder=ConceptEmbedder(), chunk_tokens=64, overlap=8)
    search = ("rag", "search", "good great film", "--index", tmp_path / "index", "--mode", "bm25", "-k", 4, "--rerank", run, "--json")
    on_torch = cli(*search)
    assert on_torch.exit_code == 0, on_torch.output
    assert not (run / "onnx").exists()  # the default is torch: nothing exported
    on_onnx = cli(*search, "--rerank-backend", "onnx")
    assert on_onnx.exit_code == 0, on_onnx.output
    assert (run / "onnx" / "model.onnx").is_file() and "exporting run to ONNX" in on_onnx.stderr
    torch_hits, onnx_hits = json.loads(on_torch.stdout), json.loads(on_onnx.stdout)
    assert [hit["chunk_id"] for hit in onnx_hits] == [hit["chunk_id"] for hit in torch_hits]
    assert [hit["score"] for hit in onnx_hits] == pytest.approx([hit["score"] for hit in torch_hits], abs=1e-4)


def test_bad_rerank_backends_are_one_line(pair_run, tmp_path):
    from tunelab.errors import TunelabError
    from tunelab.rag.rerank import open_reranker

    assert_user_error(cli("rag", "search", "q", "--rerank-backend", "onnx"), "--rerank-backend needs --rerank")
    assert_user_error(cli("rag", "search", "q", "--rerank", pair_run, "--rerank-backend", "onnx-int4"), "unknown backend 'onnx-int4'", "use one of: torch")
    # A cross-encoder folder has no test split to gate another backend on.
    with pytest.raises(TunelabError, match="a cross-encoder folder reranks on torch only, not openvino"):
        open_reranker(tmp_path, backend="openvino")


# -- compare and registry -------------------------------------------------------------------------


def test_compare_ranks_pair_runs_and_refuses_a_single_text_run(pair_run, trained_run, tmp_path):
    import shutil

    from tunelab.compare import compare_runs
    from tunelab.errors import TunelabError
    from tunelab.run import Run

    twin = tmp_path / "twin"
    shutil.copytree(pair_run, twin)
    summary = compare_runs([pair_run, twin], out=tmp_path / "cmp", latency_texts=4, throughput_texts=8, progress=False)
    assert [row["accuracy"] for row in summary["rows"]] == [Run.open(pair_run).metrics["accuracy"]] * 2
    assert all(row["examples_per_s"] > 0 for row in summary["rows"])
    with pytest.raises(TunelabError, match="learn different tasks"):
        compare_runs([pair_run, trained_run], out=tmp_path / "x", progress=False)


def test_the_registry_fingerprints_both_texts_of_a_pair(pair_run, tmp_path):
    import shutil

    from tunelab.lifecycle.registry import Registry, data_fingerprint

    registry = Registry(tmp_path / "registry.db")
    entry = registry.register(pair_run, "nli", promote=True)
    assert registry.production("nli").version == entry.version and entry.data_fingerprint == data_fingerprint(pair_run)
    changed = tmp_path / "changed"
    shutil.copytree(pair_run, changed)
    train = pd.read_parquet(changed / "splits" / "train.parquet")
    train.loc[0, "text_pair"] = train.loc[0, "text_pair"] + " nice"
    train.to_parquet(changed / "splits" / "train.parquet", index=False)
    assert data_fingerprint(changed) != data_fingerprint(pair_run)


# -- the built-in factbook-relevance set ---------------------------------------------------------


@pytest.mark.smoke
def test_factbook_relevance_follows_its_derivation_rule():
    from tunelab.answers import normalize
    from tunelab.data.factbook_qa import KIND_SOURCE_LINES, build_factbook_qa
    from tunelab.data.load import load_source
    from tunelab.data.split import make_splits

    frame = load_source("factbook-relevance", text_pair_col="text_pair")
    items = {item.question: item for item in build_factbook_qa()}
    assert frame.groupby("text")["label"].apply(lambda labels: (labels == "relevant").sum()).eq(1).all()  # one relevant line per question
    for row in frame.head(300).itertuples():
        item = items[row.text]
        header, line = row.text_pair.split("\n", 1)
        own_country = header.startswith(f"{item.title} — ")
        own_line = line.split(": ")[0] in KIND_SOURCE_LINES[item.kind]
        if row.label == "relevant":
            assert own_country and own_line, row
        elif own_country:  # the same country's other line never holds the answer
            assert not own_line and normalize(item.answer) not in normalize(row.text_pair), row
        else:  # another country's line for the same kind of question
            assert own_line, row
    splits = make_splits(frame, seed=3)
    questions = [set(split["text"]) for split in splits.values()]
    assert not (questions[0] & questions[1]) and not (questions[0] & questions[2]) and not (questions[1] & questions[2])


def test_only_a_pair_classification_config_takes_a_second_text_column():
    from tunelab.config import PairClassificationConfig, TrainConfig, load_settings
    from tunelab.errors import TunelabError

    assert load_settings(PairClassificationConfig, None, {"text_pair_col": "hypothesis"}).text_pair_col == "hypothesis"
    with pytest.raises(TunelabError, match="only pair classification reads a second text"):
        load_settings(TrainConfig, None, {"text_pair_col": "hypothesis"})
