"""Data-parallel training in several processes through torchrun (gloo on CPU, NCCL on GPUs).

The parent writes the resolved settings to a YAML file and starts `python -m torch.distributed.run
-m tunelab train FILE` with N processes; each one runs the same recipe, and only the main process
writes the run directory.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from tunelab.config import TrainConfig, to_yaml
from tunelab.errors import TunelabError
from tunelab.run import Run
from tunelab.training.trainer_setup import resolve_out_dir


def in_distributed_launch() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_multiprocess(config: TrainConfig, nproc: int, resume: bool = False) -> Run:
    """Run `tunelab train` in `nproc` local processes and return the finished run."""
    if nproc < 2:
        raise TunelabError(f"--nproc {nproc} needs to be at least 2 for multi-process training", "drop --nproc to train in one process")
    # Every process must agree on the run directory, so the default name is fixed here, once.
    config = config.model_copy(update={"out": str(resolve_out_dir(config))})
    with tempfile.TemporaryDirectory() as tmp:
        settings = Path(tmp) / "train.yaml"
        # Only the settings given: a setting written out would count as given and keep the recipe (auto) from filling it.
        settings.write_text(to_yaml(config, only_given=True), encoding="utf-8")
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            "--master_addr=127.0.0.1",
            f"--master_port={free_port()}",
            "-m",
            "tunelab",
            "train",
            str(settings),
        ]
        if resume:
            command.append("--resume")
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or nproc) // nproc)))
        finished = subprocess.run(command, env=env)
    if finished.returncode != 0:
        raise TunelabError(
            f"multi-process training failed (exit code {finished.returncode}); its output is above",
            "fix the error shown, then rerun (add --resume to continue from the last checkpoint)",
        )
    return Run.open(config.out)
