"""A Run wraps a run directory: the contract between tunelab's stages (see DESIGN.md).

runs/<name>/
  config.yaml  model/  labels.json  data_profile.json  history.jsonl  metrics.json
  report.html  plots/*.png  splits/{train,eval,test}.parquet

An sft run (a causal LM) holds config.yaml, model/ (a LoRA adapter or the full model), history.jsonl,
metrics.json, samples.json, report.html and plots/; it has no labels.json and no splits/.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from tunelab import atomic, textpairs
from tunelab.errors import TunelabError

SPLITS = ("train", "eval", "test")


def out_dir(out: str | os.PathLike | None, name: str, root: str = "runs") -> Path:
    """The output folder: --out as given (~ expanded), else <root>/<name>-<time>, a new folder every time
    (runs/ for runs, compares/ for comparisons)."""
    if out:
        return Path(out).expanduser()
    from datetime import datetime

    return Path(root) / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"


def named_after(model: str, data: str, prefix: str = "") -> str:
    """<prefix><model>-<data> from their file stems (minilm, data/tweets.csv -> minilm-tweets): what the user trained on."""
    stem = lambda text: Path(text).name.split(".")[0] or "data"  # noqa: E731
    return f"{prefix}{stem(model)}-{stem(data)}"


def refuse_existing(out: str | os.PathLike, overwrite: bool) -> None:
    """A finished run is replaced only on request, and before any work is spent on its successor."""
    if not overwrite and Path(out).expanduser().exists():
        raise TunelabError(f"'{out}' already holds a run", "choose another --out, or pass --overwrite to replace it")


@dataclass(frozen=True)
class Run:
    path: Path

    @classmethod
    def open(cls, path: str | os.PathLike) -> Run:
        """Open a finished run directory, or say clearly why it is not one."""
        path = Path(path).expanduser()
        if not path.is_dir():
            partial = path.parent / f".{path.name}.partial"
            if partial.is_dir():
                raise TunelabError(
                    f"run '{path}' did not finish (its staging folder {partial} is still there)",
                    "resume it with `tunelab resume` or train it again with --overwrite",
                )
            raise TunelabError(f"run directory '{path}' does not exist", "pass the folder `tunelab train` wrote (--out)")
        # A fine-tuned run holds a Hugging Face model/ folder (an sft run's may hold a LoRA adapter only);
        # a scikit-learn baseline run, model.joblib.
        model_files = ("model/config.json", "model/adapter_config.json", "model.joblib")
        has_model = any((path / name).is_file() for name in model_files)
        if not has_model or not (path / "config.yaml").is_file():
            raise TunelabError(
                f"'{path}' is not a tunelab run directory (no model/ or config.yaml)",
                "pass the folder `tunelab train` wrote (--out)",
            )
        return cls(path)

    # paths -------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """'transformers' (a Hugging Face model/ folder) or 'sklearn' (a scikit-learn baseline: model.joblib)."""
        return str(self.config.get("kind") or "transformers")

    @property
    def task(self) -> str:
        """'classification' (`tunelab train`), 'multi-label', 'pair-classification', 'extractive-qa' or 'token-classification' (`tunelab train --task ...`),
        or 'sft' (`tunelab sft`)."""
        if "task" in self.config:
            return str(self.config["task"])
        # Classifier runs never wrote their task; an sft run written before SFTConfig.task existed has no labels.json.
        return "classification" if (self.path / "labels.json").is_file() else "sft"

    @property
    def is_pair_classifier(self) -> bool:
        """A classifier of text pairs: its splits hold a `text_pair` column and it scores (text, text_pair) pairs."""
        return self.task == textpairs.TASK

    def require_classification(self, command: str) -> None:
        """Refuse, in one line, a run of another task (multi-label, extractive-qa, token-classification) for a command that handles only
        single-label classifiers (of texts or of text pairs)."""
        if self.task not in ("classification", textpairs.TASK):
            handled_by = {
                "multi-label": "; tunelab predict, eval, serve, export and compare handle this run",
                "token-classification": "; tunelab predict, eval, serve, export and compare handle this run",
            }
            usable = handled_by.get(self.task, "")
            raise TunelabError(
                f"{command} does not handle {self.task} runs yet ('{self.path}' is one)", f"it takes runs of `tunelab train` without --task{usable}"
            )

    @property
    def model_dir(self) -> Path:
        if self.kind != "transformers":
            # Code that loads model/ (predict, eval, serve, export) must not fail on a missing folder deep inside.
            raise TunelabError(
                f"run '{self.path}' is a scikit-learn baseline ({self.config.get('method', self.kind)}) with no Hugging Face model/ folder",
                "its metrics.json, predictions and report.html were written when it was made; rank it with `tunelab compare`",
            )
        return self.path / "model"

    def split_path(self, split: str) -> Path:
        return self.path / "splits" / f"{split}.parquet"

    # contents ----------------------------------------------------------------------
    @cached_property
    def config(self) -> dict[str, Any]:
        return yaml.safe_load((self.path / "config.yaml").read_text(encoding="utf-8")) or {}

    @cached_property
    def labels(self) -> list[str]:
        """Label names in id order."""
        path = self.path / "labels.json"
        if not path.is_file():
            # A classifier command (predict, eval, serve, export) given another kind of run.
            raise TunelabError(
                f"run '{self.path}' has no labels: it is not a text classifier (task: {self.task})", "pass a run written by `tunelab train` (a text classifier)"
            )
        data = json.loads(path.read_text(encoding="utf-8"))
        return [data[str(i)] for i in range(len(data))]

    @property
    def metrics(self) -> dict[str, Any]:
        path = self.path / "metrics.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    @property
    def data_profile(self) -> dict[str, Any]:
        path = self.path / "data_profile.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def history(self) -> list[dict[str, Any]]:
        path = self.path / "history.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def split(self, split: str):
        """One of the splits the run was trained/evaluated on, as a DataFrame with text and label columns."""
        import pandas as pd

        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}")
        path = self.split_path(split)
        if not path.is_file():
            raise TunelabError(f"run '{self.path}' has no saved {split} split", "train it again with this tunelab version")
        return pd.read_parquet(path)


def start_staging(
    staging: Path, config_yaml: str, splits: Mapping[str, Any] | None = None, labels: Sequence[str] | None = None, profile: dict[str, Any] | None = None
) -> Run:
    """A fresh staging folder with what is known before training: config.yaml, splits/ and, for a
    classifier, labels.json and data_profile.json (an sft run has only config.yaml)."""
    if staging.exists():
        shutil.rmtree(staging)  # an earlier attempt that was not resumed
    staging.mkdir(parents=True)
    if splits:
        (staging / "splits").mkdir()
    run = Run(staging)
    atomic.write_text(staging / "config.yaml", config_yaml)
    if labels is not None:
        atomic.write_json(staging / "labels.json", {str(i): label for i, label in enumerate(labels)})
    if profile is not None:
        atomic.write_json(staging / "data_profile.json", profile)
    for name, split in (splits or {}).items():
        split.to_parquet(run.split_path(name), index=False)
    return run
