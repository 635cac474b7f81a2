"""The micro-batcher on its own: grouping limits, order, oversize requests, failures, draining on stop."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from tunelab.serve.batching import MicroBatcher, NotRunning, QueueFull


class Recorder:
    def __init__(self, delay: float = 0.0, fail_on: str | None = None):
        self.batches: list[list[str]] = []
        self.delay = delay
        self.fail_on = fail_on
        self.threads: set[str] = set()

    def __call__(self, texts):
        self.batches.append(list(texts))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if self.fail_on in texts:
            raise ValueError("bad batch")
        return np.array([[float(t.split()[-1])] for t in texts], dtype=np.float32), "tag"


def run(coro):
    return asyncio.run(coro)


def test_groups_up_to_max_batch_and_keeps_each_answer_with_its_request() -> None:
    score = Recorder()

    async def scenario():
        batcher = MicroBatcher(score, max_batch=4, max_wait_ms=100, max_queue=100)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit([f"t {i}"]) for i in range(10)))
        await batcher.stop()
        return results

    results = run(scenario())
    assert [float(logits[0, 0]) for logits, _ in results] == list(range(10))
    assert all(tag == "tag" for _, tag in results)
    assert [len(b) for b in score.batches] == [4, 4, 2]
    assert [t for b in score.batches for t in b] == [f"t {i}" for i in range(10)]  # arrival order
    assert score.threads and not score.threads & {threading.current_thread().name}  # off the event loop's thread


def test_max_wait_bounds_the_wait_for_company_while_requests_come_concurrently() -> None:
    score = Recorder()

    async def scenario():
        batcher = MicroBatcher(score, max_batch=64, max_wait_ms=30, max_queue=100)
        await batcher.start()
        await asyncio.gather(batcher.submit(["pair 1"]), batcher.submit(["pair 2"]))  # a batch with company
        started = time.perf_counter()
        await batcher.submit(["alone 3"])
        waited = time.perf_counter() - started
        await batcher.stop()
        return waited

    waited = run(scenario())
    assert 0.025 <= waited < 1.0
    assert score.batches == [["pair 1", "pair 2"], ["alone 3"]]


def test_a_lone_request_after_a_lone_batch_does_not_wait() -> None:
    # One client at a time: no company is coming, so the window would only add its length to every request.
    score = Recorder()

    async def scenario():
        batcher = MicroBatcher(score, max_batch=64, max_wait_ms=500, max_queue=100)
        await batcher.start()
        started = time.perf_counter()
        for i in range(3):
            await batcher.submit([f"alone {i}"])
        waited = time.perf_counter() - started
        await batcher.stop()
        return waited

    assert run(scenario()) < 0.4
    assert score.batches == [["alone 0"], ["alone 1"], ["alone 2"]]


def test_a_request_is_never_split_and_an_oversize_one_runs_alone() -> None:
    score = Recorder()

    async def scenario():
        batcher = MicroBatcher(score, max_batch=4, max_wait_ms=50, max_queue=100)
        await batcher.start()
        sizes = [3, 3, 6, 1]
        results = await asyncio.gather(*(batcher.submit([f"r{n} {i}" for i in range(n)]) for n in sizes))
        await batcher.stop()
        return sizes, results

    sizes, results = run(scenario())
    assert [len(r[0]) for r in results] == sizes
    assert [len(b) for b in score.batches] == [3, 3, 6, 1]


def test_queue_bound_rejects_and_failures_reach_only_their_batch() -> None:
    score = Recorder(delay=0.2, fail_on="x 0")

    async def scenario():
        batcher = MicroBatcher(score, max_batch=1, max_wait_ms=0, max_queue=2)
        await batcher.start()
        failing = asyncio.create_task(batcher.submit(["x 0"]))
        await asyncio.sleep(0.05)  # now inside the forward pass
        queued = [asyncio.create_task(batcher.submit([f"y {i}"])) for i in (1, 2)]
        await asyncio.sleep(0)
        assert batcher.depth == 2
        with pytest.raises(QueueFull):
            await batcher.submit(["z 3"])
        with pytest.raises(ValueError, match="bad batch"):
            await failing
        values = [float((await q)[0][0, 0]) for q in queued]
        await batcher.stop()
        return values

    assert run(scenario()) == [1.0, 2.0]


def test_stop_answers_everything_queued_first() -> None:
    score = Recorder(delay=0.05)

    async def scenario():
        batcher = MicroBatcher(score, max_batch=2, max_wait_ms=0, max_queue=100)
        await batcher.start()
        pending = [asyncio.create_task(batcher.submit([f"p {i}"])) for i in range(6)]
        await asyncio.sleep(0)
        await batcher.stop()
        assert all(p.done() for p in pending)
        with pytest.raises(NotRunning):
            await batcher.submit(["late 1"])
        return [float(p.result()[0][0, 0]) for p in pending]

    assert run(scenario()) == [0, 1, 2, 3, 4, 5]


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(Recorder(), max_batch=0)
