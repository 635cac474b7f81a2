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

task: pair-classification, multi-label or token-classification compares candidates of that task (fine-tuning
methods only: the scikit-learn baselines read one text and one label); the task's own data settings
(text_pair_col; label_sep; tokens_col, spans_col, strict_iob) are set at the top with the others.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from tunelab.backends import CHOICES, CHOICES_HELP
from tunelab.config import (
    DataSettings,
    MultiLabelConfig,
    PairClassificationConfig,
    Settings,
    TokenClassificationConfig,
    TrainConfig,
    load_settings,
)
from tunelab.errors import TunelabError, did_you_mean
from tunelab.training.baselines import METHODS as BASELINE_METHODS
from tunelab.training.baselines import BaselineConfig
from tunelab.training.tasks import SETTINGS

# The settings of each task a compare trains: every `tunelab train` task but extractive QA; `task: classification` is `tunelab train` without --task.
TASK_SETTINGS: dict[str, type[TrainConfig]] = {
    task: SETTINGS[task] for task in ("classification", "pair-classification", "multi-label", "token-classification")
}
# Each task's own settings that decide what its splits hold, beside DataSettings'.
TASK_DATA_FIELDS = {
    "pair-classification": ("text_pair_col",),
    "multi-label": ("label_sep",),
    "token-classification": ("tokens_col", "spans_col", "strict_iob"),
}
TASK_ONLY_FIELDS = frozenset(field for fields in TASK_DATA_FIELDS.values() for field in fields)  # DataSettings declares text_pair_col too
# Settings that decide the splits: set once at the top, never per candidate, so the test set is one.
DATA_FIELDS = tuple(dict.fromkeys((*DataSettings.model_fields, "task", *sorted(TASK_ONLY_FIELDS))))
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


def _task_field(cls: type[TrainConfig], name: str) -> Any:
    """A task's data setting at the top of a compare file: unset means the task's default; its own class validates it."""
    return Field(None, description=f"{cls.model_fields['task'].default}: {cls.model_fields[name].description}")


class CompareConfig(DataSettings):
    task: Literal["classification", "pair-classification", "multi-label", "token-classification"] = Field(
        "classification", description="what every candidate learns; pair-classification, multi-label and token-classification train as `tunelab train --task`"
    )
    text_pair_col: str | None = _task_field(PairClassificationConfig, "text_pair_col")
    label_sep: str | None = _task_field(MultiLabelConfig, "label_sep")
    tokens_col: str | None = _task_field(TokenClassificationConfig, "tokens_col")
    spans_col: str | None = _task_field(TokenClassificationConfig, "spans_col")
    strict_iob: bool | None = _task_field(TokenClassificationConfig, "strict_iob")
    defaults: dict[str, Any] = Field(default_factory=dict, description="training settings every candidate starts from")
    candidates: list[Candidate] = Field(min_length=1)
    out: str | None = Field(None, description="the compare folder; default compares/<config file name>")
    latency_budget_ms: float | None = Field(None, gt=0, description="recommend the most accurate candidate whose p95 latency fits")
    latency_texts: int = Field(50, gt=0, description="test texts timed one at a time for every candidate")
    throughput_texts: int = Field(256, gt=0, description="test texts scored in batches for examples/s")
    backend: Literal[CHOICES] = Field("torch", description=f"what the fine-tuned candidates' latency and examples/s are measured on: {CHOICES_HELP}")

    @property
    def settings_class(self) -> type[TrainConfig]:
        return TASK_SETTINGS[self.task]

    def data_settings(self) -> dict[str, Any]:
        """The data settings every candidate gets. Only those given: the rest are the task's defaults (a token
        compare's label column is `tags`, a multi-label one's `labels`), the same for every candidate."""
        own = TASK_DATA_FIELDS.get(self.task, ())
        given = {k for k in self.model_fields_set if (k in DataSettings.model_fields and k not in TASK_ONLY_FIELDS) or k in own}
        foreign = sorted(k for k in self.model_fields_set if k in DATA_FIELDS and k not in given and k != "task" and getattr(self, k) is not None)
        if foreign:
            raise TunelabError(f"'{foreign[0]}' is a data setting of another task than {self.task}", "drop it, or set task: to the task it belongs to")
        return {k: getattr(self, k) for k in given}


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
    known = set(config.settings_class.model_fields) | set(BaselineConfig.model_fields)
    for key in config.defaults:
        _check_key(key, "defaults", known)
    # The scikit-learn baselines read one text and one label: candidates of the classification task only.
    methods = FINE_TUNING_METHODS + (BASELINE_METHODS if config.task == "classification" else ())
    for candidate in config.candidates:
        if candidate.is_baseline and config.task != "classification":
            raise TunelabError(
                f"candidate '{candidate.name}': {candidate.method} is a single-label baseline, not a {config.task} model",
                f"remove it (each {config.task} run's evaluation already scores its own baseline); methods: {', '.join(methods)}",
            )
        if candidate.method not in methods:
            hint = did_you_mean(candidate.method, methods)
            raise TunelabError(f"candidate '{candidate.name}': unknown method '{candidate.method}'", hint or f"methods: {', '.join(methods)}")
        if candidate.search is not None and candidate.is_baseline:
            raise TunelabError(
                f"candidate '{candidate.name}': search tunes lr/batch_size/epochs, which {candidate.method} does not have",
                "remove its search: block (its C is already chosen on the eval split)",
            )
        cls = BaselineConfig if candidate.is_baseline else config.settings_class
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
    """The full run configuration of one candidate: data settings + defaults + its own + a search trial's.
    A fine-tuning candidate's is its task's settings class (TrainConfig or a subclass)."""
    cls = BaselineConfig if candidate.is_baseline else config.settings_class
    # Defaults may hold settings of the other family (e.g. epochs for the baselines): each takes its own.
    values = {k: v for k, v in config.defaults.items() if k in cls.model_fields}
    values.update(candidate.settings)
    values.update(trial)
    values.update(config.data_settings(), method=candidate.method, out=str(out) if out else None)
    try:
        return load_settings(cls, None, values)
    except TunelabError as error:
        raise TunelabError(f"candidate '{candidate.name}': {error.message}", error.hint) from None
