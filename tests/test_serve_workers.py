"""`tunelab serve --workers 2` as a real process: one Prometheus view across the workers, the cores shared out
between them, and the metrics folder removed on exit."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests._serve_fixtures import free_port

REQUESTS = 24


def metric(text: str, name: str, labels: str = "") -> float | None:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def worker_pids(pid: int) -> set[int]:
    """The uvicorn workers among the service's children (multiprocessing's resource tracker is one too)."""
    workers = set()
    for child in children(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.add(child)
        except OSError:  # it exited between the listing and the read
            pass
    return workers


def multiproc_dir(pid: int) -> Path | None:
    """The PROMETHEUS_MULTIPROC_DIR the service handed its workers (read from a worker's environment)."""
    for child in children(pid):
        for entry in Path(f"/proc/{child}/environ").read_bytes().split(b"\0"):
            if entry.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
                return Path(entry.split(b"=", 1)[1].decode())
    return None


def file_pids(folder: Path, prefix: str = "") -> set[int]:
    """The worker pids with a metrics file in `folder` (whose name starts with `prefix`)."""
    return {int(match.group(1)) for file in folder.iterdir() if file.name.startswith(prefix) and (match := re.search(r"_(\d+)\.db$", file.name))}


def wait_until(check, process: subprocess.Popen, what: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def model_ready(url: str) -> bool:
    """tunelab_model_ready is the lowest over the live workers: 1 once every one has loaded the model."""
    try:
        return metric(httpx.get(url + "/metrics", timeout=2).text, "tunelab_model_ready") == 1.0
    except httpx.TransportError:
        return False


@contextlib.contextmanager
def two_workers(trained_run: Path):
    """`tunelab serve RUN --workers 2` as a process, its URL once both workers have the model; stopped with SIGTERM."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-c", "from tunelab.cli import main; main()", "serve", str(trained_run), "--port", str(port), "--workers", "2"]
    command += ["--log-level", "warning"]
    env = {**os.environ, "TUNELAB_API_KEY": "", "TUNELAB_THREADS": "2"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_until(lambda: model_ready(url), process, "the workers did not become ready")
        yield process, url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_two_workers_share_one_metrics_view(trained_run) -> None:
    with two_workers(trained_run) as (process, url):
        folder = multiproc_dir(process.pid)
        assert folder is not None and folder.is_dir()
        # Both workers write into the one folder: a file of each worker's pid.
        assert len(file_pids(folder)) == 2, sorted(file.name for file in folder.iterdir())

        def predict(i: int) -> int:
            with httpx.Client() as client:  # a fresh connection each: the kernel hands them to either worker
                return client.post(url + "/v1/predict", json={"texts": [f"good great film {i}"]}, timeout=30).status_code

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(predict, range(REQUESTS))) == [200] * REQUESTS
        # Whichever worker answers the scrape, it counts every worker's requests.
        for _ in range(8):
            with httpx.Client() as client:
                text = client.get(url + "/metrics", timeout=5).text
            assert metric(text, "tunelab_requests_total", '{route="/v1/predict",status="200"}') == REQUESTS
            assert metric(text, "tunelab_predicted_texts_total") == REQUESTS
    assert not folder.exists()  # the service removes the metrics folder it made


def test_a_dead_workers_gauges_leave_the_metrics_view(trained_run) -> None:
    with two_workers(trained_run) as (process, url):
        folder = multiproc_dir(process.pid)
        assert folder is not None
        workers = worker_pids(process.pid)
        assert file_pids(folder, "gauge_live") == workers
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)  # a worker of the service this test started
        # uvicorn starts a replacement; once it has loaded the model, only live workers' gauges remain.
        wait_until(lambda: len(worker_pids(process.pid) - workers) == 1, process, "no replacement worker was started")
        replacement = (worker_pids(process.pid) - workers).pop()
        wait_until(lambda: replacement in file_pids(folder, "gauge_livemin") and model_ready(url), process, "the replacement did not load the model")
        assert file_pids(folder, "gauge_live") == worker_pids(process.pid) == workers - {victim} | {replacement}
        assert victim in file_pids(folder, "counter")  # the dead worker's counts stay: its requests were answered


def test_workers_share_the_cores(monkeypatch) -> None:
    from tunelab.serve.app import worker_threads
    from tunelab.serve.settings import ServeSettings

    monkeypatch.setenv("TUNELAB_THREADS", "4")  # the cores this process may use
    assert worker_threads(ServeSettings(workers=2)) == 2
    assert worker_threads(ServeSettings(workers=8)) == 1  # never fewer than one
    assert worker_threads(ServeSettings(workers=2, threads=3)) == 3  # --threads says
