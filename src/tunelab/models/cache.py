"""tunelab's cache: what is built once on this machine and reused by every later command.

    cache_dir()/models/<name>/            a GGUF file converted into a Hugging Face folder (models/gguf.py)
    cache_dir()/indexes/, cache_dir()/readers/   the built-in Factbook index and reader (rag/builtin.py)

The catalogue and the GGUF importer both read these paths; neither imports the other for them.
"""

from __future__ import annotations

import os
from pathlib import Path

RECORD = "tunelab_import.json"  # written last into a converted model's folder: where it came from, the check


def cache_dir() -> Path:
    """The cache's root: $TUNELAB_CACHE or ~/.cache/tunelab."""
    return Path(os.environ.get("TUNELAB_CACHE", Path.home() / ".cache" / "tunelab"))


def models_dir() -> Path:
    return cache_dir() / "models"


def converted_models() -> dict[str, Path]:
    """Every model converted into the cache so far (a folder holding its RECORD), by name."""
    root = models_dir()
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and (p / RECORD).is_file()}
