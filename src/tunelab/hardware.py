"""The fast defaults: bf16 where the hardware has it, all cores, and a record of the machine."""

from __future__ import annotations

import os
import platform
import resource
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def bf16_is_fast() -> bool:
    """bf16 pays off on GPUs that support it and on CPUs with AVX-512 BF16 or AMX; elsewhere it is emulated."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_bf16_is_fast()


def cpu_bf16_is_fast() -> bool:
    """The CPU has bf16 arithmetic (AVX-512 BF16 or AMX), whatever GPU the machine also has."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def resolve_precision(requested: str) -> str:
    if requested == "auto":
        return "bf16" if bf16_is_fast() else "fp32"
    return requested


def thread_count(threads: int | None = None) -> int:
    """Every core we are allowed to use (the affinity mask, not the machine's total), unless told otherwise.

    $TUNELAB_THREADS overrides the default: tiny models on a busy machine run many times faster on
    one thread than on several that wait for each other.
    """
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return threads or int(os.environ.get("TUNELAB_THREADS") or 0) or available


def set_threads(threads: int | None) -> int:
    """PyTorch's intra-op threads: thread_count's answer."""
    count = thread_count(threads)
    torch.set_num_threads(count)
    return count


def peak_memory_mb() -> float:
    """Peak resident memory of this process (CPU), or peak allocated memory on the GPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def disk_mb(*paths: str | os.PathLike) -> float:
    """What files and folders take on disk, in MiB (a missing one counts 0): a model, an index, a run's deployable part."""
    total = 0
    for path in map(Path, paths):
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            total += sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
    return total / 2**20


# The instruction sets that decide CPU speed here: bf16 autocast is fast only with AVX-512 BF16 or AMX.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def environment(precision: str) -> dict[str, Any]:
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_flags": [flag for flag in SPEED_FLAGS if flag in cpu_flags()],
        "cores": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "precision": precision,
    }
