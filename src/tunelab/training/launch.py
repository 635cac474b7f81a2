"""Data-parallel training in several processes through torchrun (gloo on CPU, NCCL on GPUs), for every task.

The parent writes the settings given (and the task) to a YAML file and starts `python -m torch.distributed.run
-m tunelab train FILE` with N processes; `tunelab train` reads the task from the file, so each process runs
that task's recipe (training/tasks.py) on its shard of the batches, and only the main process writes the
run directory.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from tunelab import atomic
from tunelab.config import TrainerSettings, to_yaml
from tunelab.errors import TunelabError
from tunelab.run import Run
from tunelab.training.resume import recorded_processes, resume_point
from tunelab.training.trainer_setup import resolve_out_dir


def in_distributed_launch() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def processes_for(config: TrainerSettings, nproc: int | None, resume: bool) -> int:
    """--nproc as given; without it one process, or for a resume as many as the killed run was trained by."""
    if nproc is not None:
        return nproc
    if resume and not in_distributed_launch():
        return recorded_processes(atomic.partial_path(resolve_out_dir(config))) or 1
    return 1


def train_multiprocess(config: TrainerSettings, nproc: int, resume: bool = False) -> Run:
    """Run `tunelab train` (any task) in `nproc` local processes and return the finished run."""
    if nproc < 2:
        raise TunelabError(f"--nproc {nproc} needs to be at least 2 for multi-process training", "drop --nproc to train in one process")
    # Every process must agree on the run directory, so the default name is fixed here, once.
    config = config.model_copy(update={"out": str(resolve_out_dir(config))})
    if resume:  # nothing to resume, or another process count, is said here in one line, not by every process through torchrun
        resume_point(atomic.partial_path(resolve_out_dir(config)), config.epochs, nproc)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Path(tmp) / "train.yaml"
        # Only the settings given: a setting written out would count as given and keep the recipe (auto) from filling it.
        # The task is written too: it is fixed, never "given", and it is what tells the processes which recipe to run.
        task = {"task": config.task} if "task" in type(config).model_fields else {}
        settings.write_text(to_yaml(config, only_given=True, **task), encoding="utf-8")
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
