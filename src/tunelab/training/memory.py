"""The training plan's memory and disk estimates, and the batch size they allow.

Activation memory follows Korthikanti et al. (2022), "Reducing Activation Recomputation in Large
Transformer Models": per layer and token about 34·h + 5·a·s bytes at 16 bits, i.e. 17·h + 2.5·a·s values.
It is an estimate for planning, not a guarantee; the measured peak is in metrics.json.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30


@dataclass(frozen=True)
class MemoryPlan:
    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def describe(self) -> str:
        parts = ", ".join(f"{name} {_fmt(getattr(self, name))}" for name in ("weights", "gradients", "optimizer", "activations"))
        return f"≈ {_fmt(self.total)} ({parts})"


def _fmt(size: int) -> str:
    return f"{size / GIB:.2f} GiB" if size >= GIB / 4 else f"{size / 2**20:.0f} MiB"


def estimate(model_config, parameters: int, trainable: int, batch_size: int, length: int, precision: str) -> MemoryPlan:
    hidden = getattr(model_config, "hidden_size", 768)
    layers = getattr(model_config, "num_hidden_layers", 12)
    heads = getattr(model_config, "num_attention_heads", 12)
    activation_bytes = 2 if precision == "bf16" else 4
    per_token_layer = 17 * hidden + 2.5 * heads * length
    return MemoryPlan(
        weights=parameters * 4,  # fp32 master weights (bf16 is autocast, not stored)
        gradients=trainable * 4,
        optimizer=trainable * 8,  # AdamW: two moments
        activations=int(layers * batch_size * length * per_token_layer * activation_bytes),
    )


def available_memory() -> int:
    """Memory the process can still use: the GPU's free memory, or the OS's MemAvailable."""
    import torch

    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return free
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * GIB


def largest_batch(model_config, parameters: int, trainable: int, length: int, precision: str, budget: int, cap: int = 128) -> int:
    """The largest power-of-two batch whose estimate fits in `budget` bytes (at least 1)."""
    batch = 1
    while batch * 2 <= cap and estimate(model_config, parameters, trainable, batch * 2, length, precision).total <= budget:
        batch *= 2
    return batch


def check_disk(folder: Path, parameters: int, trainable: int, keep_checkpoints: int) -> None:
    """Refuse to start when the checkpoints we will write cannot fit on the disk."""
    from tunelab.errors import TunelabError

    checkpoint = parameters * 4 + trainable * 8  # weights + optimizer state
    # +1: the Trainer keeps the best checkpoint besides the last K, and the final model/ copy.
    needed = checkpoint * (keep_checkpoints + 1) + parameters * 4
    folder = folder.resolve()
    probe = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise TunelabError(
            f"not enough free disk in {probe}: training needs about {_fmt(needed)} for checkpoints, {_fmt(free)} is free",
            "free some space, choose another --out, or lower --keep-checkpoints",
        )
