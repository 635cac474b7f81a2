"""Settings for every command, as pydantic models: a YAML file, then command-line overrides.

The resolved configuration (every default written out) is saved as the run's config.yaml.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from tunelab.errors import TunelabError, did_you_mean


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# The field delimiters of csv/tsv files that tunelab reads and detects.
DELIMITERS = (",", ";", "\t", "|")


def delimiter_value(value: Any) -> Any:
    """A delimiter as given, checked; "tab" and a typed backslash-t (awkward to type as a tab) mean a tab."""
    if value is None:
        return None
    value = "\t" if value in ("tab", "\\t") else value
    if value not in DELIMITERS:
        raise ValueError("use one of , ; | or tab")
    return value


# None: detected from the file (tunelab.data.load.detect_delimiter).
Delimiter = Annotated[str | None, BeforeValidator(delimiter_value)]
DELIMITER_HELP = "field delimiter of csv/tsv files: , ; | or tab; default: detected from the file (tab for .tsv)"


class FileSettings(Settings):
    """How a data file is read: every setting that names a file to read has these."""

    encoding: str = Field("utf-8", description="text encoding of csv/tsv/json files")
    delimiter: Delimiter = Field(None, description=DELIMITER_HELP)


class SplitSettings(FileSettings):
    """A data file and how it is split into train/eval/test: every task's that trains on a file."""

    data: str = Field(..., description="a csv/tsv/jsonl/json/parquet file")
    eval_data: str | None = Field(None, description="user-supplied evaluation split (else split from data)")
    test_data: str | None = Field(None, description="user-supplied test split (else split from data)")
    eval_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0, lt=0.5)
    seed: int = 42


def only_pairs(value: Any) -> Any:
    if value is not None:
        raise ValueError("only pair classification reads a second text: set task: pair-classification, or leave it out")
    return value


class LabelledColumns(FileSettings):
    """Where a labelled file keeps its texts and labels, and what becomes of a row missing one: training's
    data (DataSettings) and `tunelab update`'s new data are both read by data/load.load_labelled."""

    text_col: str = "text"
    label_col: str = "label"
    # Only a pair classifier (PairClassificationConfig) reads a second text; every other task leaves it unset.
    text_pair_col: Annotated[None, BeforeValidator(only_pairs)] = Field(
        None, description="pair classification only (task: pair-classification): the column holding each row's second text"
    )
    strict: bool = Field(False, description="refuse empty texts / missing labels instead of dropping them")


class DataSettings(SplitSettings, LabelledColumns):
    """Which labelled data, and how it is split: shared by training, baselines and comparisons."""

    data: str = Field("bbc-news", description="built-in dataset name or a csv/tsv/jsonl/json/parquet file or save_to_disk folder")
    max_train_samples: int | None = Field(None, gt=0)


class TrainerSettings(SplitSettings):
    """Fine-tuning an encoder with the Hugging Face Trainer: the settings every such task shares
    (training/trainer_setup.py reads them; a task's config adds its own)."""

    model: str = Field("minilm", description="catalogue name (`tunelab models`) or a local Hugging Face folder")
    epochs: float = Field(3.0, gt=0)
    lr: PositiveFloat | Literal["auto"] = Field(
        "auto", description="peak learning rate; auto: 5e-5 for a model 768 wide (BERT-base), scaled by 768 / its width"
    )
    batch_size: PositiveInt | Literal["auto"] = Field(16, description="per-process batch; 'auto': the largest that fits in memory")
    eval_batch_size: int = Field(64, gt=0)
    grad_accum: int = Field(1, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    # No warmup by default: over three seeds on `tweets` (benchmarks/ablate_recipe.py) 10% warmup cost
    # 1.4 accuracy points at fine-tuning's short budgets; raise it for large learning rates.
    warmup: float = Field(0.0, ge=0, lt=1, description="fraction of the training steps spent warming up the learning rate")
    max_length: int | None = Field(None, gt=0, description="token limit; default: the data's 95th percentile, capped by the model")
    # Checked against the model when it is loaded (training/trainer_setup.load_pretrained), where the message can name its layer count.
    layers: int | None = Field(
        None,
        description="keep only the pretrained model's first N transformer layers (the top ones dropped before fine-tuning: "
        "a smaller, faster model, usually a little less accurate); default: all",
    )
    group_by_length: bool = Field(True, description="batch examples of similar length together (less padding)")
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    threads: int | None = Field(None, gt=0, description="CPU threads; default: all cores")
    early_stopping: int | None = Field(None, gt=0, description="stop after this many evaluations without improvement")
    logging_steps: int | None = Field(None, gt=0, description="default: about 20 logs per epoch")
    keep_checkpoints: int = Field(1, ge=1)
    report_to: list[str] = Field(default_factory=list, description="Trainer integrations, e.g. tensorboard, mlflow")
    deepspeed: str | None = Field(None, description="DeepSpeed JSON config, passed to the Trainer")
    fsdp: str | None = Field(None, description="FSDP options, e.g. 'full_shard auto_wrap', passed to the Trainer")

    out: str | None = Field(None, description="run directory; default runs/<model>-<data>-<time>")
    overwrite: bool = False


# The recipe `tunelab train` uses below SMALL_DATA_ROWS training rows (recipe: auto): settings that
# replace the defaults, the candidate benchmarks/small_data.py chose on dev rows (mean dev accuracy over
# 4 datasets x 3 seeds at 200 training rows: mean pooling with the head started from a linear probe 0.872,
# mean pooling from a random head 0.836, today's [CLS] head 0.829; benchmarks/results/small_data.json).
# Measured at 200 rows only; the line is where `data inspect`
# already warns that a TF-IDF baseline can win, and it keeps the quickstart settings (1,780 bbc-news
# training rows and more) on the default recipe.
SMALL_DATA_ROWS = 1000
SMALL_DATA_RECIPE: dict[str, Any] = {"pooling": "mean", "head_init": "linear-probe"}


class TrainConfig(DataSettings, TrainerSettings):
    """Fine-tuning a sequence classifier (`tunelab train`): the data and Trainer settings, plus:"""

    class_weights: Literal["none", "balanced", "sqrt-balanced"] | dict[str, PositiveFloat] = Field(
        "none",
        description="balanced: each class's training loss weighted by rows / (classes x its rows), so a rare class is not outvoted; "
        "sqrt-balanced: the square root of those weights, a milder push; or {label: weight} for every label",
    )
    method: Literal["full", "head", "lora"] = Field("full", description="what is trained: all weights, the head only, or LoRA adapters")
    length_percentile: float = Field(95.0, gt=0, le=100)
    length_window: PositiveInt = Field(4, description="group_by_length sorts this many batches at a time: more saves padding, fewer keeps batches mixed")
    pooling: Literal["cls", "mean"] = Field(
        "cls",
        description="what the classification head reads: Hugging Face's head (an encoder's [CLS] pooler, a causal LM's last token) or the mean of the token states",
    )
    head_init: Literal["random", "linear-probe"] = Field(
        "random",
        description="how the classification head starts: random, or linear-probe — a logistic regression on the frozen encoder's "
        "mean-pooled train rows (C chosen on the eval split), then the whole model fine-tuned (LP-FT); needs pooling 'mean'",
    )
    layer_lr_decay: float = Field(
        1.0, gt=0, le=1, description="layer-wise learning-rate decay: each layer below the head trains at this times the rate of the one above"
    )
    recipe: Literal["auto", "default", "small-data"] = Field(
        "auto",
        description=f"auto: small-data (mean pooling, head from a linear probe) below {SMALL_DATA_ROWS:,} training rows, else default; "
        "a setting given explicitly always wins over the recipe's",
    )
    baseline: bool = Field(True, description="the evaluation also fits TF-IDF + logistic regression on the train split and reports whether the model beats it")

    @field_validator("head_init")
    @classmethod
    def _probe_needs_mean_pooling(cls, head_init: str, info: ValidationInfo) -> str:
        # The probe is fitted on the masked mean the mean-pooled head reads; the [CLS] heads read a pooler
        # (and, for some architectures, a dense layer) that a frozen-feature probe would have to fit through.
        if head_init == "linear-probe" and info.data.get("pooling") != "mean":
            raise ValueError("head_init 'linear-probe' needs pooling 'mean'")
        return head_init


def resolve_recipe(config: TrainConfig, train_rows: int) -> TrainConfig:
    """The config with its recipe named (default or small-data) and that recipe's settings applied.

    auto picks small-data below SMALL_DATA_ROWS training rows. The recipe fills only settings the user
    left at their defaults: anything given in the YAML or on the command line is kept.
    """
    name = config.recipe
    if name == "auto":
        name = "small-data" if train_rows < SMALL_DATA_ROWS and SMALL_DATA_RECIPE else "default"
    if name == "small-data" and not SMALL_DATA_RECIPE:
        raise TunelabError(
            "recipe 'small-data' has no settings: no recipe has beaten the default on small data yet (benchmarks/small_data.py)",
            "use recipe auto or default, or set pooling / layer_lr_decay / epochs yourself",
        )
    settings = SMALL_DATA_RECIPE if name == "small-data" else {}
    chosen = {key: value for key, value in settings.items() if key not in config.model_fields_set}
    if chosen.get("pooling", config.pooling) != "mean":
        # The user kept the [CLS] head: the recipe's linear probe is fitted on the mean-pooled head's input only.
        chosen.pop("head_init", None)
    return config.model_copy(update={**chosen, "recipe": name})


def describe_recipe(config: TrainConfig) -> str:
    """The recipe's name and the settings that make it, e.g. "small-data (mean pooling, 6 epochs, ...)"."""
    parts = [f"{config.pooling} pooling", f"{config.epochs:g} epochs"]
    if config.head_init == "linear-probe":
        parts.append("head started from a linear probe")
    if config.early_stopping:
        parts.append(f"early stopping after {config.early_stopping} evaluations without gain")
    if config.layer_lr_decay != 1.0:
        parts.append(f"layer-wise lr decay {config.layer_lr_decay:g}")
    return f"{config.recipe} ({', '.join(parts)})"


class ExtractiveQAConfig(TrainerSettings):
    """Fine-tuning an extractive question-answering reader (`tunelab train --task extractive-qa`): the Trainer settings, plus:"""

    # Fixed; written to config.yaml so that it is itself a valid config and says what the run is.
    task: Literal["extractive-qa"] = Field("extractive-qa", description="what the run learns (fixed)")
    kind: Literal["transformers"] = Field("transformers", description="what model/ holds (fixed)")
    data: str = Field(
        ...,
        description="jsonl/json/csv/parquet file with question, context and answer columns (and optionally answer_start, "
        "a character offset); an empty answer means the context does not hold it",
    )
    question_col: str = "question"
    context_col: str = "context"
    answer_col: str = "answer"
    eval_fraction: float = Field(0.1, gt=0, lt=0.5, description="share of the questions held out for evaluation")
    test_fraction: float = Field(0.1, gt=0, lt=0.5, description="share of the questions held out for the test")
    epochs: float = Field(2.0, gt=0)
    batch_size: PositiveInt = Field(16, description="windows per training step")
    max_length: int | None = Field(
        None, gt=0, description="window length in tokens; default: the data's 95th percentile of question + context, capped by the model"
    )
    doc_stride: int = Field(64, ge=0, description="tokens shared by consecutive windows of a context longer than max_length")
    max_answer_tokens: int = Field(30, gt=0, description="the longest answer span the reader considers")


# pos_weight sqrt's ceiling: a label on 1 train row of 164 would otherwise weigh its positive rows 12.8 times.
POS_WEIGHT_MAX = 10.0


class MultiLabelConfig(TrainConfig):
    """Fine-tuning a multi-label classifier (`tunelab train --task multi-label`): a sigmoid per label,
    each label's decision threshold chosen on the eval split. The classifier's settings, plus:"""

    task: Literal["multi-label"] = Field("multi-label", description="what the run learns (fixed)")
    label_col: str = Field("labels", description="column holding each row's labels: a list, or a string split on label_sep")
    label_sep: str | None = Field(None, min_length=1, description="the character between labels in a string label column, e.g. '|'")
    class_weights: Literal["none"] = Field("none", description="unused: multi-label runs weight each label's positives with pos_weight")
    pos_weight: Literal["none", "sqrt"] = Field(
        "none",
        description="the weight of each label's positive rows in the binary cross-entropy: none (1), or sqrt — the square root of "
        f"negatives / positives over the train split's rows, at most {POS_WEIGHT_MAX:g} (a label no train row has: 1), so a rare label gets more gradient",
    )
    # Both heads' losses follow problem_type (a sigmoid per label). LP-FT (pooling mean, head_init linear-probe,
    # a one-vs-rest probe) is an option only: unlike the single-label small-data recipe it has not been
    # measured against the [CLS] head on multi-label data (benchmarks/multilabel.py --variant mean+lpft).
    recipe: Literal["default"] = Field(
        "default", description="multi-label training has one recipe (the small-data recipe is for single-label runs); pooling and head_init are options"
    )


class PairClassificationConfig(TrainConfig):
    """Fine-tuning a text-pair classifier (`tunelab train --task pair-classification`): NLI, paraphrase,
    question–passage relevance. The classifier's settings, with each row's second text fed to the
    tokenizer as its text pair (tunelab.textpairs)."""

    task: Literal["pair-classification"] = Field("pair-classification", description="what the run learns (fixed)")
    text_pair_col: str = Field("text_pair", description="column holding each row's second text (the hypothesis, the passage)")


class TokenClassificationConfig(TrainConfig):
    """Fine-tuning a token classifier, e.g. for named entities (`tunelab train --task token-classification`):
    one IOB2 tag per word, the loss on each word's first word piece. The classifier's settings, plus:"""

    task: Literal["token-classification"] = Field("token-classification", description="what the run learns (fixed)")
    data: str = Field(
        "factbook-entities",
        description="built-in set (factbook-entities), a CoNLL/IOB file (.conll .iob .iob2 .bio), or jsonl/json/parquet "
        "with tokens and tags lists, or with text and character spans",
    )
    label_col: str = Field("tags", description="column holding each row's tags, one per token")
    tokens_col: str = Field("tokens", description="column holding each row's tokens (a list)")
    spans_col: str = Field("spans", description="column holding each text's entity spans: [{start, end, label}], end exclusive")
    strict_iob: bool = Field(False, description="refuse an I-TYPE that continues no TYPE entity, instead of reading it as B-TYPE")
    epochs: float = Field(4.0, gt=0)
    length_percentile: float = Field(100.0, gt=0, le=100, description="max length covers this percentile of sentences: words past it are not tagged")
    class_weights: Literal["none", "balanced", "sqrt-balanced"] | dict[str, PositiveFloat] = Field(
        "none",
        description="balanced: each tag's training loss weighted by words / (tags x its words), counted over the train words' tags, "
        "so a rare entity type is not outvoted by O; sqrt-balanced: the square root of those weights, a milder push; or {tag: weight} for every IOB2 tag",
    )
    method: Literal["full"] = Field("full", description="token classification trains all weights")
    pooling: Literal["cls"] = Field("cls", description="unused: each token has its own head output")
    recipe: Literal["default"] = Field("default", description="token classification has one recipe")
    baseline: bool = Field(True, description="the evaluation also scores a gazetteer of the train split's entity strings")


S = TypeVar("S", bound=Settings)


def load_settings(cls: type[S], path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> S:
    """Settings from a YAML file (optional) with overrides (flags given on the command line) on top."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise TunelabError(f"config file '{path}' does not exist", "check the path")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise TunelabError(f"config file '{path}' is not valid YAML{where}", "fix the YAML syntax") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise TunelabError(f"config file '{path}' must hold a mapping of settings", "write `key: value` lines")
        values.update(loaded or {})
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = [k for k in values if k not in cls.model_fields]
    if unknown:
        hint = did_you_mean(unknown[0], cls.model_fields)
        raise TunelabError(
            f"unknown setting '{unknown[0]}'" + (f" in {path}" if path else ""),
            hint or f"known settings: {', '.join(cls.model_fields)}",
        )
    try:
        return cls(**values)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")  # a validator's own ValueError
        raise TunelabError(f"setting '{where}': {message} (got {first.get('input')!r})", "fix that value") from None


def to_yaml(settings: Settings, only_given: bool = False, **resolved: Any) -> str:
    """Every setting written out (only_given: those set explicitly), with values resolved at run time (e.g. max_length) filled in."""
    data = settings.model_dump(exclude_unset=only_given)
    data.update(resolved)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
