"""`tunelab serve` as a real process: it serves on loopback, and on SIGTERM a request in flight still
gets its answer before the process exits cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx

from tests._serve_fixtures import free_port


def test_sigterm_lets_the_request_in_flight_finish(trained_run) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # A long max-wait keeps a request inside the batcher while SIGTERM arrives. The batcher waits for company
    # only while requests come concurrently (serve/batching.py), so the child process treats every batch as
    # coming under concurrent load: one lone request then waits the whole window, as it would under traffic.
    child = (
        "import tunelab.serve.batching as batching\n"
        "collect = batching.MicroBatcher._next_batch\n"
        "async def under_load(self):\n"
        "    self._concurrent = True\n"
        "    return await collect(self)\n"
        "batching.MicroBatcher._next_batch = under_load\n"
        "from tunelab.cli import main\n"
        "main()\n"
    )
    command = [
        sys.executable,
        "-c",
        child,
        "serve",
        str(trained_run),
        "--port",
        str(port),
        "--max-wait-ms",
        "1500",
        "--log-level",
        "warning",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "TUNELAB_API_KEY": ""})
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.communicate()[1][-2000:]
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the service did not become ready"
            time.sleep(0.1)

        result: dict = {}

        def call() -> None:
            started = time.perf_counter()
            result["response"] = httpx.post(url + "/v1/predict", json={"texts": ["good great film"]}, timeout=30)
            result["seconds"] = time.perf_counter() - started

        thread = threading.Thread(target=call)
        thread.start()
        time.sleep(0.5)  # the request is now waiting in the batcher
        sent = time.perf_counter()
        process.send_signal(signal.SIGTERM)
        thread.join(30)
        exit_code = process.wait(30)
        exited_after = time.perf_counter() - sent
        stderr = process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    response = result["response"]
    assert response.status_code == 200
    assert response.json()["predictions"][0]["label"] == "positive"
    assert result["seconds"] >= 1.4  # it really was in flight for the whole max-wait, across the SIGTERM
    # uvicorn shuts down gracefully, then re-raises the captured SIGTERM so the exit status says why.
    assert exit_code in (0, -signal.SIGTERM)
    assert "Traceback" not in stderr
    assert exited_after < 20
