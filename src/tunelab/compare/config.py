"""compare.yaml: one dataset, shared training defaults, a list of candidates, optional searches.

data: tweets                  # data settings are shared: every candidate gets identical splits
max_train_samples: 4000
seed: 42
out: compares/tweets          # run it again after an interruption: finished candidates are skipped
defaults: {model: minilm, max_length: 64, epochs: 1}
candidates:
  - {name: full, method: full, lr: 2e-4}
  - {name: head, method: head, lr: 2e-3}
  - {name: lora, method: lora, lr: 1e-3}
  - {name: embeddings, method: embeddings-logreg}
  - {name: tfidf, method: tfidf-logreg}
  - name: full-tuned
    method: full
    search: {strategy: grid, lr: [1e-4, 3e-4], epochs: [1, 2]}
"""

from __future__ import annotations

import itertools
import math
import random
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from tunelab.config import DataSettings, Settings, TrainConfig, load_settings
from tunelab.errors import TunelabError, did_you_mean
from tunelab.training.baselines import METHODS as BASELINE_METHODS
from tunelab.training.baselines import BaselineConfig

# Settings that decide the splits: set once at the top, never per candidate, so the test set is one.
DATA_FIELDS = tuple(DataSettings.model_fields)
FINE_TUNING_METHODS = ("full", "head", "lora")
NOT_PER_CANDIDATE = ("out", "overwrite")  # the compare decides where each candidate's run goes


class LogRange(BaseModel):
    """A learning-rate range for random search, sampled log-uniformly."""

    low: float = Field(gt=0)
    high: float = Field(gt=0)


class SearchSpec(Settings):
    """Hyperparameter search for one fine-tuning candidate; the best trial on the eval split wins."""

    strategy: Literal["grid", "random"] = "grid"
    trials: int | None = Field(None, gt=0, description="random: how many trials (default 4); grid: at most this many")
    lr: list[float] | LogRange | None = None
    batch_size: list[int] | None = None
    epochs: list[float] | None = None
    keep_trials: bool = Field(False, description="keep the losing trials' model folders (they are large)")

    def trials_list(self, seed: int) -> list[dict[str, Any]]:
        """Each trial's hyperparameters, in a fixed order (so a rerun finds its finished trials again)."""
        axes = {k: getattr(self, k) for k in ("lr", "batch_size", "epochs") if getattr(self, k) is not None}
        if not axes:
            raise TunelabError("a search: block needs at least one of lr, batch_size, epochs", "e.g. search: {lr: [1e-4, 3e-4]}")
        if self.strategy == "grid":
            if isinstance(self.lr, LogRange):
                raise TunelabError("grid search needs a list of learning rates, not a range", "use strategy: random, or lr: [1e-4, 3e-4]")
            grid = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
            return grid[: self.trials] if self.trials else grid
        rng = random.Random(seed)
        trials: list[dict[str, Any]] = []
        for _ in range(self.trials or 4):
            trial = {}
            for key, values in axes.items():
                if isinstance(values, LogRange):
                    trial[key] = float(f"{math.exp(rng.uniform(math.log(values.low), math.log(values.high))):.3g}")
                else:
                    trial[key] = rng.choice(values)
            if trial not in trials:
                trials.append(trial)
        return trials


class Candidate(BaseModel):
    """One entry of `candidates:`; every other key is a training setting of its method."""

    model_config = {"extra": "allow"}
    name: str
    method: str = "full"
    search: SearchSpec | None = None

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        # The name becomes a folder: keep it to one plain path component.
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise ValueError("use letters, digits, '.', '_' and '-' (it names the candidate's folder)")
        return name

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def is_baseline(self) -> bool:
        return self.method in BASELINE_METHODS


class CompareConfig(DataSettings):
    defaults: dict[str, Any] = Field(default_factory=dict, description="training settings every candidate starts from")
    candidates: list[Candidate] = Field(min_length=1)
    out: str | None = Field(None, description="the compare folder; default compares/<config file name>")
    latency_budget_ms: float | None = Field(None, gt=0, description="recommend the most accurate candidate whose p95 latency fits")
    latency_texts: int = Field(50, gt=0, description="test texts timed one at a time for every candidate")
    throughput_texts: int = Field(256, gt=0, description="test texts scored in batches for examples/s")

    def data_settings(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in DATA_FIELDS}


def load_compare_config(path: str | Path, overrides: dict[str, Any] | None = None) -> CompareConfig:
    config = load_settings(CompareConfig, path, overrides)
    if config.out is None:
        config.out = str(Path("compares") / Path(path).stem)
    check_candidates(config)
    return config


def check_candidates(config: CompareConfig) -> None:
    """Every mistake in the candidate list named before the first minute of training."""
    names = [c.name for c in config.candidates]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise TunelabError(f"candidate name '{duplicates[0]}' is used twice", "give every candidate its own name")
    known = set(TrainConfig.model_fields) | set(BaselineConfig.model_fields)
    for key in config.defaults:
        _check_key(key, "defaults", known)
    for candidate in config.candidates:
        methods = FINE_TUNING_METHODS + BASELINE_METHODS
        if candidate.method not in methods:
            hint = did_you_mean(candidate.method, methods)
            raise TunelabError(f"candidate '{candidate.name}': unknown method '{candidate.method}'", hint or f"methods: {', '.join(methods)}")
        if candidate.search is not None and candidate.is_baseline:
            raise TunelabError(
                f"candidate '{candidate.name}': search tunes lr/batch_size/epochs, which {candidate.method} does not have",
                "remove its search: block (its C is already chosen on the eval split)",
            )
        cls = BaselineConfig if candidate.is_baseline else TrainConfig
        for key in candidate.settings:
            _check_key(key, f"candidate '{candidate.name}'", set(cls.model_fields))
        candidate_config(config, candidate)  # validates the values too


def _check_key(key: str, where: str, known: set[str]) -> None:
    if key in DATA_FIELDS:
        raise TunelabError(
            f"{where} sets '{key}', a data setting",
            "set it once at the top of the compare file: every candidate must train on identical splits",
        )
    if key in NOT_PER_CANDIDATE:
        raise TunelabError(f"{where} sets '{key}'", "the compare places each candidate's run in <out>/candidates/<name>")
    if key not in known:
        hint = did_you_mean(key, known)
        raise TunelabError(f"{where}: unknown setting '{key}'", hint or "see `tunelab train --help` for the settings")


def candidate_config(config: CompareConfig, candidate: Candidate, out: Path | None = None, **trial: Any) -> TrainConfig | BaselineConfig:
    """The full run configuration of one candidate: data settings + defaults + its own + a search trial's."""
    cls = BaselineConfig if candidate.is_baseline else TrainConfig
    # Defaults may hold settings of the other family (e.g. epochs for the baselines): each takes its own.
    values = {k: v for k, v in config.defaults.items() if k in cls.model_fields}
    values.update(candidate.settings)
    values.update(trial)
    values.update(config.data_settings(), method=candidate.method, out=str(out) if out else None)
    try:
        return load_settings(cls, None, values)
    except TunelabError as error:
        raise TunelabError(f"candidate '{candidate.name}': {error.message}", error.hint) from None
