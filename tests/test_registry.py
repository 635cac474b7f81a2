"""The model registry: versions, stages, promote/rollback, invariants under concurrency and SIGKILL."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.conftest import sigkill_when
from tunelab.errors import TunelabError
from tunelab.lifecycle.registry import Registry, data_fingerprint, default_path, parse_ref


def fake_run(folder: Path, accuracy: float = 0.8, rows: list[tuple[str, str]] | None = None) -> Path:
    """A run directory as train() leaves it, minus the weights: enough for the registry, which never loads models."""
    (folder / "model").mkdir(parents=True)
    (folder / "splits").mkdir()
    (folder / "model" / "config.json").write_text("{}")
    (folder / "config.yaml").write_text("model: tiny\nmax_length: 32\n")
    (folder / "labels.json").write_text(json.dumps({"0": "negative", "1": "positive"}))
    (folder / "metrics.json").write_text(json.dumps({"accuracy": accuracy, "f1_macro": accuracy - 0.05}))
    rows = rows or [("good film", "positive"), ("bad film", "negative"), ("great food", "positive")]
    pd.DataFrame(rows, columns=["text", "label"]).to_parquet(folder / "splits" / "train.parquet", index=False)
    return folder


@pytest.fixture
def registry(tmp_path) -> Registry:
    return Registry(tmp_path / "registry.db")


@pytest.fixture
def runs(tmp_path) -> list[Path]:
    return [fake_run(tmp_path / f"run{i}", accuracy=0.7 + i / 100) for i in range(1, 5)]


def production_versions(path: Path, name: str) -> list[int]:
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("SELECT version FROM versions WHERE name = ? AND stage = 'production'", (name,))]


def test_register_promote_rollback(registry, runs):
    v1 = registry.register(runs[0], "news", promote=True)
    assert (v1.version, v1.stage, v1.parent) == (1, "production", None)
    assert v1.metrics["accuracy"] == pytest.approx(0.71)
    assert v1.data_fingerprint.startswith("sha256:")
    assert v1.run_dir == str(runs[0].resolve())
    v2 = registry.register(runs[1], "news", parent=1, note="more data")
    assert (v2.version, v2.stage, v2.parent, v2.note) == (2, "candidate", 1, "more data")
    assert registry.production("news").version == 1

    registry.promote("news", 2)
    registry.register(runs[2], "news", parent=2)
    registry.promote("news", 3)
    stages = {v.version: v.stage for v in registry.versions("news")}
    assert stages == {1: "archived", 2: "archived", 3: "production"}
    assert registry.production("news").generation == 3

    # Rollbacks walk back through the production history, one step each.
    assert registry.rollback("news").version == 2
    assert registry.rollback("news").version == 1
    with pytest.raises(TunelabError, match="no earlier production version"):
        registry.rollback("news")
    assert {v.version: v.stage for v in registry.versions("news")} == {1: "production", 2: "archived", 3: "archived"}
    assert registry.production("news").generation == 5
    assert registry.check() == []
    actions = [e["action"] for e in registry.events("news")]
    assert actions.count("promote") == 3 and actions.count("rollback") == 2


def test_get_and_resolve(registry, runs):
    registry.register(runs[0], "news", promote=True)
    registry.register(runs[1], "news")
    assert registry.resolve("news").version == 1  # production wins over the newer candidate
    assert registry.resolve("news@2").version == 2
    assert registry.resolve("news@v2").version == 2
    with pytest.raises(TunelabError, match="news has no version 7"):
        registry.resolve("news@7")
    with pytest.raises(TunelabError, match="did you mean 'news'"):
        registry.get("nwes")
    with pytest.raises(TunelabError, match="no valid version"):
        parse_ref("news@x")
    with pytest.raises(TunelabError, match="not allowed"):
        parse_ref("bad name")


def test_promote_is_idempotent_and_rollback_needs_production(registry, runs):
    registry.register(runs[0], "news")
    with pytest.raises(TunelabError, match="no production version"):
        registry.rollback("news")
    registry.promote("news", 1)
    registry.promote("news", 1)
    assert registry.production("news").generation == 1  # promoting production again changes nothing
    assert registry.check() == []


def test_same_run_twice_is_refused(registry, runs):
    registry.register(runs[0], "news")
    with pytest.raises(TunelabError, match="already news@1"):
        registry.register(runs[0], "news")
    assert registry.register(runs[0], "other").version == 1  # another name may hold it


def test_unfinished_or_missing_run_is_refused(registry, tmp_path):
    with pytest.raises(TunelabError, match="does not exist"):
        registry.register(tmp_path / "nope", "news")
    partial = fake_run(tmp_path / ".half.partial")
    assert partial.is_dir()
    with pytest.raises(TunelabError, match="did not finish"):
        registry.register(tmp_path / "half", "news")
    assert registry.names() == []


def test_database_refuses_two_production_versions(registry, runs):
    registry.register(runs[0], "news", promote=True)
    registry.register(runs[1], "news")
    with sqlite3.connect(registry.path) as db, pytest.raises(sqlite3.IntegrityError):
        db.execute("UPDATE versions SET stage = 'production' WHERE name = 'news' AND version = 2")


def test_expect_production_guards_a_stale_gate(registry, runs):
    registry.register(runs[0], "news", promote=True)
    registry.register(runs[1], "news", promote=True)  # production moved to v2 meanwhile
    v3 = registry.register(runs[2], "news", parent=1, promote=True, expect_production=1)
    assert v3.stage == "candidate"
    assert "production changed from v1 to v2" in v3.note
    assert registry.production("news").version == 2


def test_fingerprint_ignores_row_order_but_not_content(tmp_path):
    rows = [("good", "positive"), ("bad", "negative"), ("fine", "positive")]
    a = fake_run(tmp_path / "a", rows=rows)
    b = fake_run(tmp_path / "b", rows=list(reversed(rows)))
    c = fake_run(tmp_path / "c", rows=[*rows[:2], ("fine", "negative")])
    assert data_fingerprint(a) == data_fingerprint(b) != data_fingerprint(c)


def test_default_path_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNELAB_REGISTRY", str(tmp_path / "elsewhere.db"))
    assert default_path() == tmp_path / "elsewhere.db"
    monkeypatch.delenv("TUNELAB_REGISTRY")
    assert default_path().name == "registry.db" and "tunelab" in str(default_path())


def test_not_a_registry_file(tmp_path):
    bogus = tmp_path / "bogus.db"
    bogus.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(TunelabError, match="not a tunelab registry"):
        Registry(bogus)


# --- several processes ----------------------------------------------------------------------

PROMOTER = textwrap.dedent(
    """
    import sys
    from tunelab.lifecycle.registry import Registry
    registry = Registry(sys.argv[1])
    versions = [int(v) for v in sys.argv[2].split(",")]
    for i in range(int(sys.argv[3])):
        registry.promote("news", versions[i % len(versions)])
    """
)


def test_concurrent_promotes_never_leave_two_production_versions(registry, runs):
    for run in runs:
        registry.register(run, "news")
    registry.promote("news", 1)
    rounds = 40
    workers = [subprocess.Popen([sys.executable, "-c", PROMOTER, str(registry.path), versions, str(rounds)]) for versions in ("1,2", "3,4")]
    # A reader watching while they race: never two production rows, never none after the first promote.
    seen = set()
    while any(w.poll() is None for w in workers):
        current = production_versions(registry.path, "news")
        assert len(current) == 1, current
        seen.add(current[0])
    assert [w.returncode for w in workers] == [0, 0]
    assert len(production_versions(registry.path, "news")) == 1
    assert registry.check() == []
    # Every promotion that changed production was logged and counted exactly once.
    events = [e for e in registry.events("news") if e["action"] == "promote"]
    assert registry.production("news").generation == len(events) >= 2
    assert len(seen) >= 2


KILLED_PROMOTE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import tunelab.lifecycle.registry as registry_module
    database, marker = sys.argv[1], Path(sys.argv[2])
    calls = []
    real_now = registry_module._now

    def now_then_hang():
        # The second timestamp inside a promotion is taken after the old production version was
        # demoted and before the new one is set: the worst moment to die.
        calls.append(1)
        if len(calls) == 2:
            marker.write_text("mid-transaction")
            time.sleep(600)
        return real_now()

    registry_module._now = now_then_hang
    from tunelab.cli import main
    sys.argv = ["tunelab", "registry", "promote", "news@2", "--registry", database]
    main()
    """
)


def test_sigkill_during_promote_leaves_the_registry_consistent(registry, runs, tmp_path):
    registry.register(runs[0], "news", promote=True)
    registry.register(runs[1], "news")
    marker = tmp_path / "marker"
    child = subprocess.Popen([sys.executable, "-c", KILLED_PROMOTE, str(registry.path), str(marker)])
    seen_inside: list[list[int]] = []

    def inside_the_transaction() -> bool:
        if not marker.exists():
            return False
        # Inside the transaction v1 is already archived: a reader still sees the committed state.
        seen_inside.append(production_versions(registry.path, "news"))
        return True

    sigkill_when(child, inside_the_transaction, 60, "the promoting process reached the transaction")
    assert seen_inside == [[1]]
    assert registry.check() == []
    assert registry.production("news").version == 1 and registry.production("news").generation == 1
    # The lock died with the process: the next promote goes through at once.
    assert registry.promote("news", 2).stage == "production"
    assert registry.check() == []


def test_cli(tmp_path, runs):
    from tunelab.cli import app

    runner = CliRunner()
    db = str(tmp_path / "cli.db")
    result = runner.invoke(app, ["registry", "register", str(runs[0]), "--name", "news", "--promote", "--registry", db])
    assert result.exit_code == 0, result.output
    assert "news@1" in result.output and "production" in result.output
    assert runner.invoke(app, ["registry", "register", str(runs[1]), "--name", "news", "--registry", db]).exit_code == 0
    assert runner.invoke(app, ["registry", "promote", "news@2", "--registry", db]).exit_code == 0
    listed = json.loads(runner.invoke(app, ["registry", "list", "news", "--json", "--registry", db]).output)
    assert [(v["version"], v["stage"]) for v in listed] == [(1, "archived"), (2, "production")]
    shown = json.loads(runner.invoke(app, ["registry", "show", "news@1", "--json", "--registry", db]).output)
    assert shown["metrics"]["accuracy"] == pytest.approx(0.71)
    result = runner.invoke(app, ["registry", "rollback", "news", "--registry", db])
    assert result.exit_code == 0 and "news@1" in result.output
    bad = runner.invoke(app, ["registry", "promote", "news", "--registry", db])
    assert bad.exit_code == 2 and "names no version" in bad.output
    env = {"TUNELAB_REGISTRY": db}
    assert "news@2" in runner.invoke(app, ["registry", "list"], env=env).output
