"""Serving speed under load: tunelab's micro-batched service (torch, onnx, onnx-int8) against a naive
service (one forward pass per request, no batching), in one process run.

Trains a minilm run on a small tweets subset (or takes --run), exports it to ONNX + int8, then for each
variant starts the service in its own process on 127.0.0.1 and sends a fixed number of single-tweet
requests at concurrency 1, 8 and 32 with httpx (async). Prints JSON: p50/p95/p99 latency, requests/s
and failed requests per variant and concurrency, and the targets.

    nice -n 5 python benchmarks/serve_load.py
    nice -n 5 python benchmarks/serve_load.py --run runs/serve-bench --requests 300

The naive baseline is the usual first deployment: a FastAPI `def` endpoint that tokenizes the one text
and runs the PyTorch model (FastAPI runs it in its thread pool).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
from pydantic import BaseModel

LEVELS = (1, 8, 32)
VARIANTS = ("naive-torch", "torch", "onnx", "onnx-int8")


class NaiveBody(BaseModel):  # module level: FastAPI resolves the (postponed) annotation by name
    texts: list[str]


# --- the naive baseline server (run in a child process: `serve_load.py --naive-server RUN PORT THREADS`) ---
def naive_server(run: str, port: int, threads: int) -> None:
    import torch
    import uvicorn
    from fastapi import FastAPI

    from tunelab.predict import describe, load_classifier

    if threads:
        torch.set_num_threads(threads)
    classifier = load_classifier(run)
    app = FastAPI()

    @app.get("/ready")
    def ready() -> dict:
        return {"status": "ready"}

    @app.post("/v1/predict")
    def predict(body: NaiveBody) -> dict:
        # One forward pass per request, padded to its own length: no batching across requests.
        return {"predictions": describe(classifier.labels, classifier.predict_proba(body.texts))}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# --- the load generator ---------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(variant: str, run: Path, port: int, threads: int) -> subprocess.Popen:
    if variant == "naive-torch":
        command = [sys.executable, __file__, "--naive-server", str(run), str(port), str(threads)]
    else:
        command = [sys.executable, "-c", "from tunelab.cli import main; main()", "serve", str(run), "--backend", variant,
                   "--port", str(port), "--log-level", "warning"] + (["--threads", str(threads)] if threads else [])
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TUNELAB_API_KEY": ""})


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become ready")


async def load(url: str, texts: list[str], concurrency: int, requests: int) -> dict:
    """`requests` single-text requests, at most `concurrency` in flight; bounded in count and time."""
    import httpx

    latencies: list[float] = []
    failed = 0
    statuses: dict[str, int] = {}
    next_index = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def worker() -> None:
            nonlocal next_index, failed
            while next_index < requests:
                text = texts[next_index % len(texts)]
                next_index += 1
                started = time.perf_counter()
                try:
                    response = await client.post("/v1/predict", json={"texts": [text]})
                    ok = response.status_code == 200 and len(response.json()["predictions"]) == 1
                    statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1
                except httpx.HTTPError as error:
                    ok = False
                    statuses[type(error).__name__] = statuses.get(type(error).__name__, 0) + 1
                latencies.append(time.perf_counter() - started)
                failed += not ok

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "failed": failed,
        **({"statuses": statuses} if failed else {}),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


def measure(variant: str, run: Path, texts: list[str], requests: int, warmup: int, threads: int) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start(variant, run, port, threads)
    try:
        wait_ready(url, process)
        asyncio.run(load(url, texts, 4, warmup))
        return {str(c): asyncio.run(load(url, texts, c, requests)) for c in LEVELS}
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def prepare_run(run: str | None, train_samples: int) -> Path:
    from tunelab.config import TrainConfig
    from tunelab.run import Run
    from tunelab.train.classify import train

    if run:
        return Run.open(run).path
    out = Path("runs/serve-bench-minilm")
    if (out / "metrics.json").is_file():
        return out
    print(f"training minilm on {train_samples} tweets (speed, not accuracy, matters here)...", file=sys.stderr)
    config = TrainConfig(model="minilm", data="tweets", epochs=1, max_train_samples=train_samples, out=str(out), overwrite=True)
    return train(config, progress=False).path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", help="a finished classifier run (default: train minilm on tweets)")
    parser.add_argument("--train-samples", type=int, default=600)
    parser.add_argument("--requests", type=int, default=300, help="requests per concurrency level")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--int8-gate", type=float, default=0.95,
                        help="argmax agreement the int8 export must reach here (tunelab export: 0.995); a one-minute "
                             "run has near-tie logits that int8 rounding flips, and speed is what is measured")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per forward pass, the same for every variant (0: runtime default)")
    parser.add_argument("--naive-server", nargs=3, metavar=("RUN", "PORT", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_server:
        naive_server(args.naive_server[0], int(args.naive_server[1]), int(args.naive_server[2]))
        return

    from tunelab.run import Run
    from tunelab.serve.onnx import export_onnx

    run = prepare_run(args.run, args.train_samples)
    if not (run / "onnx" / "model.int8.onnx").is_file():
        print("exporting to ONNX + int8...", file=sys.stderr)
        export_onnx(run, "int8", min_agreement=args.int8_gate)
    parity = json.loads((run / "onnx" / "parity.json").read_text())
    texts = Run.open(run).split("test")["text"].astype(str).tolist()

    results = {}
    for variant in VARIANTS:
        print(f"load test: {variant}...", file=sys.stderr)
        results[variant] = measure(variant, run, texts, args.requests, args.warmup, args.threads)

    naive32 = results["naive-torch"]["32"]["requests_per_s"]
    best32 = results["onnx-int8"]["32"]["requests_per_s"]
    failed = sum(level["failed"] for variant in results.values() for level in variant.values())
    report = {
        "model": "minilm (all-MiniLM-L6-v2, 22.7M parameters)",
        "run": str(run),
        "texts": f"tweets test split, {len(texts)} texts, median {int(np.median([len(t) for t in texts]))} characters; one text per request",
        "requests_per_level": args.requests,
        "service_settings": "tunelab serve defaults: max_batch 32, max_wait_ms 2, 1 worker",
        "threads_per_forward_pass": args.threads or "runtime default",
        "cpu_cores": os.cpu_count(),
        "load_average_at_end": round(os.getloadavg()[0], 2),
        "parity": {**{k: parity[k] for k in ("rows", "fp32_max_abs_diff", "int8_argmax_agreement")},
                   "int8_gate_used": args.int8_gate, "run_test_accuracy": Run.open(run).metrics.get("accuracy")},
        "results": results,
        "onnx_int8_vs_naive_rps_at_32": round(best32 / naive32, 2),
        "targets": {
            "onnx_int8_at_32_at_least_3x_naive": best32 >= 3 * naive32,
            "onnx_int8_p50_at_1_at_most_15ms": results["onnx-int8"]["1"]["p50_ms"] <= 15,
            "zero_failed_requests": failed == 0,
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
