"""Hot swap: the watcher follows a name's production version; the real service switches without failing a request."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import write_tiny_bert
from tests.test_registry import fake_run
from tunelab.lifecycle.registry import Registry
from tunelab.serve.registry_watch import RegistryWatcher


class FakeHolder:
    def __init__(self):
        self.current = None
        self.swaps = 0

    def swap(self, model):
        previous, self.current = self.current, model
        self.swaps += 1
        return previous


@pytest.fixture
def registry(tmp_path) -> Registry:
    registry = Registry(tmp_path / "registry.db")
    for i in range(1, 4):
        registry.register(fake_run(tmp_path / f"run{i}"), "news")
    registry.promote("news", 1)
    return registry


def started_watcher(registry, load=None, interval=2.0):
    holder = FakeHolder()
    watcher = RegistryWatcher(registry, "news", load or (lambda p: ("model", p.version)), holder, interval)
    holder.swap(watcher.load_current())  # what the service's startup does
    return watcher, holder


def test_watcher_follows_promote_and_rollback(registry):
    watcher, holder = started_watcher(registry)
    assert holder.current == ("model", 1)
    assert watcher.poll_once() is False  # nothing changed: no reload
    registry.promote("news", 3)
    assert watcher.poll_once() is True
    assert holder.current == ("model", 3) and watcher.loaded.version == 3
    assert watcher.poll_once() is False
    registry.rollback("news")
    assert watcher.poll_once() is True and holder.current == ("model", 1)
    assert holder.swaps == 3


def test_watcher_waits_for_the_initial_load(registry):
    holder = FakeHolder()
    watcher = RegistryWatcher(registry, "news", lambda p: p.version, holder)
    registry.promote("news", 2)
    assert watcher.poll_once() is False and holder.current is None  # the service's own startup load comes first


def test_a_version_that_fails_to_load_keeps_the_old_model(registry):
    def load(production):
        if production.version == 2:
            raise OSError("model.safetensors is truncated")
        return ("model", production.version)

    watcher, holder = started_watcher(registry, load)
    registry.promote("news", 2)
    assert watcher.poll_once() is False
    assert holder.current == ("model", 1)
    assert "news@2 could not be loaded" in watcher.error and "truncated" in watcher.error
    registry.promote("news", 3)
    assert watcher.poll_once() is True and holder.current == ("model", 3) and watcher.error is None


def test_watcher_thread_picks_up_a_promote(registry):
    watcher, holder = started_watcher(registry, interval=0.02)
    watcher.start()
    try:
        registry.promote("news", 2)
        deadline = time.monotonic() + 10
        while holder.current != ("model", 2):
            assert time.monotonic() < deadline, "the watcher never swapped"
            time.sleep(0.01)
    finally:
        watcher.stop()
    assert watcher._thread is None


def wait_for(condition, message: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.02)


def tiny_run(folder: Path, accuracy: float) -> Path:
    """A servable classifier run without training: a random tiny BERT with a two-class head."""
    write_tiny_bert(folder / "model", num_labels=2)
    (folder / "config.yaml").write_text("max_length: 32\n")
    (folder / "labels.json").write_text(json.dumps({"0": "LABEL_0", "1": "LABEL_1"}))
    (folder / "metrics.json").write_text(json.dumps({"accuracy": accuracy}))
    return folder


def test_service_swaps_without_failing_a_request(tmp_path):
    from fastapi.testclient import TestClient

    from tunelab.serve.registry_watch import registry_app
    from tunelab.serve.settings import ServeSettings

    registry = Registry(tmp_path / "registry.db")
    registry.register(tiny_run(tmp_path / "v1", 0.7), "news", promote=True)
    registry.register(tiny_run(tmp_path / "v2", 0.8), "news")
    app = registry_app("news", ServeSettings(max_wait_ms=1), registry, interval=0.05)
    statuses, versions = [], []
    answers = []  # (sent, received, version) of every answered request, on one monotonic clock
    stop = threading.Event()

    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "the service never became ready"
            time.sleep(0.05)

        def fire():
            while not stop.is_set() and len(statuses) < 5000:
                sent = time.monotonic()
                response = client.post("/v1/predict", json={"texts": ["good film", "bad food"]})
                received = time.monotonic()
                statuses.append(response.status_code)
                if response.status_code == 200:
                    versions.append(response.json()["model"]["version"])
                    answers.append((sent, received, versions[-1]))

        workers = [threading.Thread(target=fire) for _ in range(3)]
        for worker in workers:
            worker.start()
        try:
            wait_for(lambda: len(versions) >= 10, "no answers before the swap")
            registry.promote("news", 2)
            wait_for(lambda: "2" in versions[-3:], "the service never switched to news@2")
            count = len(versions)
            wait_for(lambda: len(versions) >= count + 10, "no answers after the swap")
        finally:
            stop.set()
            for worker in workers:
                worker.join()
        info = client.get("/v1/model").json()

    assert set(statuses) == {200}, f"failed requests during the swap: {sorted(set(statuses))}"
    assert versions[0] == "1" and versions[-1] == "2"
    # Once a request saw the new version, no later one went back to the old. "Later" is by when it was
    # sent: a request already in flight at the swap may still finish on v1 (its batch read the model
    # before the swap), but one sent after a v2 answer came back is batched after the swap, so gets v2.
    first_new = min(received for _, received, version in answers if version == "2")
    later = [version for sent, _, version in answers if sent > first_new]
    assert later and set(later) == {"2"}, f"{later.count('1')} of {len(later)} requests sent after the first v2 answer got v1"
    assert info["name"] == "news" and info["version"] == "2" and info["metrics"]["accuracy"] == 0.8


def test_a_version_of_another_task_is_refused_and_the_old_model_keeps_serving(registry, caplog):
    tasks = {1: "classification", 2: "multi-label", 3: "classification"}
    loaded = []

    def load(production):
        loaded.append(production.version)
        return ("model", production.version)

    holder = FakeHolder()
    watcher = RegistryWatcher(registry, "news", load, holder, task_of=lambda production: tasks[production.version])
    holder.swap(watcher.load_current())
    assert watcher.task == "classification"
    registry.promote("news", 2)
    with caplog.at_level("ERROR", logger="tunelab.serve.registry"):
        assert watcher.poll_once() is False
    assert holder.current == ("model", 1) and loaded == [1]  # never loaded, let alone swapped in
    assert "news@2 is a multi-label run" in watcher.error and "for classification" in watcher.error
    assert "still serving news@1" in caplog.text and "news@2 is a multi-label run" in caplog.text
    assert watcher.poll_once() is False and loaded == [1]  # reported once, not reloaded every poll
    registry.promote("news", 3)
    assert watcher.poll_once() is True and holder.current == ("model", 3) and watcher.error is None


def test_the_service_keeps_its_classifier_when_a_multi_label_version_is_promoted(tmp_path):
    """The service's routes answer with one class per text: a multi-label version (a classifier-shaped model folder,
    which would load) must not be swapped in under them."""
    from fastapi.testclient import TestClient

    from tunelab.serve.registry_watch import registry_app
    from tunelab.serve.settings import ServeSettings

    registry = Registry(tmp_path / "registry.db")
    registry.register(tiny_run(tmp_path / "v1", 0.7), "news", promote=True)
    tags = tiny_run(tmp_path / "v2", 0.8)
    (tags / "config.yaml").write_text("task: multi-label\nmax_length: 32\n")
    registry.register(tags, "news")
    app = registry_app("news", ServeSettings(max_wait_ms=1), registry, interval=0.05)
    with TestClient(app) as client:
        wait_for(lambda: client.get("/ready").status_code == 200, "the service never became ready")
        registry.promote("news", 2)
        watcher = app.state.registry_watcher
        wait_for(lambda: watcher.error is not None, "the watcher never looked at news@2")
        response = client.post("/v1/predict", json={"texts": ["good film"]})
        info = client.get("/v1/model").json()
    assert "news@2 is a multi-label run" in watcher.error
    assert response.status_code == 200 and response.json()["model"]["version"] == "1" and "label" in response.json()["predictions"][0]
    assert info["version"] == "1"


def tiny_multilabel_run(folder: Path, accuracy: float) -> Path:
    """tiny_run as a multi-label run: a sigmoid per label, each label's threshold 0.5."""
    tiny_run(folder, accuracy)
    (folder / "config.yaml").write_text("task: multi-label\nmax_length: 32\n")
    (folder / "thresholds.json").write_text(json.dumps({"values": [0.5, 0.5]}))
    return folder


def test_a_multi_label_name_is_served_with_its_schema_and_swaps_only_to_multi_label_versions(tmp_path):
    from fastapi.testclient import TestClient

    from tunelab.serve.registry_watch import registry_app
    from tunelab.serve.settings import ServeSettings

    registry = Registry(tmp_path / "registry.db")
    registry.register(tiny_multilabel_run(tmp_path / "v1", 0.7), "tags", promote=True)
    registry.register(tiny_multilabel_run(tmp_path / "v2", 0.8), "tags")
    registry.register(tiny_run(tmp_path / "v3", 0.9), "tags")
    app = registry_app("tags", ServeSettings(max_wait_ms=1), registry, interval=0.05)
    watcher = app.state.registry_watcher

    def answer() -> dict:
        response = client.post("/v1/predict", json={"texts": ["good film"]})
        assert response.status_code == 200, response.text
        return response.json()

    with TestClient(app) as client:
        wait_for(lambda: client.get("/ready").status_code == 200, "the service never became ready")
        first = answer()
        registry.promote("tags", 2)
        wait_for(lambda: answer()["model"]["version"] == "2", "the service never switched to tags@2")
        registry.promote("tags", 3)
        wait_for(lambda: watcher.error is not None, "the watcher never looked at tags@3")
        last = answer()
        schema = client.get("/openapi.json").json()
    assert first["model"] == {"name": "tags", "version": "1"}
    assert set(first["predictions"][0]) == {"labels", "probabilities"}  # the label-sets schema, as `tunelab serve RUN` gives
    assert "LabelSetsResponse" in json.dumps(schema)
    assert "tags@3 is a classification run" in watcher.error and "for multi-label" in watcher.error
    assert last["model"]["version"] == "2" and set(last["predictions"][0]) == {"labels", "probabilities"}
