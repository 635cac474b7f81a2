"""How the ONNX graph is exported, and how fast ONNX Runtime runs it: three exports of the same models, in one process run.

    torch.export + sdpa         torch.onnx.export(dynamo=True) of the model as loaded (scaled_dot_product_attention): tunelab
                                before 2026-12-06
    torch.export + eager        the same exporter, the attention written out as matrix products and a softmax while exporting
    torchscript + eager         torch.onnx.export(dynamo=False), eager attention: what tunelab.runtime.export does now for the
                                architectures in TORCHSCRIPT_MODEL_TYPES

Each graph is also quantized to dynamic int8 (tunelab.runtime.export.quantize, recipe all-matmuls). Models:
  embedder     MiniLM (all-MiniLM-L6-v2) embedding Factbook chunks of --documents seeded documents, as an index build
               does (tunelab.rag.embed.OnnxEmbedder: sorted by length, batches of 64)
  classifier   --run's fine-tuned classifier (optional) scoring its test texts in batches of 32, as a service's micro-batches

Times are medians of --rounds rounds, the variants interleaved within each round; the ratios are within this run.
Also reported: the smallest cosine (embedder) or the argmax agreement (classifier) with PyTorch fp32. A development
measurement: it chose the exporter, it checks no target. Prints one JSON document with the CPU flags.

    flock /tmp/tunelab-bench.lock nice -n 5 env TUNELAB_THREADS=1 python benchmarks/onnx_exporter_dev.py --run RUN
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

VARIANTS = ("torch.export + sdpa", "torch.export + eager", "torchscript + eager")


@contextlib.contextmanager
def exporting_as(variant: str):
    """tunelab.runtime.export set to export the way `variant` says, for the duration."""
    from tunelab.runtime import export

    saved = export.TORCHSCRIPT_MODEL_TYPES, export._eager_attention
    if variant != "torchscript + eager":
        export.TORCHSCRIPT_MODEL_TYPES = ()
    if variant == "torch.export + sdpa":
        export._eager_attention = lambda model: contextlib.nullcontext()
    try:
        yield export
    finally:
        export.TORCHSCRIPT_MODEL_TYPES, export._eager_attention = saved


def graphs(export_one, workdir: Path, name: str) -> dict[str, Path]:
    """Each variant's fp32 graph and its int8, exported by `export_one(export_module, path)`."""
    from tunelab.runtime.export import quantize

    files = {}
    for variant in VARIANTS:
        fp32 = workdir / f"{name}-{variant.replace(' ', '').replace('+', '-')}.onnx"
        with exporting_as(variant) as export:
            export_one(export, fp32)
        int8 = fp32.with_suffix(".int8.onnx")
        quantize(fp32, int8, "all-matmuls")
        files[variant], files[f"{variant}, int8"] = fp32, int8
    return files


def timed(runs: dict, rounds: int) -> dict:
    """Median seconds of each callable, the callables interleaved within each round."""
    seconds = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            began = time.perf_counter()
            run()
            seconds[name].append(round(time.perf_counter() - began, 3))
    return {name: {"median_s": statistics.median(values), "rounds_s": values} for name, values in seconds.items()}


def embedder_part(workdir: Path, documents: int, rounds: int, threads: int) -> dict:
    from tunelab.rag.embed import OnnxEmbedder, SentenceEmbedder
    from tunelab.rag.embed_choice import factbook_chunks

    reference = SentenceEmbedder("minilm", bf16=False)
    files = graphs(lambda export, path: export.export_embedder(reference.model, path), workdir, "minilm")
    chunks = factbook_chunks(reference.tokenizer)
    texts = [chunk.indexed_text() for chunk in random.Random(0).sample(chunks, min(documents * 45, len(chunks)))]
    expected = reference.encode(texts)
    embedders = {name: OnnxEmbedder("minilm", "onnx", path, reference.max_tokens, reference.dim, threads) for name, path in files.items()}
    cosine = {name: round(float(np.min(np.sum(embedder.encode(texts) * expected, axis=1))), 5) for name, embedder in embedders.items()}
    times = timed({name: (lambda e=embedder: e.encode(texts)) for name, embedder in embedders.items()}, rounds)
    return summary(times, len(texts), "chunks") | {"chunks": len(texts), "min_cosine_vs_torch_fp32": cosine}


def classifier_part(run_path: str, workdir: Path, rounds: int, threads: int) -> dict:
    from tunelab.prediction import load_classifier
    from tunelab.run import Run
    from tunelab.runtime.scorers import onnx_session

    run = Run.open(run_path)
    classifier = load_classifier(run.path)
    texts = sorted(run.split("test")["text"].astype(str).tolist()[:2000], key=len)
    batches = [
        classifier.tokenizer(texts[i : i + 32], padding=True, truncation=True, max_length=classifier.max_length, return_tensors="np")
        for i in range(0, len(texts), 32)
    ]
    expected = classifier.predict_proba(texts).argmax(axis=1)
    files = graphs(lambda export, path: export._export(classifier, path), workdir, "classifier")
    sessions = {name: onnx_session(path, threads) for name, path in files.items()}

    def logits(session) -> np.ndarray:
        names = [i.name for i in session.get_inputs()]
        return np.concatenate([session.run(None, {n: batch[n].astype(np.int64) for n in names})[0] for batch in batches])

    agreement = {name: round(float((logits(session).argmax(axis=1) == expected).mean()), 4) for name, session in sessions.items()}
    times = timed({name: (lambda s=session: logits(s)) for name, session in sessions.items()}, rounds)
    return summary(times, len(texts), "texts") | {"run": str(run.path), "texts": len(texts), "argmax_agreement_with_torch": agreement}


def summary(times: dict, items: int, unit: str) -> dict:
    fp32, int8 = times["torch.export + sdpa"]["median_s"], times["torch.export + sdpa, int8"]["median_s"]
    return {
        "seconds": times,
        f"{unit}_per_s": {name: round(items / t["median_s"], 1) for name, t in times.items()},
        "speedup_vs_torch.export+sdpa_fp32": {name: round(fp32 / t["median_s"], 2) for name, t in times.items() if not name.endswith("int8")},
        "speedup_vs_torch.export+sdpa_int8": {name: round(int8 / t["median_s"], 2) for name, t in times.items() if name.endswith("int8")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", help="a finished classifier run to time too (its test texts)")
    parser.add_argument("--documents", type=int, default=14, help="about 45 chunks each, sampled from the whole Factbook")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json-out", help="also write the JSON here")
    args = parser.parse_args()

    from tunelab import hardware

    threads = hardware.thread_count(None)
    load_at_start = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory() as folder:
        embedder = embedder_part(Path(folder), args.documents, args.rounds, threads)
        classifier = classifier_part(args.run, Path(folder), args.rounds, threads) if args.run else None
    import onnxruntime
    import torch

    report = {
        "benchmark": "onnx_exporter_dev",
        "what": "ONNX Runtime speed of the same models exported three ways (development measurement: it chose the exporter)",
        "threads": threads,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "environment": hardware.environment("fp32"),
        "load_average_at_start": load_at_start,
        "load_average_at_end": round(os.getloadavg()[0], 2),
        "embedder": embedder,
        "classifier": classifier,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n", encoding="utf-8")
    print("done", file=sys.stderr)


if __name__ == "__main__":
    main()
