"""Which runtime scores a classifier run's texts or tags a token-classification run's words: torch, ONNX fp32 or int8
in ONNX Runtime or OpenVINO, or `auto`.

`load_scorer(run, backend)` (a single-label or pair classifier), `load_multilabel(run, backend)` (a multi-label run:
the same logits through a sigmoid per label and the run's thresholds) and `load_tagger(run, backend)` (a
token-classification run) are the entry points of the service, `predict` and `eval`:

- `torch`: the run's PyTorch model, as trained.
- `onnx`, `onnx-int8`: ONNX Runtime, exported into the run's onnx/ on first use (tunelab.runtime.export,
  under a folder lock so two processes never export at once).
- `openvino`: that fp32 model.onnx compiled by OpenVINO; `openvino-int8`: NNCF's static int8 of it,
  calibrated on the run's train texts or sentences (tunelab.runtime.openvino_export); `openvino-bf16`: the fp32
  model.onnx computed in bf16 by OpenVINO (no fp32 re-scoring: it is not int8). All need the optional `openvino`
  extra; without it `auto` passes them over, saying so, and naming one is a one-line error. `openvino-bf16` is
  offered only on a CPU with bf16 arithmetic (AVX-512 BF16 or AMX, tunelab.hardware): elsewhere it is passed over
  and refused the same way.
- `auto`: the fastest backend that passes its gate, timed on this CPU on the run's test texts on first
  use and cached in onnx/backend_choice.json (what was measured, the CPU flags, thread count and
  OpenVINO version it was measured with, and why any backend was refused). A cache measured on other
  flags, another thread count, another OpenVINO, other model files, another set of backends or other runtime code
  (runtime_code_version) is measured again.

Every backend but torch is used only if it passes its parity gate on the run's test split: argmax
agreement with PyTorch of at least INT8_MIN_AGREEMENT, as recorded in onnx/parity.json; for a tagger,
the share of the test words whose tag (its first piece's argmax) is PyTorch's (runtime/token_export.py).
A backend that fails is refused with one line saying why.
"""

from __future__ import annotations

import functools
import hashlib
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab import atomic, hardware
from tunelab.backends import BACKENDS, OPENVINO_BACKENDS
from tunelab.errors import TunelabError
from tunelab.run import Run
from tunelab.runtime.scorers import (
    ONNX_DIR,
    PARITY_FILE,
    Scorer,
    model_version,
    not_installed,
    open_scorer,
    require_packages,
    unavailable,
)
from tunelab.textpairs import frame_inputs

if TYPE_CHECKING:
    from tunelab.models.multilabel import MultiLabelClassifier
    from tunelab.runtime.tagger import TokenTagger  # imports torch: loaded only when a tagger is asked for

CHOICE_FILE = "backend_choice.json"
# What each gated backend runs, as its refusal names it.
GATED_MODELS = {
    "onnx": "the fp32 ONNX model",
    "onnx-int8": "the int8 model",
    "openvino": "the OpenVINO model",
    "openvino-int8": "the OpenVINO int8 model",
    "openvino-bf16": "the OpenVINO bf16 model",
}
# `auto` times each backend on this many of the run's test texts, in predict's batches: a few seconds on
# 2 cores for a MiniLM, enough to rank backends whose speeds differ by tens of percent.
TIMING_TEXTS = 256
TIMING_BATCH = 64
WARMUP_TEXTS = 16  # the first ONNX Runtime call allocates its buffers; it is not timed

Say = Callable[[str], None]


def load_scorer(run: Run | str, backend: str = "torch", threads: int | None = None, say: Say | None = None) -> Scorer:
    """A scorer for a finished classifier run on `backend` (one of CHOICES)."""
    run = run if isinstance(run, Run) else Run.open(run)
    return open_scorer(run, choose_backend(run, backend, threads, say), threads)


def load_multilabel(run: Run | str, backend: str = "torch", threads: int | None = None, say: Say | None = None) -> MultiLabelClassifier:
    """A finished multi-label run on `backend`: its logits (gated on the label sets they give) through a sigmoid per label and the run's thresholds."""
    from tunelab.models.multilabel import MultiLabelClassifier, read_thresholds

    run = run if isinstance(run, Run) else Run.open(run)
    thresholds = read_thresholds(run)  # a run without its thresholds fails before any export
    return MultiLabelClassifier(load_scorer(run, backend, threads, say), thresholds)


def load_tagger(run: Run | str, backend: str = "torch", threads: int | None = None, say: Say | None = None) -> TokenTagger:
    """A tagger for a finished token-classification run on `backend`, chosen and gated as a classifier's."""
    from tunelab.runtime.tagger import open_tagger

    run = run if isinstance(run, Run) else Run.open(run)
    return open_tagger(run, choose_backend(run, backend, threads, say), threads)


def check_backend_name(backend: str, backends: tuple[str, ...] = BACKENDS) -> None:
    if backend not in (*backends, "auto"):
        raise TunelabError(f"unknown backend '{backend}'", f"use one of: {', '.join((*backends, 'auto'))}")


def choose_backend(run: Run, backend: str, threads: int | None = None, say: Say | None = None) -> str:
    """The backend `backend` means for this run: itself if it passes its gate, or auto's measured choice."""
    run.model_dir  # noqa: B018 - raises, in one line and before any export, for a scikit-learn baseline run
    say = say or say_on_stderr
    return choose(
        backend,
        refused=lambda asked: refusals(exported(run, asked, say)),
        measure=lambda refused: measure_choice(run, threads, refused, say),
        cached=lambda: cached_choice(run, threads),
        what="this run",
        say=say,
    )


def choose(
    backend: str,
    refused: Callable[[str], dict[str, str]],
    measure: Callable[[dict[str, str]], dict[str, Any]],
    cached: Callable[[], dict[str, Any] | None],
    what: str,
    say: Say,
    backends: tuple[str, ...] = BACKENDS,
) -> str:
    """The one rule of every backend choice (a classifier run's, an embedding model's).

    `refused(asked)` exports what `asked` needs on first use and returns each backend that fails its
    gate with the reason; `cached()` is auto's earlier measurement if it still holds, `measure(refused)`
    times the passing backends and records the choice. A backend asked for by name that fails its gate is
    an error saying why, never a silent fallback. A classifier run's choice is among BACKENDS, an embedding
    model's among `backends` (embed_choice.EMBED_BACKENDS).
    """
    check_backend_name(backend, backends)
    if backend == "torch":
        return "torch"
    if backend == "auto":
        choice = cached() or measure(refused(backend))
        say(describe_choice(choice))
        return choice["chosen"]
    refusal = refused(backend)
    if backend in refusal:
        raise TunelabError(
            f"backend {backend} is refused for {what}: {refusal[backend]}",
            "use --backend auto (the fastest backend that passes its gate) or --backend torch",
        )
    return backend


def exported(run: Run, backend: str, say: Say) -> dict[str, Any]:
    """The run's parity.json, exporting first what `backend` needs that was never exported and measured.

    An export that fails (an architecture the exporter cannot handle, a run without a test split) refuses
    every gated backend for `auto`, with its message; an explicit backend raises it. An OpenVINO backend
    whose packages are not installed is left out of `auto`, and raises when named.
    """
    from tunelab.runtime.export import export_onnx
    from tunelab.runtime.openvino_export import add_openvino

    if backend != "auto":
        require_packages(backend)
    needs_int8 = backend in ("onnx-int8", "auto")
    openvino = [name for name in OPENVINO_BACKENDS if backend in (name, "auto") and not unavailable(name)]

    def onnx_done(parity: dict[str, Any] | None) -> bool:
        return parity is not None and (not needs_int8 or parity.get("int8_argmax_agreement") is not None)

    def done() -> dict[str, Any] | None:
        parity = atomic.read_json(run.path / ONNX_DIR / PARITY_FILE)
        return parity if onnx_done(parity) and all(name in parity for name in openvino) else None

    parity = done()  # checked before locking too: an exported run is only read, and gets no lock file
    if parity is not None:
        return parity
    with atomic.folder_lock(run.path / ONNX_DIR):
        parity = done()  # another process may have exported while this one waited
        if parity is not None:
            return parity
        try:
            parity = atomic.read_json(run.path / ONNX_DIR / PARITY_FILE)
            if not onnx_done(parity):
                say(f"exporting {run.path.name} to ONNX{' and int8' if needs_int8 else ''} (first use; checked against PyTorch on its test split)")
                parity = export_onnx(run, "int8" if needs_int8 else None, int8_refusal="record").to_dict()
            missing = [name for name in openvino if name not in parity]
            if missing:
                say(f"compiling {run.path.name} for {', '.join(missing)} (first use; checked against PyTorch on its test split)")
                parity = add_openvino(run, missing, say)
            return parity
        except TunelabError as error:
            if backend != "auto":
                raise
            return {"export_failed": error.message}


def refusals(parity: dict[str, Any]) -> dict[str, str]:
    """Each gated backend that may not be used, with the reason; a backend absent from the answer passed its gate."""
    from tunelab.runtime.export import ARGMAX_COMPARED, INT8_MIN_AGREEMENT

    openvino = {name: parity.get(name) or {} for name in OPENVINO_BACKENDS}
    # int8's agreement is measured also when the export refused it (parity.json's int8_refused).
    agreements = {
        "onnx": parity.get("fp32_argmax_agreement"),
        "onnx-int8": parity.get("int8_argmax_agreement"),
        **{name: figures.get("argmax_agreement") for name, figures in openvino.items()},
    }
    refused = {}
    for backend, agreement in agreements.items():
        failure = not_installed(backend) or parity.get("export_failed") or openvino.get(backend, {}).get("failed")
        if failure:
            refused[backend] = failure
        elif agreement is None or agreement < INT8_MIN_AGREEMENT:
            of = parity.get("agreement_of", "texts")  # a tagger's agreement is over words
            compared = parity.get("compared", ARGMAX_COMPARED)  # a multi-label run's is over label sets
            measured = "" if compared == ARGMAX_COMPARED else f" ({compared})"
            refused[backend] = f"{GATED_MODELS[backend]} agrees with PyTorch{measured} on {_share(agreement)} of the test {of} (needs {INT8_MIN_AGREEMENT:.1%})"
    return refused


def measure_choice(run: Run, threads: int | None, refused: dict[str, str], say: Say) -> dict[str, Any]:
    """Time every backend that passed its gate on the run's test texts; the fastest is chosen and cached."""
    measured = f"{TIMING_TEXTS} test-split texts at most per backend, batches of {TIMING_BATCH}, after a {WARMUP_TEXTS}-text warm-up"
    return record_choice(
        run.path / ONNX_DIR / CHOICE_FILE, refused, lambda backends: time_backends(run, backends, threads, say), measured, measurement_key(run, threads)
    )


def record_choice(
    path,
    refused: dict[str, str],
    time_them: Callable[[list[str]], dict[str, float]],
    measured: str,
    key: dict[str, Any],
    backends: tuple[str, ...] = BACKENDS,
) -> dict[str, Any]:
    """Time the `backends` not refused (`time_them` -> texts/s each), write the choice with what it holds for to `path`."""
    candidates = [backend for backend in backends if backend not in refused]
    speeds = time_them(candidates) if len(candidates) > 1 else {}
    choice = {
        "chosen": max(speeds, key=speeds.get) if speeds else "torch",
        "texts_per_s": speeds,
        "refused": {backend: refused[backend] for backend in backends if backend in refused},
        "measured": measured,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **key,
    }
    atomic.write_json(path, choice)
    return choice


def time_backends(run: Run, backends: list[str], threads: int | None, say: Say) -> dict[str, float]:
    """Each backend's texts/s on the run's test texts: a classifier's logits, a tagger's word tags (its test sentences)."""
    if run.task == "token-classification":
        from tunelab.runtime.tagger import open_tagger, split_sentences

        texts, scorer = split_sentences(run, "test"), lambda backend: open_tagger(run, backend, threads).word_tags
    else:
        texts, scorer = frame_inputs(run.split("test")), lambda backend: open_scorer(run, backend, threads).logits
    texts = texts[:TIMING_TEXTS]
    say(f"timing {', '.join(backends)} on {len(texts)} test texts (first use of --backend auto on this CPU)")
    return {backend: texts_per_second(scorer(backend), texts, TIMING_BATCH) for backend in backends}


def texts_per_second(encode: Callable, texts: list[str], batch_size: int) -> float:
    """`encode(texts, batch_size)`'s speed, after a warm-up call (the first ONNX Runtime call allocates its buffers)."""
    encode(texts[:WARMUP_TEXTS], batch_size)
    started = time.perf_counter()
    encode(texts, batch_size)
    return round(len(texts) / max(time.perf_counter() - started, 1e-9), 1)


def measurement_key(run: Run, threads: int | None) -> dict[str, Any]:
    """What a measured choice holds for: this CPU's instruction sets, the thread count, the model files, the code."""
    return cpu_key(threads, {backend: model_version(run, backend) for backend in BACKENDS}, BACKENDS)


def cpu_key(threads: int | None, model_versions: dict[str, str], backends: tuple[str, ...]) -> dict[str, Any]:
    return {
        "cpu_flags": [flag for flag in hardware.SPEED_FLAGS if flag in hardware.cpu_flags()],
        "threads": hardware.thread_count(threads),
        "model_versions": model_versions,
        # Installing the `openvino` extra later must measure again: a choice made without it did not time OpenVINO.
        "openvino_version": _package_version("openvino"),
        # So must a newer tunelab: a backend added since was never timed, and a change to how a backend runs its
        # forward pass (OpenVINO's padding on AMX, say) changes its speed.
        "backends": list(backends),
        "runtime_code": runtime_code_version(),
    }


@functools.cache
def runtime_code_version() -> str:
    """A fingerprint of the code that runs the backends' forward passes (this package's runtime modules and the
    embedder): a choice timed with other code is timed again. Read once a process; the files are small."""
    package = Path(__file__).resolve().parent.parent
    files = sorted((package / "runtime").glob("*.py")) + [package / "backends.py", package / "rag" / "embed.py"]
    digest = hashlib.sha256()
    for path in files:
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def cached_choice(run: Run, threads: int | None) -> dict[str, Any] | None:
    return read_cached_choice(run.path / ONNX_DIR / CHOICE_FILE, measurement_key(run, threads))


def read_cached_choice(path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The choice recorded at `path` if it was measured for `key` (same CPU flags, threads, model files)."""
    choice = atomic.read_json(path)
    if choice is None or any(choice.get(name) != value for name, value in key.items()):
        return None
    return choice


def describe_choice(choice: dict[str, Any]) -> str:
    """One line: what auto chose, how fast each backend measured, and why any backend was not used."""
    speeds = ", ".join(f"{backend} {speed:g}" for backend, speed in choice["texts_per_s"].items())
    line = f"backend auto: {choice['chosen']}" + (f" (texts/s on this CPU: {speeds})" if speeds else " (the only backend that passes its gate)")
    if choice["refused"]:
        line += "; not used: " + "; ".join(f"{backend}: {reason}" for backend, reason in choice["refused"].items())
    return line


def _share(value: float | None) -> str:
    return "an unmeasured share" if value is None else f"{value:.2%}"


def _package_version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def say_on_stderr(line: str) -> None:
    print(line, file=sys.stderr)
