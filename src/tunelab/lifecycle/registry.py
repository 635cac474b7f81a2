"""Model registry: named models with numbered versions and stages, in one SQLite file.

A version points at a finished run directory and carries its metrics, a fingerprint of the data it
was trained on, its parent version, its stage (candidate, production, archived) and timestamps.

Why SQLite and how it stays consistent:
- every change is one transaction opened with BEGIN IMMEDIATE, so two writers (two `promote`s, an
  `update` and a `promote`) serialise on the database's write lock instead of interleaving;
- a partial unique index makes a second production version for a name impossible, whatever the code does;
- WAL journaling: a process killed (even SIGKILL) mid-transaction leaves the last committed state,
  and readers (a server polling for hot swaps) never block writers.

`models.generation` grows by one whenever a name's production version changes: a watcher polls
`production(name)` (one indexed row) and reloads only when the generation moved.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError, did_you_mean
from tunelab.textpairs import PAIR_COLUMN

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
BUSY_TIMEOUT_S = 60.0  # how long a writer waits for another's transaction before giving up
# _set_production's default `replaced`: the new production period follows whichever version is
# production now. Versions are numbered from 1, so -1 never names one (None means "no earlier period").
REPLACES_CURRENT = -1

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name        TEXT PRIMARY KEY,
    generation  INTEGER NOT NULL DEFAULT 0,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    name             TEXT NOT NULL REFERENCES models(name),
    version          INTEGER NOT NULL,
    run_dir          TEXT NOT NULL,
    metrics          TEXT NOT NULL,
    data_fingerprint TEXT,
    parent           INTEGER,
    stage            TEXT NOT NULL CHECK (stage IN ('candidate', 'production', 'archived')),
    note             TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE UNIQUE INDEX IF NOT EXISTS one_production_per_name ON versions(name) WHERE stage = 'production';
CREATE TABLE IF NOT EXISTS events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    name      TEXT NOT NULL,
    version   INTEGER NOT NULL,
    action    TEXT NOT NULL,
    replaced  INTEGER,
    at        TEXT NOT NULL,
    reason    TEXT
);
"""


def default_path() -> Path:
    """$TUNELAB_REGISTRY, else registry.db in the user's data folder."""
    if os.environ.get("TUNELAB_REGISTRY"):
        return Path(os.environ["TUNELAB_REGISTRY"]).expanduser()
    try:
        import platformdirs

        return Path(platformdirs.user_data_dir("tunelab")) / "registry.db"
    except ImportError:
        base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
        return Path(base) / "tunelab" / "registry.db"


@dataclass(frozen=True)
class Version:
    name: str
    version: int
    run_dir: str
    metrics: dict[str, Any]
    data_fingerprint: str | None
    parent: int | None
    stage: str
    note: str | None
    created_at: str
    updated_at: str

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def accuracy(self) -> float | None:
        value = self.metrics.get("accuracy")
        return float(value) if value is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Production:
    """What a server needs to know: which run serves NAME now, and a counter that moves on every change."""

    name: str
    generation: int
    version: int | None
    run_dir: str | None


def parse_ref(ref: str) -> tuple[str, int | None]:
    """'name' -> (name, None); 'name@3' or 'name@v3' -> (name, 3)."""
    name, _, version = ref.partition("@")
    check_name(name)
    if not version:
        return name, None
    digits = version[1:] if version[:1] in "vV" else version
    if not digits.isdigit() or int(digits) < 1:
        raise TunelabError(f"'{ref}' has no valid version number after '@'", "write NAME@VERSION, e.g. news@2")
    return name, int(digits)


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name or ""):
        raise TunelabError(
            f"model name '{name}' is not allowed",
            "use letters, digits, '.', '_' or '-' (at most 100 characters, starting with a letter or digit)",
        )
    return name


def data_fingerprint(run_dir: str | os.PathLike) -> str | None:
    """sha256 of the run's training split (text, text_pair when it has one, label), independent of row order (the same data -> the same fingerprint)."""
    path = Path(run_dir) / "splits" / "train.parquet"
    if not path.is_file():
        return None
    import pandas as pd

    frame = pd.read_parquet(path)
    columns = [c for c in ("text", PAIR_COLUMN, "label") if c in frame]  # a pair classifier's rows hold two texts
    rows = sorted("\t".join(row) for row in zip(*(frame[c].astype(str) for c in columns)))
    digest = hashlib.sha256()
    for row in rows:
        digest.update(row.encode("utf-8"))
        digest.update(b"\n")
    return "sha256:" + digest.hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class Registry:
    """One registry file. Cheap to create; each call opens its own short-lived connection."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path).expanduser() if path is not None else default_path()
        if self.path.is_dir():
            raise TunelabError(f"registry path '{self.path}' is a folder", "pass a file path, e.g. registry.db")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(SCHEMA)

    # connections and transactions ----------------------------------------------------------
    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves instead of sqlite3's deferred BEGIN,
        # which would take the write lock only at the first write and can deadlock two upgraders.
        try:
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as error:
            raise TunelabError(f"cannot open the registry '{self.path}': {error}", "check the path and its permissions") from None
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            yield db
        except sqlite3.DatabaseError as error:
            if "not a database" in str(error) or "malformed" in str(error):
                raise TunelabError(f"'{self.path}' is not a tunelab registry ({error})", "pass another --registry path") from None
            raise
        finally:
            db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # reading ------------------------------------------------------------------------------
    def names(self) -> list[str]:
        with self._connect() as db:
            return [row["name"] for row in db.execute("SELECT name FROM models ORDER BY name")]

    def versions(self, name: str | None = None) -> list[Version]:
        with self._connect() as db:
            if name is None:
                rows = db.execute("SELECT * FROM versions ORDER BY name, version").fetchall()
            else:
                self._require_model(db, name)
                rows = db.execute("SELECT * FROM versions WHERE name = ? ORDER BY version", (name,)).fetchall()
        return [_version(row) for row in rows]

    def get(self, name: str, version: int | None = None) -> Version:
        """A version; without a number, the production version (else the newest)."""
        with self._connect() as db:
            return self._get(db, name, version)

    def resolve(self, ref: str) -> Version:
        return self.get(*parse_ref(ref))

    def production(self, name: str) -> Production:
        """The cheap question a server polls: one indexed lookup, no JSON parsing."""
        with self._connect() as db:
            model = db.execute("SELECT generation FROM models WHERE name = ?", (name,)).fetchone()
            if model is None:
                raise self._unknown(db, name)
            row = db.execute("SELECT version, run_dir FROM versions WHERE name = ? AND stage = 'production'", (name,)).fetchone()
        return Production(name, model["generation"], row["version"] if row else None, row["run_dir"] if row else None)

    def events(self, name: str) -> list[dict[str, Any]]:
        with self._connect() as db:
            self._require_model(db, name)
            return [dict(row) for row in db.execute("SELECT * FROM events WHERE name = ? ORDER BY id", (name,))]

    def check(self) -> list[str]:
        """Problems found in the file (empty when consistent): SQLite's integrity check and our invariants."""
        problems: list[str] = []
        with self._connect() as db:
            result = db.execute("PRAGMA integrity_check").fetchone()[0]
            if result != "ok":
                problems.append(f"integrity_check: {result}")
            for row in db.execute("SELECT name, COUNT(*) AS n FROM versions WHERE stage = 'production' GROUP BY name HAVING n > 1"):
                problems.append(f"{row['name']} has {row['n']} production versions")
            for row in db.execute(
                "SELECT m.name, m.generation, (SELECT COUNT(*) FROM events e WHERE e.name = m.name "
                "AND e.action IN ('promote', 'rollback')) AS changes FROM models m"
            ):
                if row["generation"] != row["changes"]:
                    problems.append(f"{row['name']}: generation {row['generation']} but {row['changes']} production changes logged")
        return problems

    # writing ------------------------------------------------------------------------------
    def register(
        self,
        run_dir: str | os.PathLike,
        name: str,
        *,
        parent: int | None = None,
        note: str | None = None,
        promote: bool = False,
        expect_production: int | None = None,
    ) -> Version:
        """Add a finished run as the next version of `name` (a candidate, or production with promote).

        Registering and promoting happen in one transaction: a crash leaves neither or both.
        With expect_production, the promotion happens only if that version is still production
        (an update's gate compared against it); otherwise the version stays a candidate and the
        note says why.
        """
        from tunelab.run import Run

        check_name(name)
        run = Run.open(run_dir)
        run_path = str(run.path.resolve())
        metrics = run.metrics
        fingerprint = data_fingerprint(run.path)
        with self._transaction() as db:
            now = _now()
            db.execute("INSERT OR IGNORE INTO models (name, generation, created_at, updated_at) VALUES (?, 0, ?, ?)", (name, now, now))
            same = db.execute("SELECT version FROM versions WHERE name = ? AND run_dir = ?", (name, run_path)).fetchone()
            if same is not None:
                raise TunelabError(
                    f"run '{run_path}' is already {name}@{same['version']}",
                    f"promote it with `tunelab registry promote {name}@{same['version']}`",
                )
            if parent is not None:
                self._get(db, name, parent)
            version = db.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE name = ?", (name,)).fetchone()[0]
            db.execute(
                "INSERT INTO versions (name, version, run_dir, metrics, data_fingerprint, parent, stage, note, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, 'candidate', ?, ?, ?)",
                (name, version, run_path, json.dumps(metrics, default=str), fingerprint, parent, note, now, now),
            )
            db.execute("INSERT INTO events (name, version, action, at, reason) VALUES (?, ?, 'register', ?, ?)", (name, version, now, note))
            if promote:
                current = self._production_version(db, name)
                if expect_production is not None and current != expect_production:
                    reason = (
                        f"not promoted: production changed from v{expect_production} to v{current} while this version "
                        "was being made; its gate compared against the old one"
                    )
                    db.execute("UPDATE versions SET note = ? WHERE name = ? AND version = ?", (_join(note, reason), name, version))
                else:
                    self._set_production(db, name, version, "promote", note)
            return self._get(db, name, version)

    def promote(self, name: str, version: int, reason: str | None = None) -> Version:
        """Make `version` production; the old production version becomes archived."""
        with self._transaction() as db:
            target = self._get(db, name, version)
            if target.stage != "production":
                self._set_production(db, name, version, "promote", reason)
            return self._get(db, name, version)

    def rollback(self, name: str, reason: str | None = None) -> Version:
        """Back to the version that was production before the current one; the current one is archived."""
        with self._transaction() as db:
            current = self._production_version(db, name)
            if current is None:
                self._require_model(db, name)
                raise TunelabError(f"{name} has no production version to roll back from", f"promote one: `tunelab registry promote {name}@N`")
            previous = self._replaced_by(db, name, current)
            if previous is None:
                raise TunelabError(
                    f"{name}@{current} has no earlier production version to roll back to",
                    f"promote another version instead: `tunelab registry promote {name}@N`",
                )
            self._set_production(db, name, previous, "rollback", reason, replaced=self._replaced_by(db, name, previous))
            return self._get(db, name, previous)

    # inside a transaction -------------------------------------------------------------------
    def _set_production(
        self, db: sqlite3.Connection, name: str, version: int, action: str, reason: str | None, replaced: int | None = REPLACES_CURRENT
    ) -> None:
        current = self._production_version(db, name)
        now = _now()
        # Demote first: the partial unique index refuses two production rows even for an instant.
        db.execute("UPDATE versions SET stage = 'archived', updated_at = ? WHERE name = ? AND stage = 'production'", (now, name))
        db.execute("UPDATE versions SET stage = 'production', updated_at = ? WHERE name = ? AND version = ?", (_now(), name, version))
        db.execute("UPDATE models SET generation = generation + 1, updated_at = ? WHERE name = ?", (now, name))
        # `replaced` links each production period to the one before it, so repeated rollbacks walk back in order.
        link = current if replaced == REPLACES_CURRENT else replaced
        db.execute(
            "INSERT INTO events (name, version, action, replaced, at, reason) VALUES (?, ?, ?, ?, ?, ?)",
            (name, version, action, link, now, reason),
        )

    @staticmethod
    def _production_version(db: sqlite3.Connection, name: str) -> int | None:
        row = db.execute("SELECT version FROM versions WHERE name = ? AND stage = 'production'", (name,)).fetchone()
        return row["version"] if row else None

    @staticmethod
    def _replaced_by(db: sqlite3.Connection, name: str, version: int) -> int | None:
        """The version that was production before `version` last became production."""
        row = db.execute(
            "SELECT replaced FROM events WHERE name = ? AND version = ? AND action IN ('promote', 'rollback') ORDER BY id DESC LIMIT 1",
            (name, version),
        ).fetchone()
        return row["replaced"] if row else None

    def _get(self, db: sqlite3.Connection, name: str, version: int | None) -> Version:
        self._require_model(db, name)
        if version is None:
            row = db.execute("SELECT * FROM versions WHERE name = ? ORDER BY stage = 'production' DESC, version DESC LIMIT 1", (name,)).fetchone()
        else:
            row = db.execute("SELECT * FROM versions WHERE name = ? AND version = ?", (name, version)).fetchone()
        if row is None:
            known = [r["version"] for r in db.execute("SELECT version FROM versions WHERE name = ? ORDER BY version", (name,))]
            raise TunelabError(
                f"{name} has no version {version}" if version is not None else f"{name} has no versions",
                f"versions: {', '.join(map(str, known))}" if known else f"register one: `tunelab registry register RUN --name {name}`",
            )
        return _version(row)

    def _require_model(self, db: sqlite3.Connection, name: str) -> None:
        if db.execute("SELECT 1 FROM models WHERE name = ?", (name,)).fetchone() is None:
            raise self._unknown(db, name)

    def _unknown(self, db: sqlite3.Connection, name: str) -> TunelabError:
        names = [row["name"] for row in db.execute("SELECT name FROM models")]
        hint = did_you_mean(name, names)
        return TunelabError(
            f"no model named '{name}' in the registry {self.path}",
            hint or (f"names: {', '.join(names)}" if names else "register a run first: `tunelab registry register RUN --name NAME`"),
        )


def _version(row: sqlite3.Row) -> Version:
    data = dict(row)
    data["metrics"] = json.loads(data["metrics"] or "{}")
    return Version(**data)


def _join(*parts: str | None) -> str:
    return "; ".join(p for p in parts if p)
