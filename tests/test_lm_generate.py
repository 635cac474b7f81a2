"""Generation: greedy is reproducible, streaming yields the same text, sampling options, stop
strings, chat history, the GGUF import's errors, and the CLI around all of it."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tests._lm_fixtures import qa_pairs, write_jsonl, write_tiny_llama
from tunelab.errors import TunelabError
from tunelab.lm.generate import Generator

MESSAGES = [{"role": "user", "content": "What colour is sky?"}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def generator(model_dir):
    return Generator(model_dir, precision="fp32")


def test_greedy_is_reproducible_and_streaming_matches(generator):
    first = generator.complete(MESSAGES, __import__("tunelab.lm.generate", fromlist=["Sampling"]).Sampling(max_new_tokens=10))
    assert first.text == generator(MESSAGES, max_new_tokens=10)
    stream = generator.stream(MESSAGES, max_new_tokens=10)
    pieces = list(stream)
    assert len(pieces) >= 2 and "".join(pieces) == first.text
    assert stream.completion.completion_tokens == first.completion_tokens <= 10
    assert first.prompt_tokens == generator.count_tokens(MESSAGES)


def test_same_as_transformers_generate(generator):
    import torch

    inputs = generator.encode(MESSAGES)
    with torch.no_grad():
        ids = generator.model.generate(**inputs, max_new_tokens=10, do_sample=False)
    expected = generator.tokenizer.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert generator(MESSAGES, max_new_tokens=10) == expected


def test_sampling_with_a_seed_is_reproducible_and_differs_from_greedy(generator):
    greedy = generator(MESSAGES, max_new_tokens=12)
    samples = [generator(MESSAGES, max_new_tokens=12, temperature=1.5, top_p=1.0, seed=s) for s in (1, 1, 2, 3)]
    assert samples[0] == samples[1]
    assert len(set(samples[1:]) | {greedy}) > 1


def test_stop_string_and_length_finish(generator):
    full = generator.complete(MESSAGES, __import__("tunelab.lm.generate", fromlist=["Sampling"]).Sampling(max_new_tokens=6))
    assert full.finish_reason in ("length", "stop")
    stop = full.text[2:4]
    cut = generator(MESSAGES, max_new_tokens=6, stop=[stop])
    assert cut == full.text[: full.text.index(stop)]


def test_bad_options_and_too_long_prompts(generator):
    with pytest.raises(TunelabError, match="temperature"):
        generator("hi", temperature=-1)
    with pytest.raises(TunelabError, match="top_p"):
        generator("hi", top_p=0)
    with pytest.raises(TunelabError, match="context"):
        generator("sky " * 300, max_new_tokens=10)


def test_chat_keeps_history(generator):
    session = generator.chat(system="Be brief.")
    first = "".join(session.send("What colour is sky?", max_new_tokens=5))
    "".join(session.send("And snow?", max_new_tokens=5))
    assert [m["role"] for m in session.history] == ["system", "user", "assistant", "user", "assistant"]
    assert session.history[2]["content"] == first
    # The second turn's prompt holds the first exchange.
    assert generator.count_tokens(session.history[:4]) > generator.count_tokens(session.history[:2]) + 2
    session.reset()
    assert [m["role"] for m in session.history] == ["system"]


def test_unknown_model_and_gguf_errors(tmp_path):
    from tunelab.models.gguf import import_gguf

    with pytest.raises(TunelabError, match="unknown model"):
        Generator("no-such-model")
    with pytest.raises(TunelabError, match="does not exist"):
        import_gguf(tmp_path / "missing.gguf", "x")
    (tmp_path / "fake.gguf").write_bytes(b"NOPE" + b"\0" * 100)
    with pytest.raises(TunelabError, match="not a GGUF file"):
        import_gguf(tmp_path / "fake.gguf", "x")
    (tmp_path / "real.gguf").write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(TunelabError, match="not a plain folder name"):
        import_gguf(tmp_path / "real.gguf", "../escape")


# --- the CLI -------------------------------------------------------------------------------
def test_cli_sft_generate_merge(tmp_path, model_dir, monkeypatch):
    from tunelab.cli import app

    runner = CliRunner()
    data = write_jsonl(tmp_path / "qa.jsonl", qa_pairs(repeats=2))
    run = tmp_path / "run"
    result = runner.invoke(
        app,
        ["sft", "--model", str(model_dir), "--data", str(data), "--epochs", "1", "--lr", "0.02", "--precision", "fp32", "--samples", "1", "--out", str(run)],
    )
    assert result.exit_code == 0, result.output
    assert "eval loss" in result.output and (run / "model" / "adapter_config.json").is_file()

    result = runner.invoke(app, ["generate", str(run), "What colour is sky?", "--max-new-tokens", "5", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    assert Generator(run, precision="fp32")("What colour is sky?", max_new_tokens=5) in result.output

    result = runner.invoke(app, ["lm", "merge", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "merged" / "model.safetensors").is_file()

    # The same question before and after /reset: two model turns (the commands never reach the model),
    # and both answers are the fresh-conversation answer, because /reset forgot the first exchange.
    reply = Generator(run, precision="fp32")("What colour is sky?", max_new_tokens=4)
    assert reply.strip(), "the tiny model answered nothing, so the chat transcript cannot be checked"
    chat = "What colour is sky?\n/reset\nWhat colour is sky?\n/exit\n"
    result = runner.invoke(app, ["chat", str(run), "--max-new-tokens", "4", "--precision", "fp32"], input=chat)
    assert result.exit_code == 0, result.output
    assert result.output.count("model>") == 2, result.output
    assert result.output.count(f"model> {reply}\n") == 2, (reply, result.output)


def test_cli_errors_are_one_line(tmp_path, model_dir):
    from tunelab.cli import app

    runner = CliRunner()
    for args, needle in [
        (["sft", "--model", str(model_dir)], "no training data given"),
        (["sft", "--model", str(model_dir), "--data", str(tmp_path / "x.jsonl")], "does not exist"),
        (["lm", "merge", str(model_dir)], "nothing to merge"),
        (["generate", "nope", "hi"], "unknown model"),
        (["models", "import-gguf", str(tmp_path / "none.gguf"), "--name", "n"], "does not exist"),
    ]:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert needle in result.output and "Traceback" not in result.output
