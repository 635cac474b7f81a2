"""Supervised fine-tuning of a tiny Llama: LoRA lowers the loss, the run directory is complete,
full fine-tuning and packing work, and merging is checked against the adapter and the base."""

from __future__ import annotations

import json

import pytest
import torch

from tests._lm_fixtures import qa_pairs, write_jsonl, write_tiny_llama
from tunelab.errors import TunelabError
from tunelab.lm.config import SFTConfig
from tunelab.lm.sft import sft


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "qa.jsonl", qa_pairs(repeats=5))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, base, data):
    out = tmp_path_factory.mktemp("runs") / "lora"
    config = SFTConfig(model=str(base), data=str(data), epochs=4, lr=2e-2, batch_size=8, precision="fp32", samples=2, sample_tokens=8, out=str(out))
    return sft(config, progress=False)


def test_lora_lowers_the_eval_loss_and_writes_a_complete_run(lora_run):
    lora_run = lora_run.path
    for name in (
        "config.yaml",
        "history.jsonl",
        "metrics.json",
        "report.html",
        "samples.json",
        "model/adapter_config.json",
        "model/adapter_model.safetensors",
        "model/tokenizer_config.json",
        "plots/loss.png",
    ):
        assert (lora_run / name).is_file(), name
    metrics = json.loads((lora_run / "metrics.json").read_text())
    assert metrics["eval_after"]["loss"] < metrics["eval_before"]["loss"] - 0.2
    assert metrics["eval_after"]["perplexity"] == pytest.approx(torch.tensor(metrics["eval_after"]["loss"]).exp().item(), rel=1e-4)
    train = metrics["train"]
    assert 0 < train["trainable_parameters"] < train["parameters"] / 2
    history = [json.loads(line) for line in (lora_run / "history.jsonl").read_text().splitlines()]
    assert any(h["type"] == "train" for h in history) and sum(h["type"] == "eval" for h in history) >= 2
    samples = json.loads((lora_run / "samples.json").read_text())
    assert len(samples) == 2 and all({"prompt", "reference", "before", "after"} <= set(s) for s in samples)
    html = (lora_run / "report.html").read_text()
    assert "before training" in html and "data:image/png;base64," in html and samples[0]["reference"] in html
    assert not list(lora_run.parent.glob(".*partial"))
    from tunelab.config import load_settings

    again = load_settings(SFTConfig, lora_run / "config.yaml")  # the resolved config repeats the run
    assert again.lr == 2e-2 and again.max_length == metrics["data"]["max_length"] and again.method == "lora"


def test_sft_returns_a_run_that_opens_again(lora_run, tmp_path):
    """sft() returns a Run like train(); Run.open reads the folder back, LoRA adapter and all."""
    from tunelab.run import Run

    assert isinstance(lora_run, Run) and lora_run.path.name == "lora"
    assert lora_run.metrics == json.loads((lora_run.path / "metrics.json").read_text())
    assert lora_run.model_dir == lora_run.path / "model" and (lora_run.model_dir / "adapter_config.json").is_file()
    assert lora_run.task == "sft" and lora_run.config["method"] == "lora"
    assert [h for h in lora_run.history() if h["type"] == "eval"]
    assert not (lora_run.path / "splits").exists() and not (lora_run.path / "labels.json").exists()  # start_staging writes only config.yaml
    again = Run.open(lora_run.path)
    assert again == lora_run and again.task == "sft" and again.metrics["eval_after"] == lora_run.metrics["eval_after"]
    with pytest.raises(TunelabError, match=r"has no labels: it is not a text classifier \(task: sft\)"):
        again.labels  # noqa: B018 - a classifier command given an sft run is told so, not a FileNotFoundError
    # An sft run written before config.yaml named its task: no labels.json tells it apart from a classifier.
    import shutil

    import yaml

    old = tmp_path / "old"
    shutil.copytree(lora_run.path, old)
    config = yaml.safe_load((old / "config.yaml").read_text())
    del config["task"]
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    assert Run.open(old).task == "sft"


def test_adapter_loads_with_plain_transformers(lora_run):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(lora_run.path / "model")  # peft integration: no tunelab code
    assert any("lora" in name for name, _ in model.named_parameters())


def test_full_fine_tuning_with_packing(tmp_path, base, data):
    config = SFTConfig(
        model=str(base), data=str(data), method="full", packing=True, epochs=2, lr=3e-3, batch_size=8, precision="fp32", samples=0, out=str(tmp_path / "full")
    )
    run = sft(config, progress=False).path
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["eval_after"]["loss"] < metrics["eval_before"]["loss"]
    assert metrics["train"]["trainable_parameters"] == metrics["train"]["parameters"]
    assert (run / "model" / "config.json").is_file() and (run / "model" / "model.safetensors").is_file()


def test_packed_batches_score_like_padded_ones(base):
    """Packing must not let examples attend to each other: the loss equals the padded batch's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.lm.sft import make_collator
    from tunelab.lm.tokenize import encode_row

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    model.config.use_cache = False
    rows = [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]} for r in qa_pairs(1)[:4]]
    features = [{k: v for k, v in encode_row(tokenizer, row, 256).items() if k in ("input_ids", "labels")} for row in rows]
    with torch.no_grad():
        losses = []
        for packing in (False, True):
            batch = make_collator(tokenizer, packing)([dict(f) for f in features])
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            shift = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100, reduction="sum")
            losses.append(shift.item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


@pytest.mark.parametrize("packing", [False, True])
def test_answer_only_logits_give_the_models_own_loss_and_gradients(base, packing):
    """The trainer projects only answer positions onto the vocabulary; loss and gradients must not change."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.lm.sft import make_collator
    from tunelab.lm.tokenize import encode_row
    from tunelab.lm.trainer import answer_only_loss, supports_logits_to_keep

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base).train()
    model.config.use_cache = False
    assert supports_logits_to_keep(model)
    rows = [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]} for r in qa_pairs(1)[:5]]
    features = [{k: v for k, v in encode_row(tokenizer, row, 256).items() if k in ("input_ids", "labels")} for row in rows]
    batch = make_collator(tokenizer, packing)([dict(f) for f in features])
    assert (batch["labels"] == -100).float().mean() > 0.3  # prompts are most of the positions: the case that matters

    results = []
    for compute in (lambda: model(**batch).loss, lambda: answer_only_loss(model, batch)[0]):
        torch.manual_seed(0)  # same dropout (none in this config, but be sure)
        model.zero_grad()
        loss = compute()
        loss.backward()
        results.append((loss.item(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()))
    (reference, reference_grad), (ours, our_grad) = results
    assert ours == pytest.approx(reference, rel=1e-5)
    assert torch.allclose(our_grad, reference_grad, rtol=1e-4, atol=1e-7)


def test_lora_with_activation_checkpointing_learns(tmp_path, base, data):
    """Recomputing activations must still send gradients to the adapters (frozen inputs, LoRA layers)."""
    out = tmp_path / "checkpointed"
    config = SFTConfig(
        model=str(base), data=str(data), epochs=2, lr=2e-2, batch_size=8, precision="fp32", samples=0, activation_checkpointing=True, out=str(out)
    )
    metrics = json.loads((sft(config, progress=False).path / "metrics.json").read_text())
    assert metrics["eval_after"]["loss"] < metrics["eval_before"]["loss"] - 0.1


def test_bad_settings_fail_early(tmp_path, base, data):
    with pytest.raises(TunelabError, match="target module 'q_prj'"):
        sft(SFTConfig(model=str(base), data=str(data), target_modules="q_prj", out=str(tmp_path / "r")), progress=False)
    with pytest.raises(TunelabError, match="exceeds the model's context"):
        sft(SFTConfig(model=str(base), data=str(data), max_length=100000, out=str(tmp_path / "r")), progress=False)
    assert not (tmp_path / "r").exists()


# --- merge ---------------------------------------------------------------------------------
def test_merge_equals_the_adapter_and_differs_from_the_base(lora_run, base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.lm.load import load_lm
    from tunelab.lm.merge import merge

    lora_run = lora_run.path

    merged = merge(lora_run)
    assert merged == lora_run / "merged"
    check = json.loads((merged / "merge_check.json").read_text())
    assert check["passed"] and check["max_abs_logit_diff_vs_adapter"] < 1e-3 < check["max_abs_logit_diff_vs_base"]
    # Independently of merge's own check: a plain transformers load of the merged folder.
    tokenizer = AutoTokenizer.from_pretrained(merged)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What colour is snow?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    adapter_model, _ = load_lm(lora_run)
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(merged)(**inputs).logits
        torch.testing.assert_close(plain, adapter_model(**inputs).logits, atol=1e-4, rtol=1e-4)
        assert (plain - AutoModelForCausalLM.from_pretrained(base)(**inputs).logits).abs().max() > 1e-3
    with pytest.raises(TunelabError, match="already exists"):
        merge(lora_run)


def test_merge_refuses_an_adapter_that_changes_nothing(tmp_path, base):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.lm.merge import merge

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(task_type="CAUSAL_LM", r=4, target_modules="all-linear"))
    model.save_pretrained(tmp_path / "untrained")  # LoRA's B starts at zero: a no-op
    AutoTokenizer.from_pretrained(base).save_pretrained(tmp_path / "untrained")
    with pytest.raises(TunelabError, match="adapter changes nothing"):
        merge(tmp_path / "untrained", out=tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
