"""How many of MiniLM's 6 transformer layers the served tweets model keeps (issue #23), chosen on the EVAL split only.

The rule, fixed before this script first ran:

    N is the fewest layers among the candidates 1, 2, 3 whose mean eval accuracy over training seeds 42, 43 and 44
    is at least 0.70 (a 5-point margin over issue 23's test floor of 0.65). If none reaches it, N stays 6 (no change).

Speed decides nothing (fewer layers never compute more); it is measured to say what the choice buys.

Data: the tweets rows benchmarks/serve_load.py's served model is trained on: tunelab's seed-42 split of `tweets`
with 5,000 training rows (serve_load.prepare_run's settings). Its train rows are each run's data and its eval rows
both its --eval-data and its --test-data, so the test split never reaches these runs. A seed changes the head's
initialisation and the batch order, not the rows. Training: `tunelab train`'s defaults (3 epochs, lr auto, the best
epoch by eval accuracy, bf16 where the CPU has it) with `layers: N`, the TF-IDF baseline off (unused here). A run's
eval accuracy is metrics.json's "train" best_eval_accuracy: the eval accuracy of the epoch it chose by that figure,
a little optimistic, and alike for every N. The reference (6 layers, all of them) is trained at seed 42 only, or is
--reference-run: serve_load's own served model, trained by `tunelab train` on the same rows (checked) at seed 42.

Speed: each N's seed-42 model exported to ONNX fp32 (`tunelab export`; its parity check reads the eval rows, the
runs' "test"), then scored by the fastest backend of issue 23 this CPU offers — openvino-bf16 with AVX-512 BF16 or
AMX, else OpenVINO fp32, else ONNX Runtime fp32 — as `tunelab serve` opens it (runtime.scorers.open_scorer), on
1,024 eval texts: texts/s in batches of 32 and ms a text one at a time, the best of --rounds interleaved rounds, and
the argmax agreement of that backend with PyTorch on those texts. Timing needs the lock:

    flock /tmp/tunelab-bench.lock nice -n 5 python benchmarks/layers_dev.py --train-only --layers 1     # one candidate's runs
    flock /tmp/tunelab-bench.lock nice -n 5 python benchmarks/layers_dev.py --out benchmarks/results/layers_dev-amx.json

Runs are reused when their metrics.json exists with the same settings, so the training can be split over
several locked invocations and the last one only measures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from finetune_vs_tutorial import summary  # noqa: E402 - benchmarks/finetune_vs_tutorial.py, beside this script: the 95% t interval over seeds

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CANDIDATES = (1, 2, 3)
SEEDS = (42, 43, 44)
REFERENCE = 6  # MiniLM's layer count: today's served model
REFERENCE_SEEDS = (42,)
MIN_MEAN_EVAL_ACCURACY = 0.70
RULE = (
    f"the fewest layers among {list(CANDIDATES)} whose mean eval accuracy over seeds {list(SEEDS)} is >= {MIN_MEAN_EVAL_ACCURACY} "
    f"(a margin over the 0.65 test floor); none: {REFERENCE} (no change). Fixed in the docstring before the first run."
)
SERVED = dict(model="minilm", data="tweets", max_train_samples=5000)  # serve_load.prepare_run's settings
SPEED_BACKENDS = ("openvino-bf16", "openvino", "onnx")  # the first this CPU and install offer
TIMED_TEXTS = 1024
SINGLE_TEXTS = 256


def write_dev_splits(workdir: Path) -> dict[str, Path]:
    """serve_load's train and eval rows as parquet files (its test rows are not written)."""
    from tunelab.config import TrainConfig
    from tunelab.data import load_splits

    files = {name: workdir / f"tweets-seed42-{name}.parquet" for name in ("train", "eval")}
    if not all(path.is_file() for path in files.values()):
        splits, _ = load_splits(TrainConfig(**SERVED))
        workdir.mkdir(parents=True, exist_ok=True)
        for name, path in files.items():
            splits[name][["text", "label"]].to_parquet(path, index=False)
    return files


def run_settings(files: dict[str, Path], layers: int, seed: int) -> dict:
    return dict(
        model=SERVED["model"],
        data=str(files["train"]),
        eval_data=str(files["eval"]),
        test_data=str(files["eval"]),  # the runs' "test" is the eval rows: the test split is never read here
        layers=None if layers == REFERENCE else layers,
        seed=seed,
        baseline=False,
    )


def trained(workdir: Path, files: dict[str, Path], layers: int, seed: int) -> Path:
    """The run of `layers` at `seed`, trained now unless one with the same settings is there."""
    from tunelab.config import TrainConfig
    from tunelab.run import Run
    from tunelab.training.classify import train

    wanted = run_settings(files, layers, seed)
    out = workdir / f"layers{layers}-seed{seed}"
    if (out / "metrics.json").is_file() and all(Run.open(out).config.get(key) == value for key, value in wanted.items()):
        print(f"reusing {out}", file=sys.stderr)
        return out
    print(f"training {layers} layer(s), seed {seed}...", file=sys.stderr, flush=True)
    return train(TrainConfig(**wanted, out=str(out), overwrite=True)).path


def reference_run(path: Path, files: dict[str, Path]) -> Path:
    """serve_load's served model as the 6-layer reference, once its settings and its train and eval rows are checked to be the dev runs'."""
    import pandas as pd

    from tunelab.run import Run

    run = Run.open(path)
    wanted = {**SERVED, "seed": 42, "layers": None}
    if any(run.config.get(key) != value for key, value in wanted.items()):
        raise SystemExit(f"--reference-run {path} was not trained with {wanted}")
    for name, file in files.items():
        if sorted(run.split(name)["text"].astype(str)) != sorted(pd.read_parquet(file)["text"].astype(str)):
            raise SystemExit(f"--reference-run {path}: its {name} rows are not the dev runs'")
    print(f"reference: {path}", file=sys.stderr)
    return run.path


def accuracy_figures(runs: dict[int, Path]) -> dict:
    from tunelab.run import Run

    per_seed = {}
    for seed, path in runs.items():
        metrics = Run.open(path).metrics
        per_seed[str(seed)] = {
            "eval_accuracy": metrics["train"]["best_eval_accuracy"],
            "eval_rows": len(Run.open(path).split("eval")),
            "best_checkpoint": metrics["train"].get("best_checkpoint"),
            "train_seconds": metrics["train"].get("train_runtime_s"),
        }
    over_seeds = summary([seed["eval_accuracy"] for seed in per_seed.values()])
    out = {"seeds": per_seed, "mean_eval_accuracy": over_seeds["mean"]}
    if over_seeds["std"] is not None:
        out.update(sd=over_seeds["std"], ci95_over_seeds=over_seeds["ci95_seeds"])
    return out


def speed_backend() -> tuple[str, dict[str, str]]:
    from tunelab.runtime.scorers import not_installed

    passed_over = {}
    for backend in SPEED_BACKENDS:
        reason = not_installed(backend)
        if reason is None:
            return backend, passed_over
        passed_over[backend] = reason
    raise SystemExit("no backend to time")


def measure_speed(runs: dict[int, Path], backend: str, rounds: int) -> dict:
    """Each run's scorer on `backend`, timed in interleaved rounds (the order rotates), the best round kept."""
    from tunelab.models.classifier import Classifier
    from tunelab.run import Run
    from tunelab.runtime.export import export_onnx, split_texts
    from tunelab.runtime.scorers import open_scorer

    scorers, agreement, texts = {}, {}, {}
    for layers, path in runs.items():
        run = Run.open(path)
        if not (path / "onnx" / "model.onnx").is_file():
            print(f"exporting {path} to ONNX fp32...", file=sys.stderr, flush=True)
            export_onnx(run, None)
        texts[layers] = split_texts(run, "eval", TIMED_TEXTS)
        scorers[layers] = open_scorer(run, backend)
        reference = Classifier.load(run.model_dir, run.config.get("max_length")).logits(texts[layers])
        agreement[layers] = round(float((scorers[layers].logits(texts[layers], 32).argmax(1) == reference.argmax(1)).mean()), 4)
    batch32 = {layers: [] for layers in runs}
    single = {layers: [] for layers in runs}
    order = list(runs)
    for round_ in range(rounds):
        for layers in order[round_ % len(order) :] + order[: round_ % len(order)]:
            scorer, some = scorers[layers], texts[layers]
            chunks = [some[i : i + 32] for i in range(0, len(some), 32)]
            scorer.logits(chunks[0], 32)  # warm
            started = time.perf_counter()
            for chunk in chunks:
                scorer.logits(chunk, 32)
            batch32[layers].append(len(some) / (time.perf_counter() - started))
            started = time.perf_counter()
            for text in some[:SINGLE_TEXTS]:
                scorer.logits([text], 1)
            single[layers].append((time.perf_counter() - started) / SINGLE_TEXTS * 1000)
    fastest = max(max(values) for values in batch32.values())
    by_layers = {
        str(layers): {
            "texts_per_s_batch32": round(max(batch32[layers]), 1),
            "texts_per_s_batch32_rounds": [round(value, 1) for value in batch32[layers]],
            "ms_per_text_one_at_a_time": round(min(single[layers]), 3),
            "eval_argmax_agreement_with_torch": agreement[layers],
            "share_of_fastest": round(max(batch32[layers]) / fastest, 3),
            "model_mb": round((runs[layers] / "model" / "model.safetensors").stat().st_size / 1e6, 1),
        }
        for layers in runs
    }
    return {
        "timed": f"{TIMED_TEXTS} eval texts in batches of 32, then the first {SINGLE_TEXTS} one at a time; "
        f"{rounds} rounds interleaving the models (the order rotating), the best round kept; agreement on the same texts",
        "by_layers": by_layers,
    }


def choose(figures: dict[str, dict]) -> dict:
    """The rule; a candidate above the chosen one may be left out (--layers), one below it may not."""
    for layers in CANDIDATES:
        if str(layers) not in figures:
            raise SystemExit(f"the rule needs candidate {layers} (no runs of it here): add it to --layers")
        if figures[str(layers)]["mean_eval_accuracy"] >= MIN_MEAN_EVAL_ACCURACY:
            return {"layers": layers, "why": f"the fewest candidate layers with mean eval accuracy >= {MIN_MEAN_EVAL_ACCURACY}"}
    return {"layers": REFERENCE, "why": f"no candidate reached mean eval accuracy {MIN_MEAN_EVAL_ACCURACY}: no change"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="runs/layers-dev", help="where the runs are trained (and reused)")
    parser.add_argument("--layers", type=int, nargs="+", default=[*CANDIDATES, REFERENCE], help="which layer counts to train or measure")
    parser.add_argument("--train-only", action="store_true", help="train (or find) the runs of --layers, measure nothing")
    parser.add_argument("--reference-run", help=f"the {REFERENCE}-layer reference: serve_load's served model instead of a run trained here")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()

    from tunelab import hardware

    load_at_start = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    workdir = Path(args.workdir)
    files = write_dev_splits(workdir)
    runs = {
        layers: {42: reference_run(Path(args.reference_run), files)}
        if layers == REFERENCE and args.reference_run
        else {seed: trained(workdir, files, layers, seed) for seed in (REFERENCE_SEEDS if layers == REFERENCE else SEEDS)}
        for layers in args.layers
    }
    if args.train_only:
        return
    if REFERENCE not in args.layers:
        raise SystemExit(f"the measurement needs the reference: add {REFERENCE} to --layers")
    figures = {str(layers): {"layers": layers, **accuracy_figures(by_seed)} for layers, by_seed in runs.items()}
    backend, passed_over = speed_backend()
    speed = measure_speed({layers: by_seed[42] for layers, by_seed in runs.items()}, backend, args.rounds)
    report = {
        "benchmark": "layers_dev",
        "rule": RULE,
        "chosen": choose(figures),
        "candidates_not_run": [layers for layers in CANDIDATES if layers not in args.layers],
        "chosen_on": "the eval split (tunelab's seed-42 split of tweets, as serve_load's model); the test split never read",
        "data": {"train": str(files["train"]), "eval": str(files["eval"]), **SERVED, "split_seed": 42},
        "reference_run": args.reference_run,
        "training": "tunelab train defaults with layers N (None: all 6), seed per run, baseline off; eval = the eval split, test = the eval split",
        "accuracy": figures,
        "speed": {"backend": backend, "passed_over": passed_over, "threads": hardware.thread_count(None), **speed},
        "environment": hardware.environment("fp32"),
        "load_average_at_start": load_at_start,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
