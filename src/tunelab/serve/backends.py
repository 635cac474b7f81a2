"""Scorers: one small interface (texts -> logits) over PyTorch and ONNX Runtime.

The service, the export parity check and the load benchmark all score through this interface, so
switching the backend changes nothing else.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tunelab.errors import TunelabError
from tunelab.run import Run

BACKENDS: tuple[str, ...] = ("torch", "onnx", "onnx-int8")

# Where `tunelab export` writes inside a run directory (see serve/onnx.py).
ONNX_DIR = "onnx"
ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}

# Texts per ONNX Runtime call. A micro-batch of tweets padded to its longest member computes mostly
# padding; sorted slices of 8 pad only to a near neighbour. Measured (minilm int8, 32 tweets, 2 cores):
# one call 112 ms, slices of 16 84 ms, of 8 80 ms, of 4 85 ms (per-call overhead takes over).
ONNX_SLICE = 8


class Scorer(Protocol):
    labels: list[str]
    backend: str

    def logits(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass
class TorchScorer:
    """The run's Hugging Face model through tunelab.models.classifier (length-sorted batches)."""

    classifier: Any  # tunelab.models.classifier.Classifier
    backend: str = "torch"

    @property
    def labels(self) -> list[str]:
        return self.classifier.labels

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        return self.classifier.logits(texts, batch_size=max(1, len(texts)))


@dataclass
class OnnxScorer:
    """An exported ONNX model in an onnxruntime InferenceSession, fed by the run's own tokenizer."""

    session: Any  # onnxruntime.InferenceSession
    tokenizer: Any
    labels: list[str]
    max_length: int
    backend: str = "onnx"
    input_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.input_names = [i.name for i in self.session.get_inputs()]

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """Logits in the order of `texts`, run as length-sorted slices so short texts carry little padding."""
        texts = list(texts)
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        if not texts:
            return out
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        order = np.argsort([len(ids) for ids in encoded["input_ids"]], kind="stable")
        for start in range(0, len(order), ONNX_SLICE):
            index = order[start : start + ONNX_SLICE]
            piece = self.tokenizer.pad({name: [encoded[name][i] for i in index] for name in encoded.keys()}, return_tensors="np")
            feed = {name: piece[name].astype(np.int64) for name in self.input_names}
            out[index] = self.session.run(["logits"], feed)[0]
        return out


def onnx_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle ONNX Runtime threads spin by default, waiting for the next run. In a service the same cores
    # also parse requests and run the event loop, so spinning steals the CPU the next batch waits for.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def load_scorer(run: Run | str | os.PathLike, backend: str = "torch", threads: int | None = None) -> Scorer:
    """A scorer for a finished classifier run; onnx backends need `tunelab export` first."""
    from transformers import AutoTokenizer

    from tunelab.models.classifier import Classifier, model_max_length

    run = run if isinstance(run, Run) else Run.open(run)
    run.require_classification("tunelab serve")
    if backend not in BACKENDS:
        raise TunelabError(f"unknown backend '{backend}'", f"use one of: {', '.join(BACKENDS)}")
    if threads:
        import torch

        torch.set_num_threads(threads)
    max_length = run.config.get("max_length")
    if backend == "torch":
        return TorchScorer(Classifier.load(run.model_dir, max_length))
    path = onnx_path(run, backend)
    tokenizer = AutoTokenizer.from_pretrained(run.model_dir)
    if max_length is None:
        from transformers import AutoConfig

        max_length = model_max_length(AutoConfig.from_pretrained(run.model_dir), tokenizer)
    return OnnxScorer(onnx_session(path, threads), tokenizer, run.labels, int(max_length), backend=backend)


def onnx_path(run: Run, backend: str) -> Path:
    path = run.path / ONNX_DIR / ONNX_FILES[backend]
    if not path.is_file():
        flag = " --quantize int8" if backend == "onnx-int8" else ""
        raise TunelabError(f"run '{run.path}' has no {path.relative_to(run.path)}", f"export it first: tunelab export {run.path} --format onnx{flag}")
    return path


def model_version(run: Run, backend: str) -> str:
    """A short fingerprint of the weights being served: changes whenever they do."""
    files = [run.model_dir / "model.safetensors", run.model_dir / "config.json"]
    if backend != "torch":
        files.append(run.path / ONNX_DIR / ONNX_FILES[backend])
    digest = hashlib.sha256(backend.encode())
    for path in files:
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]
