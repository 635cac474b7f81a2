"""`tunelab predict --file` on 10,000 tweets, one inference runtime at a time, in one process run:

    torch      today's path: the run's PyTorch fp32 model, length-sorted batches of 64
    onnx       ONNX Runtime fp32 (tunelab.runtime: exported on first use, parity-gated)
    onnx-int8  dynamic int8 ONNX, used only if its labels agree with PyTorch's on >= 99.5% of the run's test split
    openvino, openvino-int8   the fp32 ONNX graph compiled by OpenVINO, and NNCF's static int8 of it (same gate), whose
               near ties (top two logits within a margin chosen on the eval split) are scored again by the fp32 graph
    auto       the fastest backend that passes its gate, timed on this CPU on first use and cached in the run

The model is trained the way benchmarks/serve_load.py trains its served model (its prepare_run: tunelab train
defaults on 5,000 tweets), here for 1 epoch (--epochs), or take --run. The texts are a seeded sample of the
built-in `tweets` dataset written to a CSV; each backend runs tunelab.prediction.predict_file on it (read the CSV,
load the model, score, write the predictions CSV: what `tunelab predict --file` does after Python starts), in
--rounds interleaved rounds so that a change in the machine's load hits every backend alike. The first uses
(ONNX export with its parity check, auto's timing) are done and timed before the rounds.

Prints one JSON document (also written to --json-out): texts/s per backend (mean, min, max over rounds), the
ratio to torch, label agreement with torch's CSV, the first-use costs, a profile of where the time goes (model
load, tokenization, forward passes) and the CPU flags.

    flock /tmp/tunelab-bench.lock nice -n 5 env TUNELAB_THREADS=1 python benchmarks/predict_speed.py
    python benchmarks/predict_speed.py --quick          # smoke check, tiny
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tunelab.backends import CHOICES  # noqa: E402 - names only: imports no runtime

BACKENDS = CHOICES  # every backend predict takes, and auto
# Each used only if it passes its parity gate (and, for OpenVINO, is installed; bf16: a CPU with fast bf16).
GATED = tuple(backend for backend in CHOICES if backend not in ("torch", "onnx", "auto"))
TARGET_RATIO = 3.0  # issue #23: >= 3x today's texts/s ...
TARGET_AGREEMENT = 0.995  # ... with the same labels as torch on >= 99.5% of the texts
QUICK = dict(texts=300, rounds=1)
PROFILE_TEXTS = 2000  # the profile's pass: enough texts for each part's share, a fifth of a round's time
BATCH = 64  # predict_file's batch size


def serve_load():
    """benchmarks/serve_load.py, for its prepare_run and served_model (one way to train and describe the benchmark model)."""
    spec = importlib.util.spec_from_file_location("_bench_serve_load", Path(__file__).with_name("serve_load.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def sample_texts(count: int, seed: int = 0) -> list[str]:
    from tunelab.data import load_source

    texts = load_source("tweets")["text"].astype(str)
    return texts.sample(n=min(count, len(texts)), random_state=seed).tolist()


def first_uses(run: Path, reuse_export: bool = False) -> dict:
    """The ONNX export (with its parity check) and auto's timing, done once here and timed: not part of the rounds.

    reuse_export: keep the run's onnx/ as an earlier first use left it (its export, gates and auto's choice are
    then only read, and the seconds here are those of reading them).
    """
    from tunelab.run import Run
    from tunelab.runtime import choose_backend

    if not reuse_export:
        shutil.rmtree(run / "onnx", ignore_errors=True)  # a reused run is exported again, so the first use is measured
    lines: list[str] = []
    refused, export_s = {}, {}
    for backend in GATED:
        started = time.perf_counter()
        try:
            choose_backend(Run.open(run), backend, say=lines.append)
        except Exception as error:  # its gate refused it (or OpenVINO is not installed): recorded, and the rounds leave it out
            refused[backend] = getattr(error, "message", str(error))
        export_s[backend] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    chosen = choose_backend(Run.open(run), "auto", say=lines.append)
    auto_s = time.perf_counter() - started
    return {
        "export_reused": reuse_export,
        "export_and_parity_s": export_s,
        "auto_timing_s": round(auto_s, 1),
        "auto_chose": chosen,
        "refused": refused,
        "parity": json.loads((run / "onnx" / "parity.json").read_text()),
        "backend_choice": json.loads((run / "onnx" / "backend_choice.json").read_text()),
        "said": lines,
    }


def timed_predict_file(run: Path, source: Path, out: Path, backend: str) -> float:
    from tunelab.prediction import predict_file

    started = time.perf_counter()
    predict_file(run, source, out, backend=backend, progress=None)
    return time.perf_counter() - started


def profile(run: Path, texts: list[str], backend: str) -> dict:
    """Where predict_file's time goes for one backend: loading, tokenizing every text, and the forward passes.

    An int8 backend with an fp32 fallback (tunelab.runtime.scorers.FallbackScorer) also shows the share of
    texts it scored again in fp32 and the time that took.
    """
    from tunelab.runtime import load_scorer

    started = time.perf_counter()
    scorer = load_scorer(run, backend, say=lambda line: None)
    load_s = time.perf_counter() - started
    scoring = scorer.classifier if backend == "torch" else getattr(scorer, "fast", scorer)  # what tokenizes
    started = time.perf_counter()
    scoring.tokenizer(texts, truncation=True, max_length=scoring.max_length)
    tokenize_s = time.perf_counter() - started
    started = time.perf_counter()
    logits = scorer.logits(texts, BATCH)
    score_s = time.perf_counter() - started
    figures = {
        "load_s": round(load_s, 2),
        "score_s": round(score_s, 2),
        "tokenize_s": round(tokenize_s, 2),
        "forward_and_batching_s": round(score_s - tokenize_s, 2),
        "tokenize_share_of_score": round(tokenize_s / score_s, 3),
    }
    if hasattr(scorer, "fast"):
        started = time.perf_counter()
        int8 = scorer.fast.logits(texts, BATCH)
        int8_s = time.perf_counter() - started
        figures.update(
            int8_pass_s=round(int8_s, 2),
            fp32_fallback_s=round(score_s - int8_s, 2),
            fp32_fallback_share_of_texts=round(float(scorer.unsure(int8).mean()), 4),
            fp32_fallback_margin=scorer.margin,
            labels_changed_by_fallback=int((int8.argmax(axis=1) != logits.argmax(axis=1)).sum()),
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", help="a finished classifier run (default: train minilm on tweets); its onnx/ is rewritten")
    parser.add_argument("--train-samples", type=int, default=5000, help="training rows of the benchmark model (tunelab's max_train_samples)")
    parser.add_argument("--epochs", type=float, default=1.0, help="training epochs of the benchmark model")
    parser.add_argument("--workdir", default="runs", help="where the model's run is trained (and reused when its settings match)")
    parser.add_argument("--texts", type=int, default=10_000, help="tweets to predict")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every backend")
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="the backends timed in the rounds, comma-separated (torch and auto always are; every gated one still has its first use measured)",
    )
    parser.add_argument("--reuse-export", action="store_true", help="keep --run's onnx/ from an earlier first use (first-use costs are then not measured)")
    parser.add_argument("--json-out", default="benchmarks/results/predict_speed.json")
    parser.add_argument("--quick", action="store_true", help=f"smoke check: a tiny model trained in a temporary folder, {QUICK}")
    args = parser.parse_args()

    import pandas as pd

    from tunelab import hardware

    bench = serve_load()
    temporary = tempfile.TemporaryDirectory()
    if args.quick:
        args.train_samples, args.texts, args.rounds = bench.QUICK["train_samples"], QUICK["texts"], QUICK["rounds"]
        if not args.run:
            args.workdir = temporary.name
    load_at_start = round(os.getloadavg()[0], 2)
    run = bench.prepare_run(args)
    texts = sample_texts(args.texts)
    source = Path(temporary.name) / "tweets.csv"
    pd.DataFrame({"text": texts}).to_csv(source, index=False)

    print("first use: ONNX and OpenVINO export, parity checks, auto's timing...", file=sys.stderr)
    first = first_uses(run, args.reuse_export)
    asked = {"torch", "auto", *args.backends.split(",")}
    backends = [b for b in BACKENDS if b in asked and b not in first["refused"]]
    seconds: dict[str, list[float]] = {backend: [] for backend in backends}
    outputs = {backend: Path(temporary.name) / f"{backend}.csv" for backend in backends}
    for round_number in range(args.rounds):
        for backend in backends:
            print(f"round {round_number + 1}/{args.rounds}: predict --file --backend {backend}...", file=sys.stderr)
            seconds[backend].append(timed_predict_file(run, source, outputs[backend], backend))
    labels = {backend: pd.read_csv(path)["label"].astype(str).to_numpy() for backend, path in outputs.items()}
    torch_speed = len(texts) / statistics.mean(seconds["torch"])
    results = {}
    for backend in backends:
        speeds = [len(texts) / s for s in seconds[backend]]
        results[backend] = {
            "texts_per_s_mean": round(statistics.mean(speeds), 1),
            "texts_per_s_min": round(min(speeds), 1),
            "texts_per_s_max": round(max(speeds), 1),
            "ratio_to_torch": round(statistics.mean(speeds) / torch_speed, 2),
            "label_agreement_with_torch": round(float((labels[backend] == labels["torch"]).mean()), 4),
        }
    results["auto"]["is"] = first["auto_chose"]
    print("profile...", file=sys.stderr)
    profiled = [backend for backend in backends if backend != "auto"] + [first["auto_chose"]]
    profiles = {backend: profile(run, texts[:PROFILE_TEXTS], backend) for backend in dict.fromkeys(profiled)}
    auto = results["auto"]
    report = {
        "benchmark": "predict_speed",
        "what": "tunelab.prediction.predict_file (tunelab predict --file) on the same CSV of tweets, per --backend",
        "model": "minilm (all-MiniLM-L6-v2, 22.7M parameters)",
        "run": str(run),
        "trained_model": bench.served_model(run),
        "texts": f"{len(texts)} tweets, a seeded sample (seed 0) of the built-in `tweets` dataset, median {int(statistics.median(len(t) for t in texts))} characters",
        "rounds": args.rounds,
        "backends_in_rounds": backends,
        "threads": hardware.thread_count(None),
        "environment": hardware.environment("fp32"),
        "load_average_at_start": load_at_start,
        "load_average_at_end": round(os.getloadavg()[0], 2),
        "first_use": first,
        "seconds_per_round": {backend: [round(s, 2) for s in values] for backend, values in seconds.items()},
        "results": results,
        "profile_one_pass": {"texts": min(len(texts), PROFILE_TEXTS), **profiles},
        "targets": {
            f"auto_at_least_{TARGET_RATIO:g}x_torch_texts_per_s": auto["ratio_to_torch"] >= TARGET_RATIO,
            f"auto_same_labels_as_torch_on_at_least_{TARGET_AGREEMENT:.1%}": auto["label_agreement_with_torch"] >= TARGET_AGREEMENT,
        },
    }
    text = json.dumps(report, indent=2)
    print(text)
    if not args.quick:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(text + "\n", encoding="utf-8")
    temporary.cleanup()


if __name__ == "__main__":
    main()
