"""`tunelab export` on a run of very short texts (max length 8), and an export that fails: one line, exit 2."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import FILLER, NEGATIVE, POSITIVE
from tunelab.cli import app as cli


def short_reviews(rows: int = 80, seed: int = 0) -> list[tuple[str, str]]:
    """Texts like 'lovely friendly staff 12': two or three words and a number, labelled good or bad."""
    rng = random.Random(seed)
    out = []
    for i in range(rows):
        label = ("good", "bad")[i % 2]
        words = [rng.choice(POSITIVE if label == "good" else NEGATIVE), *rng.sample(FILLER, rng.randint(1, 2)), str(rng.randint(1, 99))]
        out.append((" ".join(words), label))
    return out


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, tiny_bert) -> Path:
    from tunelab.config import TrainConfig
    from tunelab.training.classify import train

    folder = tmp_path_factory.mktemp("short")
    data = folder / "short.csv"
    data.write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in short_reviews()), encoding="utf-8")
    run = train(TrainConfig(model=str(tiny_bert), data=str(data), epochs=1, batch_size=16, lr=1e-3, precision="fp32", out=str(folder / "run")), progress=False)
    # The point of the fixture: the trainer chose a max length shorter than the exporter's sample texts.
    assert run.config["max_length"] == 8
    return run.path


def test_export_of_a_max_length_8_run_matches_torch(short_run: Path) -> None:
    from tunelab.prediction import load_classifier
    from tunelab.runtime import load_scorer

    result = CliRunner().invoke(cli, ["export", str(short_run), "--format", "onnx", "--quantize", "int8"])
    assert result.exit_code == 0, result.output
    parity = json.loads((short_run / "onnx" / "parity.json").read_text())
    assert parity["fp32_max_abs_diff"] < 1e-4

    torch_model, onnx_model = load_classifier(short_run), load_scorer(short_run, "onnx")
    texts = ["lovely", "bad food 12", "the film was very good and the place was quite nice really", "x " * 50]  # short and truncated
    assert np.abs(onnx_model.logits(texts) - torch_model.logits(texts)).max() < 1e-4


def test_a_failed_export_is_one_line_and_writes_nothing(short_run: Path, tmp_path, monkeypatch) -> None:
    import shutil

    import torch

    run = Path(shutil.copytree(short_run, tmp_path / "run", ignore=shutil.ignore_patterns("onnx")))

    def broken_exporter(*args, **kwargs):
        raise RuntimeError("Failed to export the model with torch.export.\n- Modify the model code\n\n## Exception summary\nsomething deep")

    # Any exception the exporter raises (here injected; in the wild, an architecture torch.export cannot trace).
    monkeypatch.setattr(torch.onnx, "export", broken_exporter)
    result = CliRunner().invoke(cli, ["export", str(run), "--format", "onnx"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert "ONNX export failed" in lines[0] and "Failed to export the model with torch.export" in lines[0]
    assert "--backend torch" in lines[0]  # the hint: what to do instead
    assert not (run / "onnx").exists() and not list(run.glob(".onnx*"))
