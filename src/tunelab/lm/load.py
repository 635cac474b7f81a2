"""Where a causal LM lives and how to load it: catalogue name, imported GGUF, model folder,
LoRA adapter folder, or an sft run directory (its model/ holds the adapter or the full model)."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError, did_you_mean
from tunelab.models.cache import converted_models
from tunelab.models.catalogue import CATALOGUE, resolve_model

# context_limit's answer for a config that states no context length (neither max_position_embeddings
# nor n_positions): a prompt plus its new tokens may take up to this many tokens.
FALLBACK_CONTEXT = 2048


@dataclass(frozen=True)
class LMSource:
    """A base model folder, and optionally a LoRA adapter folder on top of it."""

    base: Path
    adapter: Path | None = None

    @property
    def tokenizer_dir(self) -> Path:
        # sft saves the tokenizer (with the chat template it trained on) next to the adapter.
        if self.adapter is not None and (self.adapter / "tokenizer_config.json").is_file():
            return self.adapter
        return self.base

    @property
    def name(self) -> str:
        folder = self.adapter or self.base
        return folder.parent.name if folder.name in ("model", "merged") else folder.name


def resolve_lm(name_or_path: str | os.PathLike) -> LMSource:
    text = str(name_or_path)
    if text in CATALOGUE:
        if CATALOGUE[text].kind != "causal-lm":
            raise TunelabError(f"'{text}' is an encoder, not a causal language model", f"use one of: {', '.join(causal_lm_names())}")
        return LMSource(resolve_model(text))
    imported = converted_models()
    if text in imported:
        return LMSource(imported[text])
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "model").is_dir() and not (path / "config.json").is_file():
            path = path / "model"  # a run directory
        if (path / "adapter_config.json").is_file():
            return LMSource(_adapter_base(path), path.resolve())
        if (path / "config.json").is_file():
            return LMSource(path.resolve())
        raise TunelabError(f"'{text}' holds neither config.json nor adapter_config.json", "pass a model folder, a LoRA adapter folder or an sft run directory")
    names = list(dict.fromkeys(causal_lm_names() + list(imported)))
    hint = did_you_mean(text, names)
    raise TunelabError(
        f"unknown model '{text}'; causal LMs available: {', '.join(names)}", hint or "or pass a model folder, adapter folder or sft run directory"
    )


def causal_lm_names() -> list[str]:
    return [name for name, entry in CATALOGUE.items() if entry.kind == "causal-lm"]


def _adapter_base(adapter: Path) -> Path:
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path") or ""
    if Path(base).is_dir():
        return Path(base)
    try:
        return resolve_lm(base).base
    except TunelabError:
        raise TunelabError(
            f"the adapter in {adapter} was trained on '{base}', which is not available here",
            "restore that base model folder (or edit base_model_name_or_path in adapter_config.json)",
        ) from None


def load_lm(source: LMSource | str | os.PathLike, merge_adapter: bool = False):
    """(model, tokenizer) in float32, eval mode. An adapter is attached with peft (or merged in)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not isinstance(source, LMSource):
        source = resolve_lm(source)
    # A load takes a second or two: the per-tensor "Loading weights" bar is noise here.
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.tokenizer_dir)
        model = AutoModelForCausalLM.from_pretrained(source.base, dtype=torch.float32)
        if source.adapter is not None:
            from peft import PeftModel

            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=FutureWarning)  # peft calls a renamed transformers method
                model = PeftModel.from_pretrained(model, source.adapter)
            if merge_adapter:
                model = model.merge_and_unload()
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def context_limit(model_or_config) -> int:
    config = getattr(model_or_config, "config", model_or_config)
    return int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or FALLBACK_CONTEXT)
