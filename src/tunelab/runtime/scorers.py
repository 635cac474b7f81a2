"""Scorers: one small interface (texts -> logits) over PyTorch, ONNX Runtime and OpenVINO.

The service, `predict`, `eval`, the export parity check and the benchmarks all score through this
interface, so switching the backend changes nothing else. Which backend a run uses is
tunelab.runtime.choice's job; this module only opens the one it is told.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tunelab import atomic, hardware, textpairs
from tunelab.backends import BACKENDS, BF16_BACKENDS, OPENVINO_BACKENDS
from tunelab.errors import TunelabError
from tunelab.run import Run

# Where the ONNX models live inside a run directory (written by tunelab.runtime.export).
ONNX_DIR = "onnx"
ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}
PARITY_FILE = "parity.json"  # each backend's agreement with PyTorch, beside the models
# parity.json's key, among an int8 backend's figures (onnx-int8's at the top level, openvino-int8's under its name),
# of the top-two logit gap at or below which its texts are scored again in fp32 (FallbackScorer); the fp32 backend
# each int8 one falls back on.
FALLBACK_MARGIN = "fp32_fallback_margin"
FALLBACK_BACKENDS = {"onnx-int8": "onnx", "openvino-int8": "openvino"}
# The model file each backend runs (beside the ONNX files): OpenVINO compiles the fp32 ONNX graph itself
# (in fp32 for `openvino`, in bf16 for `openvino-bf16`), and runs NNCF's int8 of it as OpenVINO IR (the .xml,
# with its weights in the .bin beside it).
MODEL_FILES = {**ONNX_FILES, "openvino": ONNX_FILES["onnx"], "openvino-int8": "openvino.int8.xml", "openvino-bf16": ONNX_FILES["onnx"]}
# What a backend needs installed beyond the base install: the optional `openvino` extra.
EXTRA_PACKAGES = {"openvino": ("openvino",), "openvino-int8": ("openvino", "nncf"), "openvino-bf16": ("openvino",)}
# The arithmetic each OpenVINO backend asks the CPU plugin for (INFERENCE_PRECISION_HINT). f32 is asked for explicitly:
# on a CPU with fast bf16 OpenVINO would otherwise run an fp32 graph in bf16, which is openvino-bf16, not the backend gated.
# openvino-int8's layers that are not int8, and the fp32 graph its near ties are scored again with, stay f32.
OPENVINO_PRECISION = {"openvino": "f32", "openvino-int8": "f32", "openvino-bf16": "bf16"}
# Why a bf16 backend (BF16_BACKENDS) is not offered on a CPU without bf16 arithmetic (hardware.cpu_bf16_is_fast).
BF16_REFUSAL = "this CPU has no bf16 arithmetic (neither AVX-512 BF16 nor AMX), so bf16 would be emulated"

# Texts per ONNX Runtime call when the caller does not say (the service's micro-batches). A micro-batch
# of tweets padded to its longest member computes mostly padding; sorted slices of 8 pad only to a near
# neighbour. Measured (minilm int8, 32 tweets, 2 cores): one call 112 ms, slices of 16 84 ms, of 8 80 ms,
# of 4 85 ms (per-call overhead takes over).
ONNX_SLICE = 8

Progress = Callable[[int], None] | None


class Scorer(Protocol):
    labels: list[str]
    backend: str

    def logits(self, texts: Sequence[str], batch_size: int | None = None, progress: Progress = None) -> np.ndarray: ...

    def predict_proba(self, texts: Sequence[str], batch_size: int | None = None, progress: Progress = None) -> np.ndarray: ...


class Probabilities:
    """predict_proba from logits, the same for every backend."""

    def predict_proba(self, texts: Sequence[str], batch_size: int | None = None, progress: Progress = None) -> np.ndarray:
        from tunelab.models.classifier import softmax

        return softmax(self.logits(texts, batch_size, progress))


@dataclass
class TorchScorer(Probabilities):
    """The run's Hugging Face model through tunelab.models.classifier (length-sorted batches)."""

    classifier: Any  # tunelab.models.classifier.Classifier
    backend: str = "torch"

    @property
    def labels(self) -> list[str]:
        return self.classifier.labels

    def logits(self, texts: Sequence[str], batch_size: int | None = None, progress: Progress = None) -> np.ndarray:
        # No batch size: the texts are one batch already (a micro-batch of the service).
        return self.classifier.logits(texts, batch_size=batch_size or max(1, len(texts)), progress=progress)


@dataclass
class OnnxScorer(Probabilities):
    """An exported ONNX model in an onnxruntime InferenceSession or an OpenVinoSession (`open_session`), fed by the run's own tokenizer."""

    session: Any  # onnxruntime.InferenceSession
    tokenizer: Any
    labels: list[str]
    max_length: int
    backend: str = "onnx"

    def logits(self, texts: Sequence[str], batch_size: int | None = None, progress: Progress = None) -> np.ndarray:
        """Logits in the order of `texts` (texts or text pairs)."""
        return run_sorted(self.session, self.tokenizer, self.max_length, texts, batch_size or ONNX_SLICE, "logits", len(self.labels), progress)


@dataclass
class FallbackScorer(Probabilities):
    """An int8 scorer whose unsure texts are scored again by its fp32 model: int8's speed, and fp32's label wherever int8's could differ.

    A text is unsure when its top two int8 logits lie within `margin` of each other: quantization error
    moves logits by a few hundredths (a few tenths at most), so only such near ties change their argmax. The margin is chosen on
    the run's eval split (tunelab.runtime.export's `with_fallback`, for both int8 backends) and recorded in parity.json under FALLBACK_MARGIN.
    """

    fast: OnnxScorer
    exact: OnnxScorer
    margin: float

    @property
    def labels(self) -> list[str]:
        return self.fast.labels

    @property
    def backend(self) -> str:
        return self.fast.backend

    def logits(self, texts: Sequence[str], batch_size: int | None = None, progress: Progress = None) -> np.ndarray:
        texts = list(texts)
        return self.rescore(texts, self.fast.logits(texts, batch_size, progress), batch_size)

    def rescore(self, texts: Sequence, logits: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """`logits` (the fast model's, on `texts`) with each unsure text's row replaced by the exact model's."""
        unsure = np.flatnonzero(self.unsure(logits))
        if len(unsure) == 0:
            return logits
        logits = logits.copy()
        logits[unsure] = self.exact.logits([texts[i] for i in unsure], batch_size)
        return logits

    def unsure(self, logits: np.ndarray) -> np.ndarray:
        return top_two_gap(logits) <= self.margin


def top_two_gap(logits: np.ndarray) -> np.ndarray:
    """Each row's largest logit minus its second largest: how far the argmax is from changing."""
    if logits.shape[1] < 2:
        return np.full(len(logits), np.inf, dtype=np.float32)
    top_two = np.partition(logits, -2, axis=1)[:, -2:]
    return top_two[:, 1] - top_two[:, 0]


def run_sorted(session, tokenizer, max_length: int, texts: Sequence, size: int, output: str, width: int, progress: Progress = None) -> np.ndarray:
    """One ONNX output per text (or text pair), in the order of `texts`, run as token-length-sorted slices of `size` so short texts carry little padding.

    The one ONNX Runtime loop of the classifier scorer and the ONNX embedder (tunelab.rag.embed).
    """
    texts = list(texts)
    out = np.zeros((len(texts), width), dtype=np.float32)
    if not texts:
        return out
    input_names = [i.name for i in session.get_inputs()]
    encoded = textpairs.tokenize(tokenizer, texts, truncation=True, max_length=max_length)
    order = np.argsort([len(ids) for ids in encoded["input_ids"]], kind="stable")
    for start in range(0, len(order), size):
        index = order[start : start + size]
        inputs = {name: [encoded[name][i] for i in index] for name in encoded.keys()}
        piece = tokenizer.pad(inputs, pad_to_multiple_of=getattr(session, "pad_to_multiple_of", None), return_tensors="np")
        feed = {name: piece[name].astype(np.int64) for name in input_names}
        out[index] = session.run([output], feed)[0]
        if progress:
            progress(len(index))
    return out


def onnx_session(path: Path, threads: int | None = None):
    """An InferenceSession on a bounded number of intra-op threads (hardware.thread_count: the cores we may use)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = hardware.thread_count(threads)
    options.inter_op_num_threads = 1
    # Idle ONNX Runtime threads spin by default, waiting for the next run. In a service the same cores
    # also parse requests and run the event loop, so spinning steals the CPU the next batch waits for.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# Sequence lengths an OpenVINO session pads each slice to a multiple of, on a CPU with AMX tiles (amx_tile). OpenVINO's
# CPU plugin builds kernels for each input shape it meets, and AMX works on tiles of 16 rows: bucketing the
# lengths means fewer shapes to build and whole tiles, for a few padded tokens. Measured on the served tweets model
# (2 cores, AMX, openvino-int8 served, before/after in one run): 1.36x the requests/s at concurrency 32, 2.1x at 1,
# p50 at 1 8.5 -> 5.9 ms (benchmarks/results/serve_bucket-amx.json). Without AMX nothing
# is padded: unmeasured there, and without tiles to fill the padding is extra work.
OPENVINO_AMX_PAD_MULTIPLE = 16

OPENVINO_HINT = "pip install 'tunelab[openvino]' (OpenVINO and NNCF, both from PyPI), or use --backend onnx-int8 or auto"


def require_openvino(package: str = "openvino"):
    """The `openvino` (or `nncf`) module, or one line saying it is not installed: both are the optional `openvino` extra."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError:
        raise TunelabError(f"{package} is not installed", OPENVINO_HINT) from None


def missing_package(backend: str) -> str | None:
    """The first package `backend` needs that is not installed, if any."""
    import importlib.util

    return next((package for package in EXTRA_PACKAGES.get(backend, ()) if importlib.util.find_spec(package) is None), None)


def require_packages(backend: str) -> None:
    """One line when a backend asked for by name needs a package that is not installed."""
    missing = missing_package(backend)
    if missing:
        raise TunelabError(f"backend {backend} needs {missing}, which is not installed", OPENVINO_HINT)
    if slow_bf16(backend):
        raise TunelabError(f"backend {backend} is not offered on this CPU: {BF16_REFUSAL}", "use --backend openvino-int8, onnx-int8 or auto")


def not_installed(backend: str) -> str | None:
    """Why `auto` passes `backend` over on this install and CPU, if it does."""
    missing = missing_package(backend)
    if missing:
        return f"{missing} is not installed (pip install 'tunelab[openvino]')"
    return BF16_REFUSAL if slow_bf16(backend) else None


def slow_bf16(backend: str) -> bool:
    """`backend` computes in bf16 and this CPU would emulate it (tunelab.hardware's rule)."""
    return backend in BF16_BACKENDS and not hardware.cpu_bf16_is_fast()


def unavailable(backend: str) -> bool:
    """`backend` cannot run here: a package it needs is missing, or it computes in bf16 on a CPU without bf16 arithmetic."""
    return bool(missing_package(backend)) or slow_bf16(backend)


def open_session(path: Path, backend: str, threads: int | None = None):
    """The session that runs `backend`'s model file: OpenVINO (in the backend's precision) for the openvino backends, ONNX Runtime for the others."""
    return OpenVinoSession(path, threads, OPENVINO_PRECISION[backend]) if backend in OPENVINO_BACKENDS else onnx_session(path, threads)


class OpenVinoSession:
    """An ONNX graph or OpenVINO IR compiled by OpenVINO's CPU plugin, behind the two calls of an InferenceSession that run_sorted makes.

    `precision` is the backend's OPENVINO_PRECISION, asked for explicitly: left to itself, OpenVINO runs an fp32
    graph in bf16 on a CPU with fast bf16, which is another backend than the one gated.
    """

    def __init__(self, path: Path, threads: int | None = None, precision: str = "f32"):
        openvino = require_openvino()
        config = {"INFERENCE_NUM_THREADS": hardware.thread_count(threads), "INFERENCE_PRECISION_HINT": precision, "NUM_STREAMS": 1}
        self.compiled = openvino.Core().compile_model(str(path), "CPU", config)
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        # run_sorted pads each slice's token length to a multiple of this (None: to its longest text).
        self.pad_to_multiple_of = OPENVINO_AMX_PAD_MULTIPLE if "amx_tile" in hardware.cpu_flags() else None

    def get_inputs(self) -> list[Any]:
        return [_Named(name) for name in self.input_names]

    def run(self, outputs: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        # An infer request per call: one request is not safe to share between threads, and making one is cheap.
        result = self.compiled.create_infer_request().infer(feed)
        return [result[name] for name in outputs]


@dataclass
class _Named:
    name: str


def open_scorer(run: Run, backend: str, threads: int | None = None) -> Scorer:
    """A scorer on exactly `backend` for a finished classifier run; its ONNX file must exist (see runtime.choice)."""
    from transformers import AutoTokenizer

    from tunelab.models.classifier import Classifier, model_max_length

    if backend not in BACKENDS:
        raise TunelabError(f"unknown backend '{backend}'", f"use one of: {', '.join(BACKENDS)}")
    max_length = run.config.get("max_length")
    if backend == "torch":
        hardware.set_threads(threads)
        return TorchScorer(Classifier.load(run.model_dir, max_length))
    path = onnx_path(run, backend)
    tokenizer = AutoTokenizer.from_pretrained(run.model_dir)
    if max_length is None:
        from transformers import AutoConfig

        max_length = model_max_length(AutoConfig.from_pretrained(run.model_dir), tokenizer)
    scorer = OnnxScorer(open_session(path, backend, threads), tokenizer, run.labels, int(max_length), backend=backend)
    margin = fallback_margin(run, backend)
    if margin is None:
        return scorer
    exact = FALLBACK_BACKENDS[backend]
    return FallbackScorer(
        scorer, OnnxScorer(open_session(onnx_path(run, exact), exact, threads), tokenizer, run.labels, int(max_length), backend=backend), margin
    )


def fallback_margin(run: Run, backend: str) -> float | None:
    """The top-two gap at or below which `backend`'s texts are scored again in fp32, as its gate recorded it in parity.json (None: never)."""
    if backend not in FALLBACK_BACKENDS:
        return None
    parity = atomic.read_json(run.path / ONNX_DIR / PARITY_FILE) or {}
    # onnx-int8's figures are parity.json's top level (the ONNX export's report), an OpenVINO backend's sit under its name.
    figures = parity if backend in ONNX_FILES else parity.get(backend) or {}
    # An export made before its backend had the fallback has no margin: None, and it scores plain int8, as its gate measured it.
    return figures.get(FALLBACK_MARGIN)


def onnx_path(run: Run, backend: str) -> Path:
    """The model file `backend` runs in the run's onnx/ (tunelab.runtime.choice writes it on the backend's first use)."""
    path = run.path / ONNX_DIR / MODEL_FILES[backend]
    if not path.is_file():
        flag = " --quantize int8" if backend == "onnx-int8" else ""
        hint = f"export it first: tunelab export {run.path} --format onnx{flag}"
        if backend in OPENVINO_BACKENDS:
            hint = f"its first use makes it: tunelab predict {run.path} TEXT --backend {backend}"
        raise TunelabError(f"run '{run.path}' has no {path.relative_to(run.path)}", hint)
    return path


def model_version(run: Run, backend: str) -> str:
    """A short fingerprint of the weights being served: changes whenever they do."""
    files = [run.model_dir / "model.safetensors", run.model_dir / "config.json"]
    if backend != "torch":
        files.append(run.path / ONNX_DIR / MODEL_FILES[backend])
    digest = hashlib.sha256(backend.encode())
    for path in files:
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]
