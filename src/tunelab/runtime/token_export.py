"""`tunelab export RUN --format onnx` for a token-classification run: the tagger's ONNX model, checked
against PyTorch on the run's test sentences.

    runs/<name>/onnx/model.onnx     fp32, dynamic batch and sequence axes (export.py's exporter)
    runs/<name>/onnx/parity.json    the word-level figures below

The parity gate compares what predict reports, word by word: each word's tag probabilities (from its
first piece) within `tolerance` of PyTorch's, and the tags the same on every word; else nothing is
written. int8 is not offered for taggers yet. predict, eval and serve score taggers with PyTorch.
"""

from __future__ import annotations

import os
import time

import numpy as np

from tunelab import atomic
from tunelab.errors import TunelabError
from tunelab.run import Run
from tunelab.runtime.export import PARITY_BATCH, ExportReport, _export, export_failures
from tunelab.runtime.scorers import ONNX_DIR, ONNX_FILES, onnx_session
from tunelab.runtime.tagger import TokenTagger


def export_token_onnx(
    run: Run | str | os.PathLike, quantize: str | None = None, tolerance: float = 1e-3, max_rows: int | None = 2000, step=None
) -> ExportReport:
    """Export the run's tagger to ONNX, check its word tags against PyTorch on the test split, write run/onnx/."""
    run = run if isinstance(run, Run) else Run.open(run)
    if quantize is not None:
        raise TunelabError("--quantize is not supported for token-classification runs yet", "export without --quantize (fp32 ONNX)")
    step = step or (lambda message: None)
    sentences = [list(words) for words in run.split("test")["words"]][:max_rows]
    tagger = TokenTagger.load(run.model_dir)
    started = time.perf_counter()
    with export_failures(), atomic.staged_dir(run.path / ONNX_DIR, overwrite=True, keep_partial=False) as stage:
        step("exporting the fp32 ONNX model")
        fp32 = stage / ONNX_FILES["onnx"]
        _export(tagger, fp32)
        step(f"checking parity on {len(sentences)} test sentences")
        session = onnx_session(fp32)
        names = [i.name for i in session.get_inputs()]

        def onnx_forward(batch) -> np.ndarray:
            return session.run(["logits"], {name: batch[name].numpy().astype(np.int64) for name in names})[0]

        tags, probabilities = tagger.word_tags(sentences, PARITY_BATCH)
        onnx_tags, onnx_probabilities = tagger.word_tags(sentences, PARITY_BATCH, forward=onnx_forward)
        words = sum(len(sentence) for sentence in tags)
        same = sum(a == b for ours, theirs in zip(tags, onnx_tags) for a, b in zip(ours, theirs))
        diff = max((float(np.abs(a - b).max()) for a, b in zip(probabilities, onnx_probabilities) if a.size), default=0.0)
        report = ExportReport(
            path=str(run.path / ONNX_DIR),
            files={"onnx": str(run.path / ONNX_DIR / fp32.name)},
            rows=len(sentences),
            fp32_max_abs_diff=diff,
            fp32_argmax_agreement=same / max(1, words),
        )
        if not (diff <= tolerance and same == words):
            raise TunelabError(
                f"the ONNX tagger differs from PyTorch: word tag probabilities by up to {diff:.2e} (tolerance {tolerance:.0e}), "
                f"{words - same} of {words} word tags",
                "nothing was written; report this model's architecture as an export bug",
            )
        report.export_seconds = round(time.perf_counter() - started, 2)
        report.sizes_mb = {"onnx": round(fp32.stat().st_size / 2**20, 2)}
        atomic.write_json(
            stage / "parity.json", {**report.to_dict(), "task": run.task, "compared": "word tag probabilities and tags (each word's first piece)"}
        )
    return report
