"""`tunelab export RUN --format onnx [--quantize int8]` for a token-classification run, and the export
tunelab.runtime.choice makes on an ONNX backend's first use: the tagger's ONNX models, checked against
PyTorch on the run's test sentences.

    runs/<name>/onnx/model.onnx        fp32, dynamic batch and sequence axes (export.py's exporter)
    runs/<name>/onnx/model.int8.onnx   dynamic int8 (export.py's `add_int8`: the recipe chosen on the eval sentences)
    runs/<name>/onnx/parity.json       the word-level figures below

The gates compare what predict reports, word by word (each word's first piece, as runtime/tagger.py
reads it): fp32's tag probabilities within `tolerance` of PyTorch's and the tags the same on every
word, else nothing is written; int8's tags the same as PyTorch's on at least INT8_MIN_AGREEMENT of the
test words, else it is refused like a classifier's int8 (raised, or recorded in parity.json on first use).
`openvino_gate` holds the OpenVINO backends (runtime/openvino_export.py) to that same word-tag gate, their
int8 calibrated on the train sentences.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tunelab import atomic
from tunelab.errors import TunelabError
from tunelab.run import Run
from tunelab.runtime.export import PARITY_BATCH, PARITY_ROWS, ExportReport, _export, add_int8, export_failures
from tunelab.runtime.openvino_export import OpenVinoGate, calibration_feeds, calibration_split
from tunelab.runtime.scorers import ONNX_DIR, ONNX_FILES, PARITY_FILE, open_session
from tunelab.runtime.tagger import TokenTagger, split_sentences

# What the agreement figures compare (max_abs_diff: the word tag probabilities).
WORD_TAGS_COMPARED = "each word's tag, from its first piece"


def export_token_onnx(
    run: Run,
    quantize: str | None,
    tolerance: float,
    min_agreement: float,
    max_rows: int | None,
    step: Callable[[str], None],
    int8_refusal: str,
    before_publish: Callable[[Path], None] | None = None,
) -> ExportReport:
    """Export the run's tagger to ONNX (and int8), check its word tags against PyTorch on the test split, write run/onnx/.

    Called by tunelab.runtime.export.export_onnx, whose parameters these are.
    """
    sentences = split_sentences(run, "test")[:max_rows]
    tagger = TokenTagger.load(run.model_dir)
    started = time.perf_counter()
    with export_failures(), atomic.staged_dir(run.path / ONNX_DIR, overwrite=True, keep_partial=False) as stage:
        step("exporting the fp32 ONNX model")
        fp32 = stage / ONNX_FILES["onnx"]
        _export(tagger, fp32)
        files = {"onnx": str(run.path / ONNX_DIR / fp32.name)}
        step(f"checking parity on {len(sentences)} test sentences")
        on_test = word_tags_check(tagger, sentences)
        diff, same = on_test(fp32)
        report = ExportReport(
            path=str(run.path / ONNX_DIR),
            files=files,
            rows=len(sentences),
            fp32_max_abs_diff=diff,
            fp32_argmax_agreement=same,
            compared=WORD_TAGS_COMPARED,
            agreement_of="words",
        )
        if not (diff <= tolerance and same == 1.0):
            raise TunelabError(
                f"the ONNX tagger differs from PyTorch: word tag probabilities by up to {diff:.2e} (tolerance {tolerance:.0e}), "
                f"word tags on {1 - same:.2%} of the test words",
                "nothing was written; report this model's architecture as an export bug",
            )
        if quantize == "int8":
            eval_sentences = split_sentences(run, "eval")[:max_rows] if run.split_path("eval").is_file() else []
            on_eval = word_tags_check(tagger, eval_sentences) if eval_sentences else None
            add_int8(report, stage, on_test, on_eval, min_agreement, int8_refusal, "export without --quantize and serve with --backend onnx", step)
        report.export_seconds = round(time.perf_counter() - started, 2)
        report.sizes_mb = {name: round((stage / Path(path).name).stat().st_size / 2**20, 2) for name, path in files.items()}
        atomic.write_json(stage / PARITY_FILE, {**report.to_dict(), "task": run.task})
        if before_publish is not None:
            before_publish(stage)
    return report


def word_tags_check(tagger: TokenTagger, sentences: list[list[str]]) -> Callable[..., tuple[float, float]]:
    """A tagger's model file (run by `backend`, ONNX Runtime unless told) -> the largest difference of its word tag probabilities
    from PyTorch's on `sentences`, and the share of words tagged the same. PyTorch's tags are computed once, here."""
    reference_tags, reference_probabilities = tagger.word_tags(sentences, PARITY_BATCH)
    words = sum(len(tags) for tags in reference_tags)

    def check(path: Path, backend: str = "onnx") -> tuple[float, float]:
        tags, probabilities = tagger.on_session(open_session(path, backend), backend).word_tags(sentences, PARITY_BATCH)
        same = sum(a == b for ours, theirs in zip(reference_tags, tags) for a, b in zip(ours, theirs))
        diff = max((float(np.abs(a - b).max()) for a, b in zip(reference_probabilities, probabilities) if a.size), default=0.0)
        return diff, same / max(1, words)

    return check


def openvino_gate(run: Run) -> OpenVinoGate:
    """A tagger's OpenVINO gate: the share of the test words tagged as PyTorch tags them; int8 calibrated on train (or eval) sentences."""
    tagger = TokenTagger.load(run.model_dir)
    sentences = split_sentences(run, "test")[:PARITY_ROWS]
    compare = word_tags_check(tagger, sentences)

    def check(path: Path, backend: str) -> dict:
        diff, same = compare(path, backend)
        return {"argmax_agreement": same, "max_abs_diff": diff, "rows": len(sentences)}

    def calibration() -> tuple[str, list]:
        split, inputs = calibration_split(run, lambda split: split_sentences(run, split))
        return split, calibration_feeds(tagger.tokenizer, inputs, tagger.max_length, words=True)

    return OpenVinoGate(check, calibration, f"{len(sentences)} test sentences")
