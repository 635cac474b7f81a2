"""`tunelab export`: ONNX fp32 and int8 in the run, parity on the test split, serving them; CLI errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests._serve_fixtures import running
from tunelab.cli import app as cli
from tunelab.errors import TunelabError
from tunelab.serve.app import create_app
from tunelab.serve.settings import ServeSettings

TEXTS = ["good great wonderful film", "awful bad terrible service", "the table and the chair", "x"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained_run) -> Path:
    """A copy of the tiny run, exported once through the CLI (fp32 + int8)."""
    run = Path(shutil.copytree(trained_run, tmp_path_factory.mktemp("onnx") / "run"))
    result = CliRunner().invoke(cli, ["export", str(run), "--format", "onnx", "--quantize", "int8"])
    assert result.exit_code == 0, result.output
    pytest.cli_output = result.output  # type: ignore[attr-defined]
    return run


def test_export_writes_models_and_parity_figures(exported: Path) -> None:
    from tunelab.run import Run

    onnx_dir = exported / "onnx"
    assert (onnx_dir / "model.onnx").stat().st_size > 10_000
    assert (onnx_dir / "model.int8.onnx").stat().st_size > 10_000
    assert not list(exported.parent.glob(".onnx*")) and not (exported / ".onnx.partial").exists()
    parity = json.loads((onnx_dir / "parity.json").read_text())
    assert parity["rows"] == len(Run.open(exported).split("test"))
    assert parity["fp32_max_abs_diff"] < 1e-4
    assert parity["fp32_argmax_agreement"] == 1.0
    assert parity["int8_argmax_agreement"] >= 0.995
    # The CLI prints the figures it measured.
    output = pytest.cli_output  # type: ignore[attr-defined]
    assert f"{parity['fp32_max_abs_diff']:.2e}" in output
    assert f"{parity['int8_argmax_agreement']:.2%}" in output
    assert "--backend onnx-int8" in output


def test_onnx_handles_any_batch_and_length(exported: Path) -> None:
    from tunelab.prediction import load_classifier
    from tunelab.runtime import load_scorer

    reference = load_classifier(exported)
    scorer = load_scorer(exported, "onnx")
    for texts in (["a"], TEXTS, ["good " * 200] * 3):  # 200 words: truncated to the run's max_length
        assert np.abs(scorer.logits(texts) - reference.logits(texts)).max() < 1e-4


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_service_with_onnx_backends_agrees_with_torch(exported: Path, backend: str) -> None:
    from tunelab.prediction import predict

    expected = predict(exported, TEXTS)
    with running(create_app(exported, ServeSettings(backend=backend), api_key="")) as client:
        body = client.post("/v1/predict", json={"texts": TEXTS}).json()
        assert client.get("/v1/model").json()["backend"] == backend
    assert [p["label"] for p in body["predictions"]] == [e["label"] for e in expected]
    tolerance = 1e-5 if backend == "onnx" else 0.05
    for got, want in zip(body["predictions"], expected):
        for label, p in want["probabilities"].items():
            assert got["probabilities"][label] == pytest.approx(p, abs=tolerance)


def test_int8_gate_refuses_and_writes_nothing(tmp_path, trained_run, exported, monkeypatch) -> None:
    from tunelab.runtime import export as onnx
    from tunelab.runtime.export import export_onnx

    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    # The exporter itself was exercised by the fixture; reuse its graph to keep this test fast.
    monkeypatch.setattr(onnx, "_export", lambda classifier, path: shutil.copy(exported / "onnx" / "model.onnx", path))
    # No model can beat an agreement above 100%: the gate must refuse, and leave no onnx/ behind.
    with pytest.raises(TunelabError, match="agrees with PyTorch"):
        export_onnx(run, "int8", min_agreement=1.01, max_rows=20)
    assert not (run / "onnx").exists() and not list(tmp_path.glob("run/.onnx*"))


def test_cli_errors_are_one_line(tmp_path, trained_run) -> None:
    runner = CliRunner()
    missing = runner.invoke(cli, ["serve", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    bad_backend = runner.invoke(cli, ["serve", str(trained_run), "--backend", "onnx-int4"])
    assert bad_backend.exit_code == 2
    bad_setting = runner.invoke(cli, ["serve", str(trained_run), "--max-batch", "0"])
    assert bad_setting.exit_code == 2 and "max_batch" in bad_setting.output
    bad_quant = runner.invoke(cli, ["export", str(trained_run), "--quantize", "int4"])
    assert bad_quant.exit_code == 2


def test_causal_lm_is_handed_to_the_openai_server(tmp_path, monkeypatch) -> None:
    from tunelab.serve import app as serve_app
    from tunelab.serve import openai

    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    assert serve_app.is_causal_lm(llama) and serve_app.is_causal_lm("smollm2")
    assert not serve_app.is_causal_lm(tmp_path)

    folder = tmp_path / "lm"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    calls = []
    monkeypatch.setattr(openai, "serve_lm", lambda model, **options: calls.append((model, options)))
    serve_app.serve(folder, ServeSettings(port=8123))
    assert calls == [(str(folder), {"host": "127.0.0.1", "port": 8123, "threads": None, "log_level": "info"})]
