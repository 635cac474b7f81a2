"""The OpenVINO classifier backends: `openvino` (the run's fp32 ONNX graph compiled by OpenVINO), `openvino-int8`
(NNCF's static int8 of it, calibrated on train texts) and `openvino-bf16` (the fp32 graph computed in bf16, only on a CPU
with AVX-512 BF16 or AMX), each behind onnx-int8's parity gate; auto times them; without the `openvino` extra (or, for
bf16, such a CPU), naming one is one line and auto says why it passed them over."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.test_cli_errors import assert_user_error
from tests.test_runtime import assert_margin_chosen_on_eval, raise_first_label_bias
from tunelab.cli import app as cli
from tunelab.errors import TunelabError
from tunelab.hardware import cpu_bf16_is_fast
from tunelab.runtime.scorers import BF16_REFUSAL

pytest.importorskip("onnxruntime")

TEXTS = ["good great wonderful film", "awful bad terrible service", "the table and the chair", "x"]
NOT_INSTALLED = "openvino is not installed (pip install 'tunelab[openvino]')"


def needs_openvino() -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, trained_run) -> Path:
    """A copy of the tiny run whose every gated backend was exported and measured once, as `auto`'s first use does."""
    from tunelab.run import Run
    from tunelab.runtime.choice import exported

    needs_openvino()
    run = Path(shutil.copytree(trained_run, tmp_path_factory.mktemp("openvino") / "run", ignore=shutil.ignore_patterns("onnx")))
    exported(Run.open(run), "auto", say=lambda line: None)
    return run


def without_openvino(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name in ("openvino", "nncf") else real(name, *rest))


def test_openvino_backends_give_torch_labels_or_are_refused_with_the_reason(run_dir: Path) -> None:
    from tunelab.run import Run
    from tunelab.runtime import load_scorer
    from tunelab.runtime.choice import refusals

    run = Run.open(run_dir)
    parity = json.loads((run_dir / "onnx" / "parity.json").read_text())
    refused = refusals(parity)
    assert parity["openvino"]["argmax_agreement"] == 1.0 and parity["openvino"]["rows"] == len(run.split("test"))
    assert "openvino" not in refused  # OpenVINO's fp32 arithmetic is PyTorch's
    int8 = parity["openvino-int8"]
    assert int8["calibration_split"] == "train" and int8["calibration_texts"] == min(128, len(run.split("train")))
    assert (run_dir / "onnx" / "openvino.int8.xml").is_file() and (run_dir / "onnx" / "openvino.int8.bin").is_file()
    assert not list((run_dir / "onnx").glob(".partial.*"))

    texts = run.split("test")["text"].astype(str).tolist() + TEXTS
    reference = load_scorer(run_dir, "torch").logits(texts, 64)
    for backend in ("openvino", "openvino-int8"):
        if backend in refused:  # the gate's reason, recorded and given when the backend is named
            assert "OpenVINO int8 model agrees with PyTorch on" in refused[backend] and "(needs 99.5%)" in refused[backend]
            with pytest.raises(TunelabError, match=f"backend {backend} is refused for this run: {refused[backend][:40]}"):
                load_scorer(run_dir, backend)
            continue
        scorer = load_scorer(run_dir, backend, say=lambda line: None)
        assert scorer.backend == backend and type(scorer.session).__name__ == "OpenVinoSession"
        for batch_size in (None, 3):  # the service's slices, and small batches
            logits = scorer.logits(texts, batch_size)
            assert (logits.argmax(axis=1) == reference.argmax(axis=1)).all(), (backend, batch_size)
        if backend == "openvino":
            assert np.abs(logits - reference).max() < 1e-4


def test_a_failing_openvino_gate_is_refused_with_the_reason(run_dir: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    lines = assert_refused_below_the_gate(run, "openvino-int8", "the OpenVINO int8 model")
    assert "not used: openvino-int8: the OpenVINO int8 model agrees with PyTorch on 98.00%" in lines[-1]


def assert_refused_below_the_gate(run: Path, backend: str, model: str) -> list[str]:
    """With `backend`'s recorded agreement set to 98%, naming it is refused saying why, and auto passes it over,
    recording the reason; auto's lines are returned."""
    from tunelab.runtime import load_scorer

    (run / "onnx" / "backend_choice.json").unlink(missing_ok=True)
    parity_path = run / "onnx" / "parity.json"
    parity = json.loads(parity_path.read_text())
    parity[backend]["argmax_agreement"] = 0.98
    parity_path.write_text(json.dumps(parity))
    with pytest.raises(TunelabError, match=rf"backend {backend} is refused for this run: {model} agrees with PyTorch on 98\.00%"):
        load_scorer(run, backend)
    lines: list[str] = []
    assert load_scorer(run, "auto", say=lines.append).backend != backend
    record = json.loads((run / "onnx" / "backend_choice.json").read_text())
    assert backend not in record["texts_per_s"] and "98.00%" in record["refused"][backend]
    return lines


def test_int8_is_calibrated_on_train_texts_never_test_ones(run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from tunelab.run import Run
    from tunelab.runtime import openvino_export
    from tunelab.textpairs import frame_inputs

    run = Run.open(shutil.copytree(run_dir, tmp_path / "run"))
    calibrated: list = []
    real = openvino_export.calibration_feeds
    monkeypatch.setattr(openvino_export, "calibration_feeds", lambda tokenizer, inputs, *rest: calibrated.extend(inputs) or real(tokenizer, inputs, *rest))
    parity = openvino_export.add_openvino(run, ["openvino-int8"], step=lambda line: None)
    assert parity["openvino-int8"]["calibration_split"] == "train"
    assert calibrated == frame_inputs(run.split("train"))
    assert not set(calibrated) & set(frame_inputs(run.split("test")))


def test_auto_times_and_records_the_openvino_backends(run_dir: Path) -> None:
    from importlib.metadata import version

    from tunelab.backends import BACKENDS
    from tunelab.runtime import load_scorer

    (run_dir / "onnx" / "backend_choice.json").unlink(missing_ok=True)
    lines: list[str] = []
    scorer = load_scorer(run_dir, "auto", say=lines.append)
    record = json.loads((run_dir / "onnx" / "backend_choice.json").read_text())
    assert scorer.backend == record["chosen"]
    # Every backend was either timed or refused with its reason; fp32 OpenVINO always passes on this run.
    assert sorted([*record["texts_per_s"], *record["refused"]]) == sorted(BACKENDS)
    assert "openvino" in record["texts_per_s"] and record["texts_per_s"]["openvino"] > 0
    assert record["openvino_version"] == version("openvino")
    assert "openvino " in lines[-1]
    # openvino-bf16 is considered where the CPU computes bf16 (timed, or refused by its gate), and passed over, saying why, elsewhere.
    if cpu_bf16_is_fast():  # measured by its gate on first use, and timed if it passed
        figures = json.loads((run_dir / "onnx" / "parity.json").read_text())["openvino-bf16"]
        assert ("openvino-bf16" in record["texts_per_s"]) == (figures["argmax_agreement"] >= 0.995)
    else:
        assert record["refused"]["openvino-bf16"] == BF16_REFUSAL


def test_without_the_extra_naming_openvino_is_one_line_and_auto_says_why(run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from tunelab.runtime import load_scorer

    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    (run / "onnx" / "backend_choice.json").unlink(missing_ok=True)
    without_openvino(monkeypatch)
    runner = CliRunner()
    for command in (["predict", str(run), "some text"], ["eval", str(run)], ["serve", str(run)]):
        for backend in ("openvino", "openvino-int8"):
            result = runner.invoke(cli, [*command, "--backend", backend])
            lines = result.output.strip().splitlines()
            assert result.exit_code == 2 and len(lines) == 1, (command, result.output)
            assert f"backend {backend} needs openvino, which is not installed" in lines[0] and "pip install 'tunelab[openvino]'" in lines[0]
    said: list[str] = []
    assert load_scorer(run, "auto", say=said.append).backend in ("torch", "onnx", "onnx-int8")
    record = json.loads((run / "onnx" / "backend_choice.json").read_text())
    assert record["refused"] == {"openvino": NOT_INSTALLED, "openvino-int8": NOT_INSTALLED, "openvino-bf16": NOT_INSTALLED}
    assert f"not used: openvino: {NOT_INSTALLED}; openvino-int8: {NOT_INSTALLED}; openvino-bf16: {NOT_INSTALLED}" in said[-1]


# -- tunelab export --format openvino ---------------------------------------------------------------


def test_export_openvino_writes_a_folder_that_loads_and_agrees_with_torch(trained_run: Path, tmp_path: Path) -> None:
    from tunelab.runtime import load_scorer
    from tunelab.runtime.scorers import OpenVinoSession

    needs_openvino()
    run = Path(shutil.copytree(trained_run, tmp_path / "run", ignore=shutil.ignore_patterns("onnx")))
    result = CliRunner().invoke(cli, ["export", str(run), "--format", "openvino"])
    assert result.exit_code == 0, result.output
    assert "openvino  model.onnx, compiled by OpenVINO" in result.output and "argmax agreement 100.00% (gate 99.5%)" in result.output
    assert f"serve it: tunelab serve {run} --backend openvino" in result.output
    parity = json.loads((run / "onnx" / "parity.json").read_text())
    assert parity["openvino"]["argmax_agreement"] == 1.0 and parity["openvino"]["rows"] == parity["rows"]
    assert "openvino-int8" not in parity and not list(run.glob("onnx/openvino.int8.*"))
    # The folder loads in OpenVINO as written, and the backend uses it without exporting again.
    texts = TEXTS * 3
    reference = load_scorer(run, "torch").logits(texts, 4)
    lines: list[str] = []
    scorer = load_scorer(run, "openvino", say=lines.append)
    assert isinstance(scorer.session, OpenVinoSession) and not lines
    assert np.abs(scorer.logits(texts, 4) - reference).max() < 1e-4

    result = CliRunner().invoke(cli, ["export", str(run), "--format", "openvino", "--quantize", "int8", "--json"])
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 0:  # NNCF's int8 passed its gate on this CPU: its IR is written beside the fp32 graph
        parity = json.loads(result.stdout)
        assert parity["openvino-int8"]["argmax_agreement"] >= 0.995 and parity["openvino-int8"]["calibration_split"] == "train"
        assert parity["openvino-int8"]["file"] == str(run / "onnx" / "openvino.int8.xml") and (run / "onnx" / "openvino.int8.bin").is_file()
        assert load_scorer(run, "openvino-int8", say=lines.append).backend == "openvino-int8" and not lines
    else:  # refused: one line, and the fp32 export above is left as it was
        assert_user_error(result, "backend openvino-int8 is refused for this run: the OpenVINO int8 model agrees with PyTorch on", "nothing was written")
        assert json.loads((run / "onnx" / "parity.json").read_text()) == parity


def test_export_openvino_that_fails_its_gate_writes_nothing(trained_run: Path, tmp_path: Path, monkeypatch) -> None:
    from tunelab.runtime import export

    needs_openvino()
    run = Path(shutil.copytree(trained_run, tmp_path / "run", ignore=shutil.ignore_patterns("onnx")))
    monkeypatch.setattr(export, "INT8_MIN_AGREEMENT", 1.01)  # no backend can agree on more than every text
    result = CliRunner().invoke(cli, ["export", str(run), "--format", "openvino"])
    assert_user_error(result, "backend openvino is refused for this run: the OpenVINO model agrees with PyTorch on 100.00%", "(needs 101.0%)")
    assert not (run / "onnx").exists() and not list(run.glob(".*partial*"))


def test_export_bad_input_is_one_line(trained_run: Path, tmp_path: Path, monkeypatch) -> None:
    run = Path(shutil.copytree(trained_run, tmp_path / "run", ignore=shutil.ignore_patterns("onnx")))
    runner = CliRunner()
    assert_user_error(runner.invoke(cli, ["export", str(run), "--format", "openvin"]), "unknown export format 'openvin'", "did you mean 'openvino'?")
    assert_user_error(runner.invoke(cli, ["export", str(run), "--format", "openvino", "--quantize", "int4"]), "unknown quantization 'int4'")
    without_openvino(monkeypatch)
    assert_user_error(runner.invoke(cli, ["export", str(run), "--format", "openvino"]), "backend openvino needs openvino, which is not installed")
    assert not (run / "onnx").exists()


class FixedLogits:
    """A scorer that gives each text the logits it was built with."""

    def __init__(self, logits: dict[str, list[float]]):
        self.table, self.labels, self.backend, self.asked = logits, ["a", "b", "c"], "openvino-int8", []

    def logits(self, texts, batch_size=None, progress=None) -> np.ndarray:
        self.asked.append(list(texts))
        return np.array([self.table[text] for text in texts], dtype=np.float32)


def test_the_fallback_scores_again_exactly_the_texts_within_the_margin() -> None:
    from tunelab.runtime.scorers import FallbackScorer

    int8 = FixedLogits({"sure": [3.0, 0.0, 0.0], "tie": [1.0, 0.9375, 0.0], "edge": [0.0, 2.0, 1.875], "far": [0.0, 0.0, 0.5]})
    fp32 = FixedLogits({"tie": [0.9, 1.0, 0.0], "edge": [0.0, 1.8, 2.0]})
    logits = FallbackScorer(int8, fp32, margin=0.125).logits(["sure", "tie", "far", "edge"])
    assert fp32.asked == [["tie", "edge"]]  # gaps 0.0625 and 0.125: at or below the margin; 3.0 and 0.5 are not
    assert logits.argmax(axis=1).tolist() == [0, 1, 2, 2]


def test_int8_near_ties_are_scored_in_fp32_below_the_margin_chosen_on_eval(run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """An int8 model that labels some eval texts otherwise than PyTorch: its fallback margin is the largest top-two gap
    among them, parity.json's agreement is the one the served scorer gives, and the scorer re-scores in fp32."""
    import openvino

    from tunelab.models.classifier import Classifier
    from tunelab.run import Run
    from tunelab.runtime import load_scorer, openvino_export
    from tunelab.runtime.export import split_texts
    from tunelab.runtime.scorers import FallbackScorer, top_two_gap

    run = Run.open(shutil.copytree(run_dir, tmp_path / "run"))
    classifier = Classifier.load(run.model_dir, run.config.get("max_length"))
    eval_texts, test_texts = split_texts(run, "eval", None), split_texts(run, "test", None)
    eval_reference = classifier.logits(eval_texts)
    shift = float(np.quantile(top_two_gap(eval_reference), 0.5))  # moves the first label's logit past half of the eval texts' gaps

    def biased_int8(fp32: Path, xml: Path, feeds) -> None:
        """Stands in for NNCF: the fp32 graph with the first label's bias raised, so near ties flip as quantization error flips them."""
        raise_first_label_bias(fp32, tmp_path / "biased.onnx", shift, len(classifier.labels))
        openvino.save_model(openvino.Core().read_model(str(tmp_path / "biased.onnx")), str(xml))

    monkeypatch.setattr(openvino_export, "quantize_openvino", biased_int8)
    parity = openvino_export.add_openvino(run, ["openvino-int8"], step=lambda line: None)["openvino-int8"]

    assert_margin_chosen_on_eval(parity, eval_reference, shift)

    scorer = load_scorer(run, "openvino-int8", say=lambda line: None)
    assert isinstance(scorer, FallbackScorer) and scorer.backend == "openvino-int8"
    served = scorer.logits(test_texts).argmax(axis=1)
    assert parity["argmax_agreement"] == pytest.approx(float((served == classifier.logits(test_texts).argmax(axis=1)).mean()))
    assert parity["argmax_agreement"] >= parity["int8_only_argmax_agreement"]


def test_on_an_amx_cpu_openvino_pads_each_slice_to_a_multiple_of_16_and_scores_the_same(run_dir: Path, monkeypatch) -> None:
    """With AMX tiles (amx_tile) an OpenVINO session asks run_sorted for token lengths in multiples of 16 (fewer shapes for
    OpenVINO to build kernels for, whole tiles); without, slices are padded to their longest text, as before. Padding is
    masked: the logits are the same."""
    from tunelab import hardware
    from tunelab.run import Run
    from tunelab.runtime import scorers

    run = Run.open(run_dir)
    path = scorers.onnx_path(run, "openvino")
    sessions = {}
    for flags in ({"avx2", "avx512f", "amx_tile"}, {"avx2"}):
        monkeypatch.setattr(hardware, "cpu_flags", lambda flags=flags: frozenset(flags))
        sessions["amx" if "amx_tile" in flags else "avx2"] = scorers.OpenVinoSession(path)
    assert sessions["amx"].pad_to_multiple_of == 16 and sessions["avx2"].pad_to_multiple_of is None

    template = scorers.open_scorer(run, "openvino")
    texts = [*TEXTS, "a somewhat longer text about a film that was good and a service that was not"]
    lengths: dict[str, list[int]] = {}
    logits = {}
    for name, session in sessions.items():
        real_run = session.run
        seen = lengths.setdefault(name, [])
        session.run = lambda outputs, feed, real_run=real_run, seen=seen: seen.append(feed["input_ids"].shape[1]) or real_run(outputs, feed)
        scorer = scorers.OnnxScorer(session, template.tokenizer, template.labels, template.max_length, "openvino")
        logits[name] = scorer.logits(texts, batch_size=2)
    assert lengths["amx"] and all(length % 16 == 0 for length in lengths["amx"])
    assert any(length % 16 for length in lengths["avx2"])  # the short slices keep their own length
    np.testing.assert_allclose(logits["amx"], logits["avx2"], atol=1e-3)


# -- openvino-bf16 ----------------------------------------------------------------------------------


def test_openvino_bf16_asks_openvino_for_bf16_and_the_others_for_f32(run_dir: Path, monkeypatch) -> None:
    """The bf16 backend compiles the fp32 model.onnx with INFERENCE_PRECISION_HINT bf16; openvino and openvino-int8's
    fp32 fallback stay f32. What OpenVINO compiled is read back from the compiled model, on a CPU that computes bf16."""
    import openvino

    from tunelab.run import Run
    from tunelab.runtime import scorers

    monkeypatch.setattr(scorers, "slow_bf16", lambda backend: False)  # the session itself, on any CPU
    run = Run.open(run_dir)
    asked: list[tuple[str, str]] = []
    real = openvino.Core.compile_model
    monkeypatch.setattr(
        openvino.Core,
        "compile_model",
        lambda core, path, device, config: asked.append((Path(path).name, config["INFERENCE_PRECISION_HINT"])) or real(core, path, device, config),
    )
    bf16 = scorers.open_scorer(run, "openvino-bf16")
    assert asked == [("model.onnx", "bf16")] and bf16.backend == "openvino-bf16" and type(bf16).__name__ == "OnnxScorer"  # no fp32 re-scoring
    if cpu_bf16_is_fast():
        assert bf16.session.compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.bf16
    asked.clear()
    fp32 = scorers.open_scorer(run, "openvino")
    assert fp32.session.compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32
    scorers.open_session(run_dir / "onnx" / "model.onnx", "openvino-int8")
    assert asked == [("model.onnx", "f32"), ("model.onnx", "f32")]


def test_openvino_bf16_is_gated_like_the_others(run_dir: Path, tmp_path: Path) -> None:
    """Its agreement with PyTorch on the test split is measured on first use into parity.json; below 99.5% it is refused, saying why."""
    from tunelab.run import Run
    from tunelab.runtime import load_scorer

    if not cpu_bf16_is_fast():
        pytest.skip("openvino-bf16 is offered only on a CPU with AVX-512 BF16 or AMX")
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    parity_path = run / "onnx" / "parity.json"
    figures = json.loads(parity_path.read_text())["openvino-bf16"]
    assert figures["rows"] == len(Run.open(run).split("test")) and 0.0 < figures["max_abs_diff"] < 0.5
    texts = Run.open(run).split("test")["text"].astype(str).tolist()
    if figures["argmax_agreement"] >= 0.995:
        served = load_scorer(run, "openvino-bf16", say=lambda line: None).logits(texts).argmax(axis=1)
        reference = load_scorer(run, "torch").logits(texts).argmax(axis=1)
        assert figures["argmax_agreement"] == pytest.approx(float((served == reference).mean()))
    assert_refused_below_the_gate(run, "openvino-bf16", "the OpenVINO bf16 model")


def test_without_fast_bf16_naming_openvino_bf16_is_one_line_and_auto_says_why(run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from tunelab import hardware
    from tunelab.runtime import load_scorer

    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    (run / "onnx" / "backend_choice.json").unlink(missing_ok=True)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_vnni"}))  # an AVX-512 CPU without bf16
    runner = CliRunner()
    for command in (["predict", str(run), "some text"], ["eval", str(run)], ["serve", str(run)]):
        result = runner.invoke(cli, [*command, "--backend", "openvino-bf16"])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1, (command, result.output)
        assert "backend openvino-bf16 is not offered on this CPU: this CPU has no bf16 arithmetic" in lines[0] and "--backend openvino-int8" in lines[0]
    said: list[str] = []
    assert load_scorer(run, "auto", say=said.append).backend != "openvino-bf16"
    record = json.loads((run / "onnx" / "backend_choice.json").read_text())
    assert record["refused"]["openvino-bf16"] == BF16_REFUSAL and "openvino-bf16" not in record["texts_per_s"]
    assert f"openvino-bf16: {BF16_REFUSAL}" in said[-1]
