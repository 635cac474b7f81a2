"""OpenVINO's backends of a classifier or token-classification run, checked against PyTorch; and NNCF's int8, which the embedding backends use too.

    runs/<name>/onnx/model.onnx               the fp32 ONNX graph (tunelab.runtime.export), compiled by OpenVINO: `openvino`
    runs/<name>/onnx/openvino.int8.xml, .bin  NNCF's static int8 of that graph, as OpenVINO IR: `openvino-int8`
    (runs/<name>/onnx/model.onnx again)      the fp32 graph computed in bf16 (INFERENCE_PRECISION_HINT): `openvino-bf16`,
                                              offered only on a CPU with AVX-512 BF16 or AMX
    runs/<name>/onnx/parity.json              each one's figures under its backend's name, beside the ONNX ones

The gate is onnx-int8's: argmax agreement with PyTorch on the run's test split of at least
INT8_MIN_AGREEMENT, which tunelab.runtime.choice holds each backend to (a multi-label run's: the same label
sets after its thresholds, export.py's `agreement_rule`; a tagger's: the share of its test words tagged as
PyTorch tags them, runtime/token_export.py's `openvino_gate`). int8's activation ranges are
calibrated on a seeded sample of the run's train texts or sentences (its eval ones when it has no train
split), never on test ones. A single-label run's int8 scores its near ties again with the fp32 graph
(scorers.FallbackScorer): static int8 moves logits by up to a few tenths, which flips the label of about one
tweet in a hundred, all of them near ties; the margin is chosen on the eval split, and the test gate measures
int8 with that fallback, as it is served (export.py's `with_fallback`, onnx-int8's too). A graph OpenVINO or NNCF cannot take refuses that backend only, with the reason.

They are measured on a backend's first use (tunelab.runtime.choice), or by `tunelab export --format openvino`
(`export_openvino`), which refuses, writing nothing, a backend that fails its gate.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunelab import atomic, textpairs
from tunelab.errors import TunelabError
from tunelab.run import Run
from tunelab.runtime.scorers import (
    FALLBACK_BACKENDS,
    MODEL_FILES,
    ONNX_DIR,
    OPENVINO_PRECISION,
    PARITY_FILE,
    OnnxScorer,
    OpenVinoSession,
    require_openvino,
    require_packages,
)

# NNCF fixes each activation's int8 range from this many texts, one per calibration input: one to three
# minutes of calibration for a MiniLM on 2 busy cores, seconds for a small classifier.
CALIBRATION_TEXTS = 128
CALIBRATION_SPLITS = ("train", "eval")  # the splits int8 may be calibrated on, in order of preference; never test


@dataclass
class OpenVinoGate:
    """How a run's OpenVINO backends are measured against PyTorch, one per task.

    check(model file, backend): its figures on the test split (`argmax_agreement`, `max_abs_diff`, `rows`);
    calibration(): int8's calibration split and its feeds (calibration_feeds); what: the test inputs, for the progress line.
    """

    check: Callable[[Path, str], dict[str, Any]]
    calibration: Callable[[], tuple[str, list[dict[str, np.ndarray]]]]
    what: str


def add_openvino(run: Run, backends: list[str], step: Callable[[str], None], folder: Path | None = None) -> dict[str, Any]:
    """Measure `backends` (openvino, openvino-int8, openvino-bf16) against PyTorch on the run's test split and add their figures to its parity.json.

    The fp32 ONNX model and parity.json must exist in `folder` (the run's onnx/, or an export's staging
    folder: tunelab.runtime.export); openvino-int8 writes its IR beside them. Each backend's entry holds
    its argmax agreement, or `failed`: why OpenVINO or NNCF could not take the graph.
    """
    folder = folder or run.path / ONNX_DIR
    parity = json.loads((folder / PARITY_FILE).read_text(encoding="utf-8"))
    if run.task == "token-classification":
        from tunelab.runtime.token_export import openvino_gate

        gate = openvino_gate(run)
    else:
        gate = classifier_gate(run)
    fp32 = folder / MODEL_FILES["openvino"]

    def gated(backend: str, path: Path) -> dict[str, Any]:
        step(f"checking {backend} on {gate.what}")
        return gate.check(path, backend)

    def int8() -> dict[str, Any]:
        split, feeds = gate.calibration()
        step(f"quantizing to int8 for OpenVINO (NNCF, calibrated on {len(feeds)} {split}-split inputs)")
        xml = atomic.write_file(folder / MODEL_FILES["openvino-int8"], lambda path: quantize_openvino(fp32, path, feeds), sidecars=(".bin",))
        size_mb = round(sum(path.stat().st_size for path in (xml, xml.with_suffix(".bin"))) / 2**20, 2)
        file = str(run.path / ONNX_DIR / xml.name)  # where it is read from once published, also when measured in a staging folder
        return {**gated("openvino-int8", xml), "calibration_split": split, "calibration_texts": len(feeds), "file": file, "size_mb": size_mb}

    measures = {"openvino": lambda: gated("openvino", fp32), "openvino-int8": int8, "openvino-bf16": lambda: gated("openvino-bf16", fp32)}
    for backend in backends:
        parity[backend] = measured_or_failed(measures[backend], "this run's model")
    atomic.write_json(folder / PARITY_FILE, parity)
    return parity


def export_openvino(run: Run | str | Path, quantize: str | None = None, step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """`tunelab export --format openvino [--quantize int8]`: the files the `openvino` (and `openvino-int8`) backends run, checked against PyTorch.

    The fp32 ONNX graph, which OpenVINO compiles, is exported and gated as `--format onnx` exports it;
    then, in the same staging folder, each OpenVINO backend is measured by its task's gate (add_openvino)
    and held to the gate tunelab.runtime.choice holds it to on first use. One that fails writes nothing.
    Returns the run's new parity.json.
    """
    from tunelab.runtime.choice import refusals
    from tunelab.runtime.export import export_onnx

    run = run if isinstance(run, Run) else Run.open(run)
    if quantize not in (None, "int8"):
        raise TunelabError(f"unknown quantization '{quantize}'", "use --quantize int8 (or leave it out for fp32 only)")
    backends = ["openvino", "openvino-int8"] if quantize else ["openvino"]
    for backend in backends:
        require_packages(backend)
    step = step or (lambda message: None)
    parity: dict[str, Any] = {}

    def gate(stage: Path) -> None:
        parity.update(add_openvino(run, backends, step, folder=stage))
        refused = [(backend, reason) for backend, reason in refusals(parity).items() if backend in backends]
        if refused:  # raised inside the staging folder: run/onnx/ is left as it was
            backend, reason = refused[0]
            hint = "export without --quantize and serve with --backend openvino" if backend == "openvino-int8" else "export with --format onnx"
            raise TunelabError(f"backend {backend} is refused for this run: {reason}", f"nothing was written; {hint}")

    export_onnx(run, step=step, before_publish=gate)
    return parity


def classifier_gate(run: Run) -> OpenVinoGate:
    """A classifier's: agreement of the logits on the test texts (the argmax; a multi-label run's label sets); calibrated on train (or eval) texts.

    A single-label run's int8 backend is measured as it scores: with its unsure texts scored again in fp32
    (scorers.FallbackScorer), below the margin chosen on the eval split (export.py's `with_fallback`, as onnx-int8's).
    """
    from tunelab.models.classifier import Classifier
    from tunelab.runtime.export import ARGMAX_COMPARED, PARITY_BATCH, PARITY_ROWS, agreement_rule, split_texts, with_fallback

    classifier = Classifier.load(run.model_dir, run.config.get("max_length"))
    texts = split_texts(run, "test", PARITY_ROWS)
    reference = classifier.logits(texts)
    agreement, compared = agreement_rule(run)

    def scorer(path: Path, backend: str) -> OnnxScorer:
        return OnnxScorer(OpenVinoSession(path, precision=OPENVINO_PRECISION[backend]), classifier.tokenizer, classifier.labels, classifier.max_length, backend)

    def check(path: Path, backend: str) -> dict[str, Any]:
        model = scorer(path, backend)
        logits = model.logits(texts, PARITY_BATCH)
        figures: dict[str, Any] = {}
        if backend in FALLBACK_BACKENDS and compared == ARGMAX_COMPARED:
            exact = scorer(path.parent / MODEL_FILES[FALLBACK_BACKENDS[backend]], backend)
            logits, figures = with_fallback(model, exact, run, classifier.logits, texts, logits, reference)
        return {"argmax_agreement": agreement(logits, reference), "max_abs_diff": float(np.abs(logits - reference).max()), "rows": len(texts), **figures}

    def calibration() -> tuple[str, list[dict[str, np.ndarray]]]:
        split, inputs = calibration_split(run, lambda split: split_texts(run, split, None))
        return split, calibration_feeds(classifier.tokenizer, inputs, classifier.max_length)

    return OpenVinoGate(check, calibration, f"{len(texts)} test texts")


def calibration_split(run: Run, read: Callable[[str], list]) -> tuple[str, list]:
    """The first of CALIBRATION_SPLITS the run has, with its model inputs as `read(split)` gives them (texts, text pairs or sentences' words)."""
    for split in CALIBRATION_SPLITS:
        try:
            return split, read(split)
        except TunelabError:
            continue
    raise TunelabError(f"run '{run.path}' has no train or eval split to calibrate int8 on", "train it again with this tunelab version")


def measured_or_failed(measure: Callable[[], dict[str, Any]], what: str) -> dict[str, Any]:
    """`measure()`'s figures, or `failed` with why: a graph OpenVINO or NNCF cannot take refuses that backend only, ONNX Runtime's stand."""
    try:
        return measure()
    except TunelabError as error:
        return {"failed": error.message}
    except Exception as error:
        from tunelab.runtime.export import first_line

        return {"failed": f"OpenVINO failed on {what}: {first_line(error)}"}


def calibration_feeds(tokenizer, inputs: list, max_length: int, count: int = CALIBRATION_TEXTS, words: bool = False) -> list[dict[str, np.ndarray]]:
    """A seeded sample of `count` of `inputs` (texts or text pairs; with `words`, sentences as word lists), tokenized one per feed: NNCF's calibration inputs."""
    sample = random.Random(0).sample(list(inputs), min(count, len(inputs)))
    feeds = []
    for item in sample:
        if words:
            encoded = tokenizer([item], is_split_into_words=True, truncation=True, max_length=max_length, return_tensors="np")
        else:
            encoded = textpairs.tokenize(tokenizer, [item], truncation=True, max_length=max_length, return_tensors="np")
        feeds.append({name: values.astype(np.int64) for name, values in encoded.items()})
    return feeds


def quantize_openvino(fp32: Path, xml: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    """Static int8 of an ONNX graph for OpenVINO (NNCF post-training quantization), written as OpenVINO IR: `xml` and the .bin beside it.

    Static, unlike tunelab.runtime.export's `quantize`: activation scales are fixed from `feeds`
    (calibration inputs, one text each), so OpenVINO runs whole int8 kernels without quantizing
    activations on every call. The transformer preset keeps softmax, layer norm and the residual adds in fp32.
    """
    openvino, nncf = require_openvino("openvino"), require_openvino("nncf")
    nncf.set_log_level(logging.ERROR)
    model = openvino.Core().read_model(str(fp32))
    names = [port.get_any_name() for port in model.inputs]
    dataset = nncf.Dataset(feeds, lambda feed: {name: feed[name] for name in names})
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        quantized = nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds))
    openvino.save_model(quantized, str(xml), compress_to_fp16=False)
