"""The built-in Factbook index and reader: built once into tunelab's cache, reused while their settings hold.

    tunelab rag ask "What is the capital of Chad?"     # no --index, no --reader: these two

    builtin_index()    cache_dir()/indexes/factbook-<hash>   the Factbook documents, chunked and embedded
    builtin_qa()       (train, test) rows of the Factbook QA set, the default seeded split
    builtin_field_questions()   questions about the other fields: the reader's extra training and calibration
    builtin_reader()   cache_dir()/readers/factbook-<hash>   an extractive reader trained on the TRAIN split
                                                             of the built-in QA set (and field questions)
                                                             over that index
The hash covers every setting that changes the result (embedding model and backend, chunking, index format;
context settings, reader model, epochs, the QA split), so changing one builds a new folder and never
reuses a stale one. Each is built in a staging folder and renamed into place only when complete: an
interrupted build is never taken as done, and is started afresh on the next call. A lock file keeps
two processes from building the same folder at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from tunelab import atomic
from tunelab.data.factbook_qa import (
    CALIBRATION_FIELD_QUESTIONS,
    CALIBRATION_FIELDS,
    FIELD_QUESTIONS_VERSION,
    READER_FIELD_QUESTIONS,
    FieldQuestionRoles,
    build_factbook_qa,
    build_field_questions,
    field_question_roles,
    split_qa,
)
from tunelab.models.cache import cache_dir
from tunelab.rag import index as index_module
from tunelab.rag.embed_choice import choose_embedding_backend
from tunelab.rag.index import MANIFEST, build_index, open_index
from tunelab.rag.reader_data import ContextSettings
from tunelab.rag.train_reader import DEFAULT_DISTRACTORS, MISS_ABSTENTION, MISS_KIND, SETTINGS_FILE, train_rag_reader

NAME = "factbook"
EMBED_MODEL = "minilm"
EMBED_BACKEND = "torch"  # the reader is trained over this index; another backend builds an index of its own
CHUNK_TOKENS = 200
OVERLAP = 32
READER_MODEL = "minilm"
READER_EPOCHS = 2.0
QA_SEED = 0
QA_TEST_FRACTION = 0.2
# Rough one-off costs on a 2-core AVX-512-BF16 CPU, for the notice printed before a build. Index: 5 min
# (2026-12-02). Reader with 6,000 field questions: 18 min retrieving + 40 min training at one thread on a
# shared machine (strategies run of 2026-12-05); scaled from the 2,000-question recipe's two-core times (5 + 7 min
# for 3,743 questions), about 25-30 min on both cores. An AVX2-only CPU runs fp32 and takes several times longer.
# Measured since: the first `rag ask` with the index cached, 15 min 20 s on a 2-core AMX Xeon (2026-12-06). The
# notice keeps 30: the estimate above, for CPUs without AMX, and no AVX2-only measurement.
INDEX_MINUTES = 5
READER_MINUTES = 30


def settings_hash(settings: dict) -> str:
    """A short, stable name for a settings dict."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def index_settings(embed_model: str = EMBED_MODEL, backend: str = EMBED_BACKEND) -> dict:
    settings = {"corpus": NAME, "embed_model": embed_model, "chunk_tokens": CHUNK_TOKENS, "overlap": OVERLAP, "format": index_module.FORMAT_VERSION}
    # Named only when not torch, so the torch index (and the reader trained over it) keep the folders they had.
    return settings if backend == EMBED_BACKEND else {**settings, "embed_backend": backend}


def reader_settings(embed_model: str = EMBED_MODEL) -> dict:
    context = ContextSettings().to_dict()
    if context["scope"] == "all":  # named only when not what it was before it was a setting, as below
        del context["scope"]
    settings = {
        "index": settings_hash(index_settings(embed_model)),
        "context": context,
        "model": READER_MODEL,
        "epochs": READER_EPOCHS,
        "qa_seed": QA_SEED,
        "qa_test_fraction": QA_TEST_FRACTION,
        "field_questions": READER_FIELD_QUESTIONS,
        "field_questions_version": FIELD_QUESTIONS_VERSION,
        "calibration_fields": CALIBRATION_FIELDS,
        "calibration_field_questions": CALIBRATION_FIELD_QUESTIONS,
    }
    # Named only when not what they were before they were settings, so a reader trained then keeps its folder.
    if DEFAULT_DISTRACTORS != "other-question":
        settings["distractors"] = DEFAULT_DISTRACTORS
    if MISS_ABSTENTION is not None:
        settings["miss_abstention"] = MISS_ABSTENTION
        settings["miss_kind"] = MISS_KIND
    return settings


def index_path(embed_model: str = EMBED_MODEL, backend: str = EMBED_BACKEND) -> Path:
    return cache_dir() / "indexes" / f"{NAME}-{settings_hash(index_settings(embed_model, backend))}"


def reader_path(embed_model: str = EMBED_MODEL) -> Path:
    return cache_dir() / "readers" / f"{NAME}-{settings_hash(reader_settings(embed_model))}"


def _index_complete(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def index_is_built(embed_model: str = EMBED_MODEL) -> bool:
    """True when the built-in index is in the cache (builtin_index returns at once)."""
    return _index_complete(index_path(embed_model))


def _reader_complete(path: Path) -> bool:
    return (path / SETTINGS_FILE).is_file()


def builtin_index(progress: bool = True, embed_model: str = EMBED_MODEL, backend: str = EMBED_BACKEND) -> Path:
    """The built-in Factbook index folder embedded on `backend` (rag.embed_choice.EMBED_BACKENDS or auto), built on first use."""
    if backend != EMBED_BACKEND:
        backend = choose_embedding_backend(embed_model, backend)
    final = index_path(embed_model, backend)
    if _index_complete(final):
        return final
    with _building(final, _index_complete) as staging:
        if _index_complete(final):  # another process finished it while we waited for the lock
            return final
        _notice(f"building the built-in Factbook index once (~{INDEX_MINUTES} min with torch); cached in {final}")
        build_index(NAME, staging, model=embed_model, chunk_tokens=CHUNK_TOKENS, overlap=OVERLAP, backend=backend, progress=progress)
        atomic.write_json(staging / "builtin.json", index_settings(embed_model, backend))
    return final


def builtin_qa() -> tuple[list[dict], list[dict]]:
    """(train, test) rows of the built-in Factbook QA set: the split `tunelab data factbook-qa` writes
    by default, and the one the built-in reader is trained on (its train half only)."""
    train, test = split_qa(build_factbook_qa(), QA_TEST_FRACTION, QA_SEED)
    return [item.to_dict() for item in train], [item.to_dict() for item in test]


def builtin_field_questions(
    training: int = READER_FIELD_QUESTIONS, calibration_fields: int = CALIBRATION_FIELDS, calibration: int = CALIBRATION_FIELD_QUESTIONS, seed: int = QA_SEED
) -> FieldQuestionRoles:
    """Field questions of the built-in corpus (what fields.jsonl of `tunelab data factbook-qa` holds) in their
    two roles: extra reader-training questions, and calibration questions about fields kept out of training."""
    return field_question_roles([item.to_dict() for item in build_field_questions()], training, calibration_fields, calibration, seed)


def builtin_reader(progress: bool = True) -> Path:
    """The built-in extractive reader's run directory (with rag_reader.json), trained on first use
    on the train split of the built-in QA set; the test split is never seen."""
    final = reader_path()
    if _reader_complete(final):
        return final
    index_dir = builtin_index(progress)
    with _building(final, _reader_complete) as staging:
        if _reader_complete(final):
            return final
        _notice(f"building the built-in Factbook reader once (~{READER_MINUTES} min); cached in {final}")
        rows, _test = builtin_qa()
        fields = builtin_field_questions()
        with open_index(index_dir) as index:
            train_rag_reader(
                rows,
                index,
                staging,
                settings=ContextSettings(),
                model=READER_MODEL,
                epochs=READER_EPOCHS,
                seed=QA_SEED,
                overwrite=False,
                progress=progress,
                extra_rows=fields.training,
                extra_calibration=fields.calibration,
            )
        atomic.write_json(staging / "builtin.json", reader_settings())
    return final


def is_builtin_name(index: str | Path | None) -> bool:
    """True for None, and for "factbook" when no folder of that name exists here."""
    return index is None or (str(index) == NAME and not Path(index).expanduser().exists())


def resolve_index(index: str | Path | None, progress: bool = True, backend: str | None = None) -> Path:
    """The index folder to open: None or "factbook" (when no such folder exists) -> the built-in index, on
    `backend` (default torch); a folder keeps the backend it was built with (open_index checks a given one)."""
    if is_builtin_name(index):
        return builtin_index(progress, backend=backend or EMBED_BACKEND)
    return Path(index).expanduser()


@contextlib.contextmanager
def _building(final: Path, complete: Callable[[Path], bool]) -> Iterator[Path]:
    """Hold the folder's lock and yield the path of a staging folder (cleared of any earlier attempt;
    the block creates it), renamed to `final` when the block finishes; on an error or an interrupt the
    staging folder is removed and `final` is untouched."""
    with atomic.folder_lock(final):
        staging = atomic.partial_path(final)
        if final.exists() and not complete(final):
            shutil.rmtree(final)  # not made here (only complete folders are renamed into place)
        _clear(staging)
        try:
            yield staging
        except BaseException:
            _clear(staging)
            raise
        if complete(final):  # the block found it built by another process and returned early
            _clear(staging)
        elif complete(staging):
            atomic.publish_dir(staging, final)
        else:
            _clear(staging)
            raise RuntimeError(f"building {final} finished without a complete folder in {staging}")


def _clear(staging: Path) -> None:
    """A staging folder and what writers staging inside it leave next to it (a trainer's own
    .partial, the examples file)."""
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(atomic.partial_path(staging), ignore_errors=True)
    (staging.parent / f".{staging.name}.examples.jsonl").unlink(missing_ok=True)


def _notice(line: str) -> None:
    # stderr: stdout may be carrying --json output
    print(line, file=sys.stderr, flush=True)
