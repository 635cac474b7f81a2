"""tunelab.runtime: one backend choice for serve, predict and eval; export on first use; parity gates; auto's cached measurement."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tests._serve_fixtures import running
from tunelab.cli import app as cli
from tunelab.errors import TunelabError

pytest.importorskip("onnxruntime")

TEXTS = ["good great wonderful film", "awful bad terrible service", "the table and the chair", "x"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, trained_run) -> Path:
    """A copy of the tiny run, exported on its first use of an ONNX backend (fp32 + int8)."""
    from tunelab.runtime import load_scorer

    run = Path(shutil.copytree(trained_run, tmp_path_factory.mktemp("runtime") / "run", ignore=shutil.ignore_patterns("onnx")))
    assert load_scorer(run, "onnx-int8", say=lambda line: None).backend == "onnx-int8"
    return run


def fresh_copy(run_dir: Path, tmp_path: Path, monkeypatch) -> Path:
    """A copy without onnx/, whose export reuses run_dir's graph (the exporter itself is run by the fixture)."""
    from tunelab.runtime import export

    monkeypatch.setattr(export, "_export", lambda classifier, path: shutil.copy(run_dir / "onnx" / "model.onnx", path))
    return Path(shutil.copytree(run_dir, tmp_path / "run", ignore=shutil.ignore_patterns("onnx")))


def test_first_use_exports_and_records_parity(run_dir: Path) -> None:
    from tunelab.run import Run

    parity = json.loads((run_dir / "onnx" / "parity.json").read_text())
    assert (run_dir / "onnx" / "model.onnx").is_file() and (run_dir / "onnx" / "model.int8.onnx").is_file()
    assert parity["rows"] == len(Run.open(run_dir).split("test"))
    assert parity["fp32_argmax_agreement"] == 1.0 and parity["int8_argmax_agreement"] >= 0.995 and parity["int8_refused"] is None
    assert not list(run_dir.glob(".onnx.partial*"))  # no staging folder left behind


def test_backends_give_the_same_labels(run_dir: Path) -> None:
    from tunelab.run import Run
    from tunelab.runtime import load_scorer

    texts = Run.open(run_dir).split("test")["text"].astype(str).tolist() + TEXTS
    reference = load_scorer(run_dir, "torch").logits(texts, 64)
    for backend in ("onnx", "onnx-int8"):
        scorer = load_scorer(run_dir, backend)
        assert scorer.backend == backend
        for batch_size in (None, 3, 64):  # the service's slices, and predict's batches
            logits = scorer.logits(texts, batch_size)
            assert (logits.argmax(axis=1) == reference.argmax(axis=1)).all(), (backend, batch_size)
            if backend == "onnx":
                assert np.abs(logits - reference).max() < 1e-4


def test_auto_picks_a_passing_backend_and_caches_the_measurement(run_dir: Path, monkeypatch) -> None:
    from tunelab import hardware
    from tunelab.runtime import BACKENDS, choice, load_scorer

    (run_dir / "onnx" / "backend_choice.json").unlink(missing_ok=True)
    lines: list[str] = []
    scorer = load_scorer(run_dir, "auto", say=lines.append)
    record = json.loads((run_dir / "onnx" / "backend_choice.json").read_text())
    assert scorer.backend == record["chosen"] and record["chosen"] in BACKENDS
    assert set(record["texts_per_s"]) == set(BACKENDS) and all(speed > 0 for speed in record["texts_per_s"].values())
    assert record["chosen"] == max(record["texts_per_s"], key=record["texts_per_s"].get)
    assert record["refused"] == {}
    assert record["cpu_flags"] == [flag for flag in hardware.SPEED_FLAGS if flag in hardware.cpu_flags()]
    assert record["threads"] == hardware.thread_count(None)
    assert lines[-1].startswith(f"backend auto: {record['chosen']} (texts/s on this CPU: torch ")

    # Used again: the cache answers, nothing is timed.
    def no_timing(*args, **kwargs):
        raise AssertionError("auto measured again although its cache holds")

    monkeypatch.setattr(choice, "time_backends", no_timing)
    assert load_scorer(run_dir, "auto", say=lambda line: None).backend == record["chosen"]
    # Another thread count is another measurement.
    with pytest.raises(AssertionError, match="measured again"):
        load_scorer(run_dir, "auto", threads=record["threads"] + 1, say=lambda line: None)
    # So is a choice made by other tunelab code: another runtime, or a set of backends without one offered today.
    with monkeypatch.context() as patch:
        patch.setattr(choice, "runtime_code_version", lambda: "other code")
        with pytest.raises(AssertionError, match="measured again"):
            load_scorer(run_dir, "auto", say=lambda line: None)
    (run_dir / "onnx" / "backend_choice.json").write_text(json.dumps({**record, "backends": list(BACKENDS[:-1])}))
    with pytest.raises(AssertionError, match="measured again"):
        load_scorer(run_dir, "auto", say=lambda line: None)


def test_a_backend_failing_its_gate_is_refused_with_the_reason(run_dir: Path, tmp_path, monkeypatch) -> None:
    from tunelab.runtime import export, load_scorer

    run = fresh_copy(run_dir, tmp_path, monkeypatch)
    real_export, real_agreement = export.export_onnx, export.agreement

    def export_with_int8_disagreeing(*args, **kwargs):  # the OpenVINO backends, measured after the export, agree as they do
        calls = []

        def int8_disagrees(logits, reference):  # the export measures fp32's agreement first, then int8's
            calls.append(1)
            return real_agreement(logits, reference) if len(calls) == 1 else 0.98

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(export, "agreement", int8_disagrees)
            return real_export(*args, **kwargs)

    monkeypatch.setattr(export, "export_onnx", export_with_int8_disagreeing)
    lines: list[str] = []
    scorer = load_scorer(run, "auto", say=lines.append)
    assert scorer.backend != "onnx-int8"
    record = json.loads((run / "onnx" / "backend_choice.json").read_text())
    assert set(record["refused"]) == {"onnx-int8"} and "98.00%" in record["refused"]["onnx-int8"] and "99.5%" in record["refused"]["onnx-int8"]
    assert "onnx-int8" not in record["texts_per_s"]
    # One line says what was chosen and why int8 was not.
    assert lines[-1].count("\n") == 0 and "not used: onnx-int8: the int8 model agrees with PyTorch on 98.00%" in lines[-1]
    # The fp32 model is kept, the int8 one is not, and the refusal is on record.
    assert (run / "onnx" / "model.onnx").is_file() and not (run / "onnx" / "model.int8.onnx").exists()
    assert json.loads((run / "onnx" / "parity.json").read_text())["int8_refused"] == record["refused"]["onnx-int8"]
    # Asked for by name, the refused backend is an error saying why, not a silent fallback.
    with pytest.raises(TunelabError, match="onnx-int8 is refused for this run: the int8 model agrees with PyTorch on 98.00%"):
        load_scorer(run, "onnx-int8")
    result = CliRunner().invoke(cli, ["predict", str(run), "some text", "--backend", "onnx-int8"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1 and "refused" in result.output


def test_every_backend_has_the_same_gate(monkeypatch) -> None:
    from tunelab.runtime import choice
    from tunelab.runtime.choice import refusals

    monkeypatch.setattr(choice, "not_installed", lambda backend: None)  # the gate itself, with or without the openvino extra
    passing = {
        "fp32_argmax_agreement": 1.0,
        "int8_argmax_agreement": 0.995,
        "openvino": {"argmax_agreement": 1.0},
        "openvino-int8": {"argmax_agreement": 0.995},
        "openvino-bf16": {"argmax_agreement": 0.995},
    }
    assert refusals(passing) == {}
    refused = refusals({**passing, "fp32_argmax_agreement": 0.99})
    assert set(refused) == {"onnx"} and "fp32 ONNX model agrees with PyTorch on 99.00%" in refused["onnx"]
    assert set(refusals({**passing, "int8_argmax_agreement": None})) == {"onnx-int8"}
    refused = refusals({**passing, "openvino": {"argmax_agreement": 0.994}, "openvino-int8": {"failed": "OpenVINO failed on this run's model: X"}})
    assert refused == {
        "openvino": "the OpenVINO model agrees with PyTorch on 99.40% of the test texts (needs 99.5%)",
        "openvino-int8": "OpenVINO failed on this run's model: X",
    }
    assert set(refusals({key: value for key, value in passing.items() if key != "openvino-int8"})) == {"openvino-int8"}  # never measured
    refused = refusals({**passing, "openvino-bf16": {"argmax_agreement": 0.99}})
    assert refused == {"openvino-bf16": "the OpenVINO bf16 model agrees with PyTorch on 99.00% of the test texts (needs 99.5%)"}


def test_auto_falls_back_to_torch_when_the_export_fails(run_dir: Path, tmp_path, monkeypatch) -> None:
    from tunelab.runtime import export, load_scorer

    run = fresh_copy(run_dir, tmp_path, monkeypatch)

    def broken(classifier, path):
        raise RuntimeError("Failed to export the model with torch.export")

    monkeypatch.setattr(export, "_export", broken)
    lines: list[str] = []
    assert load_scorer(run, "auto", say=lines.append).backend == "torch"
    assert "backend auto: torch" in lines[-1] and "not used: onnx: ONNX export failed" in lines[-1]
    with pytest.raises(TunelabError, match="ONNX export failed"):
        load_scorer(run, "onnx")


def test_predict_file_with_onnx_writes_the_same_labels_as_torch(run_dir: Path, tmp_path, monkeypatch) -> None:
    from tunelab.run import Run
    from tunelab.runtime.scorers import OnnxScorer

    source = tmp_path / "texts.csv"
    pd.DataFrame({"text": Run.open(run_dir).split("test")["text"].tolist() + TEXTS}).to_csv(source, index=False)
    onnx_calls, onnx_logits = [], OnnxScorer.logits
    monkeypatch.setattr(OnnxScorer, "logits", lambda self, texts, *args: onnx_calls.append(len(texts)) or onnx_logits(self, texts, *args))
    written = {}
    for backend in ("torch", "onnx"):
        out = tmp_path / f"{backend}.csv"
        result = CliRunner().invoke(cli, ["predict", str(run_dir), "--file", str(source), "--out", str(out), "--backend", backend])
        assert result.exit_code == 0, result.output
        written[backend] = pd.read_csv(out)
    assert onnx_calls == [len(written["torch"])]  # --backend onnx scored every text with ONNX Runtime, in one call
    assert written["onnx"]["label"].tolist() == written["torch"]["label"].tolist()
    probabilities = [column for column in written["torch"].columns if column.startswith("prob_")]
    assert np.abs(written["onnx"][probabilities].to_numpy() - written["torch"][probabilities].to_numpy()).max() < 1e-4


def test_bad_backend_name_is_one_line(run_dir: Path, tmp_path) -> None:
    runner = CliRunner()
    for command in (["predict", str(run_dir), "some text"], ["eval", str(run_dir)]):
        result = runner.invoke(cli, [*command, "--backend", "fast"])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "unknown backend 'fast'" in lines[0] and "auto" in lines[0]


def test_eval_and_serve_use_the_chosen_backend(run_dir: Path, tmp_path) -> None:
    from tunelab.evaluation import evaluate_run
    from tunelab.run import Run
    from tunelab.runtime import choose_backend
    from tunelab.serve.app import create_app
    from tunelab.serve.settings import ServeSettings

    metrics = evaluate_run(run_dir, out_dir=tmp_path / "eval", progress=False, baseline=False, backend="onnx")
    assert metrics["test"]["timing"]["backend"] == "onnx"
    assert metrics["test"]["accuracy"] == pytest.approx(Run.open(run_dir).metrics["accuracy"])
    chosen = choose_backend(Run.open(run_dir), "auto", say=lambda line: None)
    with running(create_app(run_dir, ServeSettings(backend="auto"), api_key="")) as client:
        assert client.get("/v1/model").json()["backend"] == chosen
        assert len(client.post("/v1/predict", json={"texts": TEXTS}).json()["predictions"]) == len(TEXTS)


def test_the_ffn_down_recipe_keeps_the_down_projections_in_fp32(run_dir: Path, tmp_path) -> None:
    import onnx

    from tunelab.runtime.export import quantize

    fp32 = run_dir / "onnx" / "model.onnx"
    float_weights = {}
    for recipe in ("all-matmuls", "ffn-down-fp32"):
        quantize(fp32, tmp_path / f"{recipe}.onnx", recipe)
        graph = onnx.load(str(tmp_path / f"{recipe}.onnx")).graph
        shapes = {weight.name: tuple(weight.dims) for weight in graph.initializer}
        float_weights[recipe] = [shapes[node.input[1]] for node in graph.node if node.op_type == "MatMul" and node.input[1] in shapes]
    config = json.loads((run_dir / "model" / "config.json").read_text())
    down_projection = (config["intermediate_size"], config["hidden_size"])
    assert float_weights == {"all-matmuls": [], "ffn-down-fp32": [down_projection] * config["num_hidden_layers"]}


def test_onnx_exports_fp32_only_and_int8_is_added_when_asked_for(run_dir: Path, tmp_path, monkeypatch) -> None:
    from tunelab.runtime import load_scorer

    run = fresh_copy(run_dir, tmp_path, monkeypatch)
    assert load_scorer(run, "onnx", say=lambda line: None).backend == "onnx"
    assert (run / "onnx" / "model.onnx").is_file() and not (run / "onnx" / "model.int8.onnx").exists()
    assert json.loads((run / "onnx" / "parity.json").read_text())["int8_argmax_agreement"] is None
    assert load_scorer(run, "onnx-int8", say=lambda line: None).backend == "onnx-int8"
    assert json.loads((run / "onnx" / "parity.json").read_text())["int8_argmax_agreement"] >= 0.995


def raise_first_label_bias(fp32: Path, out: Path, shift: float, labels: int) -> None:
    """The fp32 graph with the first label's output bias raised by `shift`: a stand-in int8 model whose near ties flip, as quantization error flips them."""
    import onnx

    graph = onnx.load(str(fp32))
    bias = next(weight for weight in graph.graph.initializer if tuple(weight.dims) == (labels,))
    values = onnx.numpy_helper.to_array(bias).copy()
    values[0] += shift
    bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
    onnx.save(graph, str(out))


def assert_margin_chosen_on_eval(parity: dict, eval_reference: np.ndarray, shift: float) -> None:
    """A biased int8 model's parity figures: its margin is the largest top-two gap among the eval texts the bias labels otherwise than PyTorch."""
    from tunelab.runtime.scorers import top_two_gap

    int8_eval = eval_reference.copy()
    int8_eval[:, 0] += shift
    differs = int8_eval.argmax(axis=1) != eval_reference.argmax(axis=1)
    assert differs.any(), "the biased model must label some eval text otherwise, or this test checks nothing"
    assert parity["fp32_fallback_margin"] == pytest.approx(top_two_gap(int8_eval)[differs].max(), abs=1e-4)
    assert parity["fp32_fallback_chosen_on"].startswith(f"eval ({differs.size} texts, {int(differs.sum())} labelled otherwise")


@pytest.fixture
def biased_onnx_int8(run_dir: Path, tmp_path: Path, monkeypatch):
    """A fresh export whose onnx-int8 model labels some near ties otherwise than PyTorch: (run, its parity.json, the classifier, the bias shift)."""
    from tunelab.models.classifier import Classifier
    from tunelab.run import Run
    from tunelab.runtime import export
    from tunelab.runtime.scorers import top_two_gap

    run = Run.open(fresh_copy(run_dir, tmp_path, monkeypatch))
    classifier = Classifier.load(run.model_dir, run.config.get("max_length"))
    shift = float(np.quantile(top_two_gap(classifier.logits(export.split_texts(run, "eval", None))), 0.5))  # past half of the eval texts' gaps
    monkeypatch.setattr(export, "quantize", lambda fp32, int8, recipe: raise_first_label_bias(fp32, int8, shift, len(classifier.labels)))
    return run, export.export_onnx(run, "int8").to_dict(), classifier, shift


def test_the_onnx_int8_gate_measures_int8_with_its_fp32_fallback_chosen_on_eval(biased_onnx_int8) -> None:
    """The margin is the largest top-two gap among the eval texts int8 alone labels otherwise; the test gate scores int8 as served, with that fallback."""
    from tunelab.runtime.export import split_texts
    from tunelab.runtime.scorers import top_two_gap

    run, parity, classifier, shift = biased_onnx_int8
    assert_margin_chosen_on_eval(parity, classifier.logits(split_texts(run, "eval", None)), shift)

    test_texts = split_texts(run, "test", None)
    test_reference = classifier.logits(test_texts)
    int8_test = test_reference.copy()
    int8_test[:, 0] += shift
    alone = float((int8_test.argmax(axis=1) == test_reference.argmax(axis=1)).mean())
    assert alone < 0.995, "int8 alone must fail the gate on test, or this test checks nothing"
    assert parity["int8_only_argmax_agreement"] == pytest.approx(alone)
    assert parity["fp32_fallback_share"] == pytest.approx(float((top_two_gap(int8_test) <= parity["fp32_fallback_margin"]).mean()), abs=1e-3)
    assert parity["int8_argmax_agreement"] >= 0.995 and parity["int8_refused"] is None and "onnx-int8" in parity["files"]


def test_the_loaded_onnx_int8_scorer_scores_its_near_ties_again_in_fp32(biased_onnx_int8) -> None:
    from tunelab.runtime import load_scorer
    from tunelab.runtime.export import split_texts
    from tunelab.runtime.scorers import FallbackScorer, top_two_gap

    run, parity, classifier, _ = biased_onnx_int8
    scorer = load_scorer(run, "onnx-int8", say=lambda line: None)
    assert isinstance(scorer, FallbackScorer) and scorer.backend == "onnx-int8" and scorer.margin == parity["fp32_fallback_margin"]
    texts = split_texts(run, "test", None)
    int8_logits = scorer.fast.logits(texts)
    rescored = []
    exact_logits = scorer.exact.logits
    scorer.exact.logits = lambda asked, *args: rescored.extend(asked) or exact_logits(asked, *args)
    served = scorer.logits(texts)
    assert rescored and sorted(map(str, rescored)) == sorted(str(text) for text, gap in zip(texts, top_two_gap(int8_logits)) if gap <= scorer.margin)
    assert float((served.argmax(axis=1) == classifier.logits(texts).argmax(axis=1)).mean()) == pytest.approx(parity["int8_argmax_agreement"])


def test_an_onnx_int8_export_without_a_margin_scores_plain_int8(run_dir: Path, tmp_path: Path) -> None:
    """Exports made before onnx-int8 had a fallback have no fp32_fallback_margin in parity.json: they keep scoring plain int8."""
    from tunelab.run import Run
    from tunelab.runtime.scorers import FALLBACK_MARGIN, OnnxScorer, open_scorer

    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    parity = json.loads((run / "onnx" / "parity.json").read_text())
    old = {key: value for key, value in parity.items() if not key.startswith(("fp32_fallback", "int8_only"))}
    (run / "onnx" / "parity.json").write_text(json.dumps(old))
    assert type(open_scorer(Run.open(run), "onnx-int8")) is OnnxScorer
    (run / "onnx" / "parity.json").write_text(json.dumps({**old, FALLBACK_MARGIN: 0.5}))  # the same export with a margin: the fallback
    assert open_scorer(Run.open(run), "onnx-int8").margin == 0.5


def test_export_says_the_int8_figure_is_measured_with_the_fallback(biased_onnx_int8) -> None:
    run, parity, _, _ = biased_onnx_int8
    result = CliRunner().invoke(cli, ["export", str(run.path), "--format", "onnx", "--quantize", "int8"])
    assert result.exit_code == 0, result.output
    assert f"chosen on {parity['fp32_fallback_chosen_on']}) scored again in fp32: {parity['fp32_fallback_share']:.2%} of test texts" in result.output
    assert f"int8 alone: argmax agreement {parity['int8_only_argmax_agreement']:.2%}" in result.output
