"""Atomic writes: stage into a temporary file or folder, then rename.

A crash never leaves a file or a run directory that looks complete but is not. `read_json` reads back a
JSON record such a write made, or says None when there is none (a cache or record that is made again).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_json(path: str | os.PathLike, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def read_json(path: str | os.PathLike) -> Any | None:
    """The JSON at `path`, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _jsonable(value: Any) -> Any:
    # numpy scalars and arrays, Paths: the usual things metrics dictionaries carry.
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def partial_path(final: Path) -> Path:
    """Where a folder is staged before it becomes `final`."""
    return final.parent / f".{final.name}.partial"


def publish_dir(staging: Path, final: Path, overwrite: bool = False) -> None:
    """Rename a complete staging folder to `final`; an old `final` is replaced only with overwrite."""
    staging, final = Path(staging), Path(final)
    if not final.exists():
        os.replace(staging, final)
        return
    if not overwrite:
        raise FileExistsError(final)
    trash = final.parent / f".{final.name}.old"
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(final, trash)
    os.replace(staging, final)
    shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(final: str | os.PathLike, overwrite: bool = False, keep_partial: bool = True) -> Iterator[Path]:
    """Yield a staging folder that becomes `final` only when the block finishes without error.

    On failure the staging folder is kept for inspection or resuming unless keep_partial is False;
    `final` is never touched.
    """
    final = Path(final)
    staging = partial_path(final)
    staging.mkdir(parents=True, exist_ok=True)
    try:
        yield staging
    except BaseException:
        if not keep_partial:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    publish_dir(staging, final, overwrite)


@contextlib.contextmanager
def folder_lock(final: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on building `final` (a lock file beside it), so that two processes never
    build the same folder in one staging folder; the second waits, then finds the folder built."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock; a concurrent build fails to rename instead
        yield
        return
    with open(final.parent / f".{final.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_file(final: str | os.PathLike, write: Callable[[Path], None], sidecars: tuple[str, ...] = ()) -> Path:
    """`write(path)` a file beside `final`, then rename it into place, so a killed writer never leaves a half file under the real name.

    `sidecars` are the suffixes of files the writer puts beside its file (OpenVINO IR's .bin beside the
    .xml): they move in first and `final` last, so a `final` on disk always has its own.
    """
    final = Path(final)
    staging = final.with_name(f".partial.{final.name}")
    staged = [staging, *(staging.with_suffix(suffix) for suffix in sidecars)]
    for path in staged:
        path.unlink(missing_ok=True)
    try:
        write(staging)
        if sidecars:
            final.unlink(missing_ok=True)  # the old file must not meet the new sidecars
        for suffix in sidecars:
            os.replace(staging.with_suffix(suffix), final.with_suffix(suffix))
        os.replace(staging, final)
    finally:
        for path in staged:
            path.unlink(missing_ok=True)
    return final
