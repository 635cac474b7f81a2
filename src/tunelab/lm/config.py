"""Settings of `tunelab sft`, in the same pydantic style as the classifier's TrainConfig."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunelab.config import Settings


class SFTConfig(Settings):
    """Supervised fine-tuning of a causal LM on instruction data (`tunelab sft`)."""

    # Fixed; written to config.yaml so that the file is itself a valid config and says what the run is (Run.task).
    task: Literal["sft"] = Field("sft", description="what the run learns (fixed)")
    model: str = Field("smollm2", description="catalogue name, imported GGUF name, or a local Hugging Face folder")
    data: str = Field(..., description="JSONL/JSON/CSV/TSV/Parquet with {prompt,response}, {messages} or {text} rows")
    format: Literal["auto", "prompt-response", "messages", "text"] = Field("auto", description="row format; auto detects it from the first row")
    encoding: str = "utf-8"
    eval_data: str | None = Field(None, description="evaluation file (else split off from data)")
    eval_fraction: float = Field(0.1, gt=0, lt=0.5)
    max_train_samples: int | None = Field(None, gt=0)

    method: Literal["lora", "full"] = Field("lora", description="LoRA adapters through peft, or every weight")
    lora_r: int = Field(8, gt=0, description="LoRA rank")
    lora_alpha: int = Field(16, gt=0)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str = Field("all-linear", description="module names to adapt, or 'all-linear'")

    epochs: float = Field(3.0, gt=0)
    lr: float | None = Field(None, gt=0, description="default: 2e-4 for LoRA, 2e-5 for full fine-tuning")
    batch_size: int = Field(8, gt=0)
    eval_batch_size: int = Field(8, gt=0)
    grad_accum: int = Field(1, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup: float = Field(0.1, ge=0, lt=1, description="fraction of the training steps spent warming up")
    max_length: int | None = Field(None, gt=0, description="token limit per example; default: the longest example, capped at 1024 and the model's limit")
    packing: bool = Field(False, description="concatenate each batch's examples into one padding-free row (attention stays within each example)")
    activation_checkpointing: bool = Field(
        False, description="recompute layer activations in the backward pass: far less memory for long prompts, about a third more time"
    )
    answer_only_logits: bool = Field(True, description="project hidden states onto the vocabulary only at answer positions (same loss, less memory and time)")
    group_by_length: bool = Field(True, description="batch examples of similar length together (less padding); unused with packing")
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    threads: int | None = Field(None, gt=0)
    seed: int = 42
    logging_steps: int | None = Field(None, gt=0, description="default: about 20 logs per epoch")
    report_to: list[str] = Field(default_factory=list)

    samples: int = Field(3, ge=0, description="eval prompts shown in the report, generated before and after training")
    sample_tokens: int = Field(64, gt=0, description="max new tokens of each sample generation")

    out: str | None = Field(None, description="run directory; default runs/sft-<model>-<data>-<time>")
    overwrite: bool = False

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (2e-4 if self.method == "lora" else 2e-5)
