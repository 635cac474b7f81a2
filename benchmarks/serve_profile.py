"""Where a request's time goes in `tunelab serve`: measured stage by stage, at concurrency 1 and 32.

The service is the app `tunelab serve RUN --backend B` runs (tunelab.serve.app.create_app under uvicorn with
serve()'s options), started in a child process (`--server`) that adds wall-clock timers around each stage
of the request path — nothing else changes:

    asgi         the app, from the ASGI call to the last byte of the response: routing, middleware,
                 pydantic validation, the route, response validation and JSON encoding, and the wait below
    submit       inside it, the micro-batcher's submit(): queueing, the batching window (max_wait_ms),
                 the forward pass, the hand-back to the event loop
    forward      inside that, holder.score on the batch (the forward thread): the four below and the rest
    tokenize     the tokenizer on the batch's texts (tunelab.textpairs.tokenize), and on the near ties' again
    pad          tokenizer.pad on each length-sorted slice (the near ties' too)
    infer        the fast model's session.run (int8 for openvino-int8)
    rescore      the fp32 model's session.run on the near ties (FallbackScorer), when the backend has one

Per request at concurrency 1 this splits the client's latency into: outside the app (the client, the
kernel's loopback, uvicorn's HTTP parsing and writing: client latency - asgi), the framework (asgi - submit),
waiting (submit - forward: the batching window and the hand-backs) and each forward stage.

CPU: the server's process CPU time (all threads, OpenVINO's included) and the load generator's own
(time.process_time in this process, which does nothing else while it runs) over each level's wall time.
With py-spy installed (a dev tool, not a dependency), the server's Python threads are also sampled during
each level and each sample is put in a stage by its stack (FORWARD_STACK_STAGES, FRAME_STAGES).

The load generator is benchmarks/serve_load.py's (`load`), so the figures describe what that benchmark measures.

    python benchmarks/serve_profile.py --run RUN --backend openvino-int8 --requests 600
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from serve_load import free_port, load, stop, wait_ready  # noqa: E402  (this script's folder is on sys.path)

LEVELS = (1, 32)
PROFILE_PATH = "/_profile"  # GET: the stage timers and the process CPU time; DELETE: reset them
FORWARD_STAGES = ("forward", "tokenize", "pad", "infer", "rescore")

# How a py-spy sample (a stack of frames "function (file:line)", root first) is put in a stage. A sample of the
# forward thread goes to its forward stage, whatever lies below it: (stage, substrings anywhere on the stack),
# the first match in this order wins.
FORWARD_STACK_STAGES = (
    ("rescore (fp32 forward of near ties)", ("rescore (",)),
    ("tokenize", ("textpairs.py", "tokenization_utils", "tokenizers")),
    ("forward (model run)", ("OpenVinoSession.run", "onnxruntime", "torch/nn")),
    ("forward (other)", ("holder.py",)),
)
# Any other sample goes to the stage of its innermost frame that one of these names (every request's stack
# starts in uvicorn's protocol and the middleware, so the innermost frame says where the time went).
FRAME_STAGES = (
    ("prometheus metrics", ("prometheus_client",)),
    ("pydantic validation and JSON", ("pydantic", "json/", "fastapi/encoders.py", "fastapi/_compat", "serialize_response")),
    ("route code (softmax, describe)", ("predict_router.<locals>.predict", "tunelab/prediction.py", "models/classifier.py")),
    ("batcher", ("tunelab/serve/batching.py",)),
    ("ASGI framework (starlette, fastapi, middleware)", ("starlette", "fastapi", "tunelab/serve/common.py", "RequestMetrics")),
    ("HTTP protocol (uvicorn)", ("uvicorn/protocols", "httptools")),
    # The forward thread blocked on the executor's queue between batches: waiting, though py-spy's idle test does not always see it.
    ("forward thread waiting for a batch", ("_worker (concurrent/futures/thread.py",)),
    # The main thread's root frames alone: uvloop's C loop, which py-spy shows as asyncio's Runner.run; its own
    # work (sockets, callbacks) and, where py-spy's idle test misses it, its wait in epoll: an upper bound.
    ("event loop and hand-offs (asyncio, uvloop, executor)", ("asyncio", "uvloop", "concurrent/futures", "threading.py")),
)


# --- the server (a child process) ---------------------------------------------------------------
class Timers:
    """Seconds and calls per stage; one lock, as the forward thread and the event loop both add."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.seconds = collections.Counter()
            self.thread_cpu = collections.Counter()
            self.calls = collections.Counter()
            self.items = collections.Counter()

    def add(self, stage: str, seconds: float, items: int = 0, thread_cpu: float = 0.0) -> None:
        with self.lock:
            self.seconds[stage] += seconds
            self.thread_cpu[stage] += thread_cpu
            self.calls[stage] += 1
            self.items[stage] += items

    def timed(self, stage: str, function, count=None):
        """`function` timed: wall seconds, and the calling thread's CPU seconds (what it computed itself, not the time it was starved)."""

        def wrapper(*args, **kwargs):
            started, cpu = time.perf_counter(), time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.add(stage, time.perf_counter() - started, count(*args, **kwargs) if count else 0, time.thread_time() - cpu)

        return wrapper

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "seconds": dict(self.seconds),
                "thread_cpu": dict(self.thread_cpu),
                "calls": dict(self.calls),
                "items": dict(self.items),
                "process_cpu_s": time.process_time(),
            }


def instrument(model, timers: Timers):
    """The loaded model with its tokenizer and sessions timed (a classifier served by an ONNX or OpenVINO scorer)."""
    from tunelab.runtime.scorers import FallbackScorer

    scorer = model.scorer
    fast = scorer.fast if isinstance(scorer, FallbackScorer) else scorer
    if not hasattr(fast, "session"):
        raise SystemExit("serve_profile.py times ONNX and OpenVINO scorers; torch has no session to time")
    fast.tokenizer.pad = timers.timed("pad", fast.tokenizer.pad)
    fast.session.run = timers.timed("infer", fast.session.run, lambda outputs, feed: len(next(iter(feed.values()))))
    if isinstance(scorer, FallbackScorer):
        scorer.exact.session.run = timers.timed("rescore", scorer.exact.session.run, lambda outputs, feed: len(next(iter(feed.values()))))
    return model


def server(run_dir: str, port: int, backend: str, threads: int) -> None:
    import uvicorn

    import tunelab.textpairs as textpairs
    from tunelab.serve.app import check_servable, create_app, task_loader
    from tunelab.serve.settings import ServeSettings

    timers = Timers()
    settings = ServeSettings(backend=backend, threads=threads or None, port=port, log_level="warning")
    run = check_servable(run_dir, settings.backend, settings.threads)
    textpairs.tokenize = timers.timed("tokenize", textpairs.tokenize, lambda tokenizer, inputs, **kwargs: len(inputs))
    loader = task_loader(run, settings)
    app = create_app(lambda: instrument(loader(), timers), settings, api_key="", pairs=run.is_pair_classifier, task=run.task)
    batcher = app.state.batcher
    batcher.score = timers.timed("forward", batcher.score, lambda texts: len(texts))
    submit = batcher.submit

    async def timed_submit(texts):
        started = time.perf_counter()
        try:
            return await submit(texts)
        finally:
            timers.add("submit", time.perf_counter() - started, len(texts))

    batcher.submit = timed_submit

    async def profiled(scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == PROFILE_PATH:
            if scope["method"] == "DELETE":
                timers.reset()
            # What uvicorn chose (its `auto`): the running loop's class, and which HTTP protocol module it loaded.
            http = "httptools" if "uvicorn.protocols.http.httptools_impl" in sys.modules else "h11"
            body = json.dumps({**timers.snapshot(), "event_loop": type(asyncio.get_running_loop()).__module__, "http_parser": http}).encode()
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed_send(message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                timers.add("asgi", time.perf_counter() - started)

        await app(scope, receive, timed_send)

    # serve()'s uvicorn options: uvicorn picks its event loop and HTTP parser itself (uvloop, httptools when installed).
    uvicorn.run(profiled, host=settings.host, port=port, log_level=settings.log_level)


# --- the profile (this process drives the load) ----------------------------------------------------
def stack_stage(stack: str) -> str:
    """The stage of one py-spy stack (frames separated by ';', root first): FORWARD_STACK_STAGES, else FRAME_STAGES; or 'other'."""
    for stage, needles in FORWARD_STACK_STAGES:
        if any(needle in stack for needle in needles):
            return stage
    for frame in reversed(stack.split(";")):
        for stage, needles in FRAME_STAGES:
            if any(needle in frame for needle in needles):
                return stage
    return "other"


def stack_shares(raw: str) -> dict:
    """py-spy's raw (collapsed) output as each stage's share of the sampled Python-thread time."""
    counts: collections.Counter = collections.Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[stack_stage(stack)] += int(count)
    total = sum(counts.values())
    return {"samples": total, "share": {stage: round(n / total, 3) for stage, n in counts.most_common()} if total else {}}


def py_spy(pid: int, out: Path) -> subprocess.Popen | None:
    executable = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(executable).exists():
        return None
    command = [executable, "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "--nonblocking", "--threads", "-o", str(out)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def stop_py_spy(spy: subprocess.Popen, out: Path) -> dict | None:
    stop(spy, signal.SIGINT, 60)  # py-spy writes its stacks on SIGINT
    if not out.is_file():
        return {"error": (spy.stderr.read() or "")[-500:]}
    return stack_shares(out.read_text(encoding="utf-8"))


def ms(seconds: float, per: int) -> float | None:
    return round(seconds / per * 1000, 3) if per else None


def breakdown(stages: dict, client: dict, wall: float, client_cpu: float, server_cpu: float) -> dict:
    """A level's figures: per request (ms) and as shares of the client's mean latency, the CPU used by each side."""
    seconds, calls, items = stages["seconds"], stages["calls"], stages["items"]
    requests = calls.get("asgi", 0)
    get = seconds.get
    forward_parts = {name: get(name, 0.0) for name in ("tokenize", "pad", "infer", "rescore")}
    parts = {
        "outside the app (client, loopback, uvicorn HTTP parse/write)": client["mean_s"] * requests - get("asgi", 0.0),
        "framework (routing, middleware, validation, route, JSON)": get("asgi", 0.0) - get("submit", 0.0),
        "waiting (batching window, queue, hand-back)": get("submit", 0.0) - get("forward", 0.0),
        **{f"forward: {name}": value for name, value in forward_parts.items()},
        "forward: other (sorting, feeds, copies)": get("forward", 0.0) - sum(forward_parts.values()),
    }
    total = client["mean_s"] * requests
    return {
        "requests_measured_in_server": requests,
        "client_mean_latency_ms": round(client["mean_s"] * 1000, 3),
        "per_request_ms": {name: ms(value, requests) for name, value in parts.items()},
        "share_of_latency": {name: round(value / total, 3) if total else None for name, value in parts.items()},
        "batches": calls.get("forward", 0),
        "texts_per_batch": round(items.get("forward", 0) / calls["forward"], 2) if calls.get("forward") else None,
        "rescored_texts": items.get("rescore", 0),
        "per_batch_ms": {name: ms(get(name, 0.0), calls.get("forward", 0)) for name in FORWARD_STAGES},
        # The forward thread's own CPU per batch: wall minus this is time the thread waited (starved, or on OpenVINO's own threads).
        "per_batch_thread_cpu_ms": {name: ms(stages["thread_cpu"].get(name, 0.0), calls.get("forward", 0)) for name in FORWARD_STAGES},
        "server_cpu_ms_per_request": ms(server_cpu, requests),
        "load_generator_cpu_ms_per_request": ms(client_cpu, requests),
        "forward_thread_busy_share": round(get("forward", 0.0) / wall, 3),
        "cpu_cores_used": {"server": round(server_cpu / wall, 3), "load_generator": round(client_cpu / wall, 3)},
    }


def profile_level(url: str, server_pid: int, texts: list[str], concurrency: int, requests: int, spy_dir: Path | None) -> dict:
    import httpx

    httpx.delete(url + PROFILE_PATH)
    out = spy_dir / f"py-spy-c{concurrency}.txt" if spy_dir else None
    spy = py_spy(server_pid, out) if out else None
    if spy:
        time.sleep(1.0)  # py-spy attaches before the load starts
    before = httpx.get(url + PROFILE_PATH).json()
    client_cpu, started = time.process_time(), time.perf_counter()
    result = asyncio.run(load(url, texts, concurrency, requests))
    wall, client_cpu = time.perf_counter() - started, time.process_time() - client_cpu
    after = httpx.get(url + PROFILE_PATH).json()
    stacks = stop_py_spy(spy, out) if spy else None
    client = {"mean_s": result["mean_ms"] / 1000}
    figures = breakdown(after, client, wall, client_cpu, after["process_cpu_s"] - before["process_cpu_s"])
    return {"load": result, **figures, "py_spy_python_threads": stacks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", help="a finished classifier run whose backend is exported (serve_load.py --run leaves it so)")
    parser.add_argument("--backend", default="openvino-int8")
    parser.add_argument("--requests", type=int, default=600, help="single-text requests per concurrency level")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--threads", type=int, default=0, help="threads per forward pass (0: the service's default)")
    parser.add_argument("--no-py-spy", action="store_true", help="timers and CPU only")
    parser.add_argument("--stacks", help="a folder to keep py-spy's raw stacks in (py-spy-c1.txt, py-spy-c32.txt); default: a temporary one")
    parser.add_argument("--server", nargs=4, metavar=("RUN", "PORT", "BACKEND", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.server:
        server(args.server[0], int(args.server[1]), args.server[2], int(args.server[3]))
        return

    import tempfile

    import httpx

    from tunelab import hardware
    from tunelab.run import Run

    texts = Run.open(args.run).split("test")["text"].astype(str).tolist()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, __file__, "--server", args.run, str(port), args.backend, str(args.threads)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "TUNELAB_API_KEY": ""})
    levels = {}
    try:
        wait_ready(url, process)
        asyncio.run(load(url, texts, 4, args.warmup))
        with tempfile.TemporaryDirectory(prefix="serve-profile-") as spy_dir:
            spy_dir = args.stacks or spy_dir
            Path(spy_dir).mkdir(parents=True, exist_ok=True)
            for concurrency in LEVELS:
                print(f"profiling at concurrency {concurrency}...", file=sys.stderr)
                levels[str(concurrency)] = profile_level(url, process.pid, texts, concurrency, args.requests, None if args.no_py_spy else Path(spy_dir))
        served = httpx.get(url + PROFILE_PATH).json()
    finally:
        stop(process)
    report = {
        "benchmark": "serve_profile",
        "run": args.run,
        "backend": args.backend,
        "service": "tunelab serve defaults (max_batch 32, max_wait_ms 2, 1 worker), stage timers added",
        "uvicorn": {"event_loop": served["event_loop"], "http_parser": served["http_parser"]},
        "requests_per_level": args.requests,
        "threads_per_forward_pass": args.threads or hardware.thread_count(),
        "environment": hardware.environment("fp32"),
        "load_average_at_end": round(os.getloadavg()[0], 2),
        "levels": levels,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
