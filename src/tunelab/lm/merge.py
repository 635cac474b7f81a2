"""Folding a LoRA adapter into its base model, checked: a merge that silently changes nothing (or
changes the wrong thing) is a known failure, so the merged folder is reloaded from disk and its
logits compared with the adapter model's (must match) and the base model's (must differ)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from tunelab import atomic
from tunelab.errors import TunelabError
from tunelab.lm.load import LMSource, load_lm, resolve_lm

CHECK_PROMPTS = [
    [{"role": "user", "content": "What colour is the sky?"}],
    [{"role": "user", "content": "Write one sentence about the sea."}],
]
MATCH_TOLERANCE = 1e-3  # float32 sums in a different order; a real mismatch is far larger
DIFFER_THRESHOLD = 1e-6  # an adapter that moved nothing leaves the logits bit-for-bit the same


def merge(run_or_adapter: str | os.PathLike, out: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Write base + adapter as one plain Hugging Face folder (default: <run>/merged); returns it."""
    source = resolve_lm(run_or_adapter)
    if source.adapter is None:
        raise TunelabError(
            f"'{run_or_adapter}' holds a full model, not a LoRA adapter: there is nothing to merge", "use it directly, or pass a run trained with LoRA"
        )
    target = Path(out).expanduser() if out else _default_out(source)
    if target.exists() and not overwrite:
        raise TunelabError(f"'{target}' already exists", "pass --overwrite to replace it, or choose another --out")

    adapter_model, tokenizer = load_lm(source)
    base_model, _ = load_lm(LMSource(source.base), merge_adapter=False)
    inputs = _check_inputs(tokenizer)
    adapter_logits = _logits(adapter_model, inputs)
    base_logits = _logits(base_model, inputs)
    del base_model

    merged = adapter_model.merge_and_unload()
    partial = atomic.partial_path(target)
    if partial.exists():
        shutil.rmtree(partial)
    with atomic.staged_dir(target, overwrite=overwrite, keep_partial=False) as stage:
        merged.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
        reloaded, _ = load_lm(LMSource(stage))
        report = compare(adapter_logits, base_logits, _logits(reloaded, inputs))
        atomic.write_json(stage / "merge_check.json", {"adapter": str(source.adapter), "base": str(source.base), **report})
    return target


def compare(adapter_logits: list, base_logits: list, merged_logits: list) -> dict[str, Any]:
    """Raise unless merged == adapter (within float tolerance) and merged != base."""
    to_adapter = max(float((m - a).abs().max()) for m, a in zip(merged_logits, adapter_logits))
    to_base = max(float((m - b).abs().max()) for m, b in zip(merged_logits, base_logits))
    if to_adapter > MATCH_TOLERANCE:
        raise TunelabError(
            f"the merged model's outputs differ from the adapter model's (max logit difference {to_adapter:.3g})",
            "the merge went wrong; keep using the adapter and report this with the run",
        )
    if to_base <= DIFFER_THRESHOLD:
        raise TunelabError(
            "the merged model's outputs equal the base model's: the adapter changes nothing",
            "the adapter's weights are zero (training did not update it?); check the run's history and eval loss",
        )
    return {"max_abs_logit_diff_vs_adapter": to_adapter, "max_abs_logit_diff_vs_base": to_base, "tolerance": MATCH_TOLERANCE, "passed": True}


def _default_out(source: LMSource) -> Path:
    adapter = source.adapter
    return adapter.parent / "merged" if adapter.name == "model" else adapter.parent / f"{adapter.name}-merged"


def _check_inputs(tokenizer) -> list:
    if tokenizer.chat_template:
        return [tokenizer.apply_chat_template(m, add_generation_prompt=True, return_tensors="pt", return_dict=True) for m in CHECK_PROMPTS]
    return [tokenizer(m[0]["content"], return_tensors="pt") for m in CHECK_PROMPTS]


def _logits(model, inputs: list) -> list:
    import torch

    with torch.no_grad():
        return [model(**batch).logits.float() for batch in inputs]
