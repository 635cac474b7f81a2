"""Serving a registry name: follow its production version and hot-swap the model without a restart.

A watcher thread polls `Registry.production(name)` (one indexed row; cheap enough every second or
two). When the generation moves (a promote or a rollback), it loads the new version off the request
path, then swaps it into the holder in one step. Requests already computing finish on the old model,
the next batch uses the new one, so no request fails during the switch. A version that fails to load
is reported and skipped; the old model keeps serving. So is a version of another task than the one
served (a multi-label or token-classification run promoted over a classifier): the service's routes
and response schema were built for the first, and a swap would answer the old schema from a model
that does not produce it.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

from tunelab.errors import TunelabError
from tunelab.lifecycle.registry import Production, Registry

log = logging.getLogger("tunelab.serve.registry")
SPEC_ENV = "TUNELAB_SERVE_REGISTRY_SPEC"  # how `--workers N` hands the name and settings to each worker


class Holder(Protocol):
    """What the watcher needs from the service's model holder (tunelab.serve.holder.ModelHolder)."""

    @property
    def current(self) -> Any: ...

    def swap(self, model: Any) -> Any: ...


class RegistryWatcher:
    """Keeps `holder` serving the production version of `name`.

    load(production) -> model builds what the holder serves (a LoadedModel for the real service).
    task_of(production) -> the task of its run (Run.task); when given, a version whose task is not the
    served one (`task`: set by the service that built its routes, else the first version's) is refused, not swapped in.
    """

    def __init__(
        self,
        registry: Registry,
        name: str,
        load: Callable[[Production], Any],
        holder: Holder | None = None,
        interval: float = 2.0,
        task_of: Callable[[Production], str] | None = None,
    ):
        self.registry = registry
        self.name = name
        self.load = load
        self.holder = holder
        self.interval = interval
        self.task_of = task_of
        self.task: str | None = None  # the served task (the routes were built for it): set by its creator, else by the initial load
        self.loaded: Production | None = None  # what the holder serves (once it serves anything)
        self.error: str | None = None  # why the newest production version could not be loaded
        self._failed_generation: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one load at a time (the initial load and a poll may overlap)

    def load_current(self) -> Any:
        """Load today's production version (the service's initial load); remembers which generation it is."""
        production = self.registry.production(self.name)
        if production.version is None:
            raise TunelabError(f"{self.name} has no production version to serve", f"promote one: `tunelab registry promote {self.name}@N`")
        with self._lock:
            refusal = self.other_task(production)  # promoted between building the service and its first load
            if refusal:
                raise TunelabError(refusal, "start the service again")
            model = self.load(production)
            self.loaded = production
            if self.task_of is not None and self.task is None:
                self.task = self.task_of(production)
        return model

    def poll_once(self) -> bool:
        """Swap in the production version if it changed since the last load; True when a swap happened."""
        if self.holder is None or self.holder.current is None or self.loaded is None:
            return False  # the initial load has not finished: it, not us, puts the first model in
        try:
            production = self.registry.production(self.name)
        except (sqlite3.Error, TunelabError) as error:  # a locked or moved file must not stop the service
            log.warning("cannot read the registry %s: %s", self.registry.path, error)
            return False
        if production.generation == self.loaded.generation or production.version is None:
            return False
        if production.version == self.loaded.version and production.run_dir == self.loaded.run_dir:
            self.loaded = production  # e.g. promote v2, rollback, promote v2 again between two polls
            return False
        if production.generation == self._failed_generation:
            return False  # already reported; wait for the next promote or rollback
        with self._lock:
            try:
                refusal = self.other_task(production)
                model = None if refusal else self.load(production)
            except Exception as error:  # keep serving the old model; say why on the log and in .error
                refusal = f"{self.name}@{production.version} could not be loaded: {error}"
            if refusal:
                self._failed_generation = production.generation
                self.error = refusal
                log.error("%s; still serving %s@%s", self.error, self.name, self.loaded.version)
                return False
            self.holder.swap(model)
            log.info("now serving %s@%s (was @%s)", self.name, production.version, self.loaded.version)
            self.loaded, self.error = production, None
        return True

    def other_task(self, production: Production) -> str | None:
        """Why `production` may not replace the served model, when its run learns another task; else None."""
        if self.task_of is None or self.task is None:
            return None
        task = self.task_of(production)
        if task == self.task:
            return None
        return (
            f"{self.name}@{production.version} is a {task} run, not swapped into a service whose routes and response schema are "
            f"for {self.task} (serve it with `tunelab serve {production.run_dir}`, or promote a {self.task} version)"
        )

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"registry-watch-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll_once()
            except Exception:  # the thread must outlive any surprise; the next poll tries again
                log.exception("registry watch failed")


# --- the prediction service for a registry name -----------------------------------------------------
def registry_app(name: str, settings=None, registry: Registry | str | os.PathLike | None = None, interval: float = 2.0):
    """tunelab.serve.app's service for the production version of `name`, swapped live on promote/rollback.

    The routes are those of the production version's task when the service starts; a later version of
    another task is not swapped in (RegistryWatcher.other_task)."""
    from dataclasses import replace

    from tunelab.run import Run
    from tunelab.serve.app import check_servable, create_app, task_loader
    from tunelab.serve.settings import ServeSettings

    settings = settings or ServeSettings()
    registry = registry if isinstance(registry, Registry) else Registry(registry)
    production = registry.production(name)
    if production.version is None:
        raise TunelabError(f"{name} has no production version to serve", f"promote one: `tunelab registry promote {name}@N`")
    task = check_servable(production.run_dir, settings.backend, settings.threads).task  # one line for a run the service cannot serve

    def load(production: Production):
        model = task_loader(Run.open(production.run_dir), settings)()
        return replace(model, name=name, version=str(production.version))  # which registry version answered

    watcher = RegistryWatcher(registry, name, load, interval=interval, task_of=lambda production: Run.open(production.run_dir).task)
    watcher.task = task
    app = create_app(watcher.load_current, settings, task=task)
    watcher.holder = app.state.holder
    app.state.registry_watcher = watcher
    # The app's own lifespan loads the first model and drains the queue on shutdown; the watcher
    # runs inside it, so it starts with the service and stops before the model goes away.
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app):
        async with inner(app) as state:
            watcher.start()
            try:
                yield state
            finally:
                watcher.stop()

    app.router.lifespan_context = lifespan
    return app


def serve_registry(name: str, settings=None, registry: str | os.PathLike | None = None, interval: float = 2.0) -> None:
    """Serve NAME's production version with uvicorn; a promote or rollback switches it without a restart."""
    import uvicorn

    from tunelab.serve.settings import ServeSettings

    settings = settings or ServeSettings()
    path = Registry(registry).path
    app = registry_app(name, settings, path, interval)  # fails here, with one line, for a bad name
    common = dict(host=settings.host, port=settings.port, log_level=settings.log_level, timeout_graceful_shutdown=max(1, round(settings.graceful_timeout_s)))
    if settings.workers == 1:
        uvicorn.run(app, **common)
        return
    # Each worker process builds its own app and watcher from the environment.
    os.environ[SPEC_ENV] = json.dumps({"name": name, "registry": str(path), "interval": interval, "settings": settings.model_dump()})
    uvicorn.run("tunelab.serve.registry_watch:app_from_env", factory=True, workers=settings.workers, **common)


def app_from_env():
    from tunelab.serve.settings import ServeSettings

    spec = json.loads(os.environ[SPEC_ENV])
    return registry_app(spec["name"], ServeSettings(**spec["settings"]), spec["registry"], spec["interval"])
