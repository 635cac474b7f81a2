"""Which runtime embeds an index's chunks and its queries: torch, ONNX fp32 or int8 in ONNX Runtime or OpenVINO, or auto, behind a recall gate.

`load_embedder(model, backend)` is the one way an index gets its embedder (`rag index`, `rag search`,
`rag ask`, the built-in Factbook index). The rules are tunelab.runtime.choice's, applied to an embedding
model instead of a classifier run:

- `torch`: sentence-transformers in PyTorch (bf16 autocast where the CPU runs it fast, see rag.embed).
- `onnx`, `onnx-int8`: the model exported once by tunelab.runtime.export into
  cache_dir()/onnx/<model>-<fingerprint>/ (model.onnx, model.int8.onnx), run by ONNX Runtime.
- `openvino`: that fp32 model.onnx compiled by OpenVINO; `openvino-int8`: NNCF's static int8 of it
  (openvino.int8.xml/.bin), calibrated on openvino_export.CALIBRATION_TEXTS Factbook chunks. Both need the optional
  `openvino` extra; without it `auto` passes them over and naming one is a one-line error.
- `openvino-bf16` (a classifier backend) is not offered for embeddings: on the CPUs it runs on (AVX-512 BF16 or AMX)
  the torch embedder already computes in bf16 (rag.embed), and its recall gate was never measured; naming it is an
  unknown backend, and auto does not consider it.
- `auto`: the fastest backend that passes, timed on this CPU on Factbook chunks on first use and cached
  in the folder's backend_choice.json with the CPU flags and thread count it was measured on.

Each backend but torch is used only if dense retrieval with it keeps recall@5 on the Factbook TRAIN
questions within RECALL_GATE of fp32 PyTorch's, as recorded in that folder's parity.json; a backend that
fails is refused with the two figures.

The gate is measured once per model: it embeds the whole Factbook corpus with fp32 PyTorch (the
reference) and with each other backend, about as long as building the Factbook index once per backend.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunelab import atomic
from tunelab.backends import BF16_BACKENDS
from tunelab.errors import TunelabError
from tunelab.models.cache import cache_dir
from tunelab.models.catalogue import resolve_model
from tunelab.runtime import choice, openvino_export
from tunelab.runtime.scorers import BACKENDS, MODEL_FILES, ONNX_FILES, not_installed, require_packages, unavailable

# An embedding backend may move recall@5 on the train questions by at most this much from fp32 PyTorch's
# (either way): the gate, about 10 of the ~2,000 Factbook train questions.
RECALL_GATE = 0.005
GATE_K = 5
PARITY_FILE = choice.PARITY_FILE
CHOICE_FILE = choice.CHOICE_FILE
TIMING_TEXTS = 256  # Factbook chunks per backend when auto times them: seconds on 2 cores for a MiniLM
TIMING_DOCUMENTS = 8  # the Factbook documents they are cut from (about 45 chunks each)
TIMING_BATCH = 64  # build_index's batch size
# An embedding model runs on the backends a classifier does but openvino-bf16 (see above); each model file sits in the
# model's cache folder.
EMBED_BACKENDS: tuple[str, ...] = tuple(backend for backend in BACKENDS if backend not in BF16_BACKENDS)
GATED = EMBED_BACKENDS[1:]

Say = Callable[[str], None]


@dataclass
class GateSet:
    """What the recall gate retrieves over: chunk texts with their documents, questions with their gold document."""

    texts: list[str]
    doc_ids: list[str]
    questions: list[str]
    gold: list[str]
    name: str


def factbook_gate_set(tokenizer) -> GateSet:
    """The built-in index's chunks of the Factbook and the built-in QA set's train questions (never its test ones)."""
    from tunelab.rag.builtin import builtin_qa

    chunks = factbook_chunks(tokenizer)
    train, _test = builtin_qa()
    return GateSet(
        [chunk.indexed_text() for chunk in chunks],
        [chunk.doc_id for chunk in chunks],
        [row["question"] for row in train],
        [row["doc_id"] for row in train],
        f"dense recall@{GATE_K} by document, {len(train)} Factbook train questions over its {len(chunks)} chunks",
    )


def factbook_chunks(tokenizer, documents: int | None = None) -> list:
    """The built-in index's chunks of the first `documents` Factbook documents (all by default)."""
    from tunelab.rag.builtin import CHUNK_TOKENS, OVERLAP
    from tunelab.rag.chunk import chunk_document
    from tunelab.rag.documents import load_documents

    return [chunk for document in load_documents("factbook")[:documents] for chunk in chunk_document(document, tokenizer, CHUNK_TOKENS, OVERLAP)]


def recall_at_k(embedder, gate: GateSet, k: int = GATE_K, progress: bool = False) -> float:
    """Share of the questions whose gold document is among the chunks of the k nearest: chunks by `encode`, questions by `encode_query`, as an index does."""
    from tunelab.rag.evaluate import first_relevant_rank

    chunks = embedder.encode(gate.texts, batch_size=TIMING_BATCH, progress=progress)
    questions = np.stack([embedder.encode_query(question) for question in gate.questions])
    nearest = np.argsort(-(questions @ chunks.T), axis=1, kind="stable")[:, :k]
    ranks = [first_relevant_rank([gate.doc_ids[i] for i in row], gold) for row, gold in zip(nearest, gate.gold)]
    return sum(rank is not None for rank in ranks) / len(ranks)


def onnx_folder(model: str | Path) -> Path:
    """Where `model`'s ONNX exports and gate figures live: one folder per model files and exporter (a changed model, or a
    tunelab that exports another graph, is a new folder)."""
    from tunelab.runtime.export import GRAPH_VERSION

    path = resolve_model(model)
    digest = hashlib.sha256(f"{path.resolve()} graph {GRAPH_VERSION}".encode())
    for file in sorted(path.rglob("*")):
        if file.is_file() and file.suffix in (".safetensors", ".bin", ".json"):
            stat = file.stat()
            digest.update(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(str(model)).name).strip("-") or "model"
    return cache_dir() / "onnx" / f"{slug}-{digest.hexdigest()[:12]}"


def load_embedder(model: str | Path = "minilm", backend: str = "torch", threads: int | None = None, say: Say | None = None):
    """An embedder of `model` on `backend` (one of EMBED_BACKENDS or auto), each but torch behind its recall gate."""
    from tunelab.rag.embed import OnnxEmbedder, SentenceEmbedder

    chosen = choose_embedding_backend(model, backend, threads, say)
    if chosen == "torch":
        return SentenceEmbedder(model)
    parity = read_parity(onnx_folder(model)) or {}
    return OnnxEmbedder(model, chosen, onnx_folder(model) / MODEL_FILES[chosen], int(parity["max_tokens"]), int(parity["dim"]), threads)


def choose_embedding_backend(model: str | Path, backend: str, threads: int | None = None, say: Say | None = None) -> str:
    """The backend `backend` means for `model`: itself if it passes its recall gate, or auto's measured choice."""
    say = say or choice.say_on_stderr
    return choice.choose(
        backend,
        refused=lambda asked: refusals(gated(model, asked, say)),
        measure=lambda refused: choice.record_choice(
            onnx_folder(model) / CHOICE_FILE,
            refused,
            lambda backends: time_embedders(model, backends, threads, say),
            f"{TIMING_TEXTS} Factbook chunks per backend, batches of {TIMING_BATCH}, after a {choice.WARMUP_TEXTS}-text warm-up",
            measurement_key(model, threads),
            EMBED_BACKENDS,
        ),
        cached=lambda: choice.read_cached_choice(onnx_folder(model) / CHOICE_FILE, measurement_key(model, threads)),
        what=f"embedding model {model}",
        say=say,
        backends=EMBED_BACKENDS,
    )


def gated(model: str | Path, backend: str, say: Say) -> dict[str, Any]:
    """The model's parity.json, exporting and measuring the gate first for the backends `backend` needs.

    An export that fails refuses every gated backend for `auto`, with its message; an explicit backend
    raises it. A backend whose packages are not installed is left out of `auto`, and raises when named.
    """
    folder = onnx_folder(model)
    if backend != "auto":
        require_packages(backend)
    asked = GATED if backend == "auto" else (backend,)
    needs = ["onnx", *(name for name in asked if name != "onnx" and not unavailable(name))]

    def done() -> dict[str, Any] | None:
        parity = read_parity(folder)
        return parity if parity is not None and (parity.get("export_failed") or all(name in parity["backends"] for name in needs)) else None

    parity = done()
    if parity is not None:
        return parity
    with atomic.folder_lock(folder):
        parity = done()  # another process may have measured while this one waited
        if parity is not None:
            return parity
        try:
            return measure_gate(model, folder, needs, say)
        except TunelabError as error:
            if backend != "auto":
                raise
            return {"export_failed": error.message, "backends": {}}


def measure_gate(model: str | Path, folder: Path, needs: list[str], say: Say) -> dict[str, Any]:
    """Export what `needs` lacks (in GATED order), measure each backend's recall against fp32 PyTorch's, and record it in parity.json."""
    from sentence_transformers import SentenceTransformer

    from tunelab.rag.embed import OnnxEmbedder, SentenceEmbedder
    from tunelab.runtime.export import INT8_RECIPES, export_embedder, export_failures, quantize

    parity = read_parity(folder) or {"backends": {}}
    reference = SentenceEmbedder(model, bf16=False)
    parity.update(max_tokens=reference.max_tokens, dim=reference.dim)
    gate = factbook_gate_set(reference.tokenizer)
    # The reference and each backend embed the whole gate corpus: about as long as building the index once per backend.
    say(f"checking the {', '.join(needs)} embedders of {model} against fp32 PyTorch once per model ({gate.name}; minutes); cached in {folder}")
    if "reference_recall" not in parity:
        parity.update(gate=gate.name, questions=len(gate.questions), chunks=len(gate.texts), reference_recall=recall_at_k(reference, gate, progress=True))
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = folder / ONNX_FILES["onnx"]

    def measured(backend: str, path: Path) -> dict[str, Any]:
        recall = recall_at_k(OnnxEmbedder(model, backend, path, reference.max_tokens, reference.dim), gate, progress=True)
        return {"recall": recall, "gap": round(recall - parity["reference_recall"], 6)}

    hint = "nothing was written; build the index with --backend torch, and report the model's architecture as an export bug"
    with export_failures(hint):
        if "onnx" not in parity["backends"] or not fp32.is_file():
            say("exporting the fp32 ONNX embedder")
            atomic.write_file(fp32, lambda path: export_embedder(SentenceTransformer(str(resolve_model(model)), device="cpu", local_files_only=True), path))
            parity["backends"]["onnx"] = measured("onnx", fp32)
        if "onnx-int8" in needs and "onnx-int8" not in parity["backends"]:
            # The first recipe (fastest first) whose recall passes is kept, else the last one tried is recorded as refused.
            for recipe in INT8_RECIPES:
                say(f"quantizing the embedder to int8 ({recipe})")
                int8 = folder / ONNX_FILES["onnx-int8"]
                atomic.write_file(int8, lambda path, recipe=recipe: quantize(fp32, path, recipe))
                parity["backends"]["onnx-int8"] = {**measured("onnx-int8", int8), "recipe": recipe}
                if passes(parity["backends"]["onnx-int8"]):
                    break

    def openvino_int8() -> dict[str, Any]:
        say(f"quantizing the embedder to int8 for OpenVINO (NNCF, calibrated on {openvino_export.CALIBRATION_TEXTS} Factbook chunks)")
        feeds = calibration_feeds(reference.tokenizer, gate.texts, reference.max_tokens)
        int8 = folder / MODEL_FILES["openvino-int8"]
        atomic.write_file(int8, lambda path: openvino_export.quantize_openvino(fp32, path, feeds), sidecars=(".bin",))
        return {**measured("openvino-int8", int8), "calibration_texts": len(feeds)}

    openvino = {"openvino": lambda: measured("openvino", fp32), "openvino-int8": openvino_int8}
    for backend, measure in openvino.items():
        if backend in needs and backend not in parity["backends"]:
            parity["backends"][backend] = openvino_export.measured_or_failed(measure, "this model")
    atomic.write_json(folder / PARITY_FILE, parity)
    return parity


def passes(figures: dict[str, Any]) -> bool:
    return abs(figures["gap"]) <= RECALL_GATE


def refusals(parity: dict[str, Any]) -> dict[str, str]:
    """Each gated backend that may not embed, with the reason; a backend absent from the answer passed its gate."""
    if parity.get("export_failed"):
        return dict.fromkeys(GATED, parity["export_failed"])
    refused = {}
    for backend in GATED:
        figures = parity["backends"].get(backend)
        if not_installed(backend):
            refused[backend] = not_installed(backend)
        elif figures is not None and "failed" in figures:
            refused[backend] = figures["failed"]
        elif figures is not None and not passes(figures):
            refused[backend] = (
                f"dense recall@{GATE_K} on the Factbook train questions is {figures['recall']:.4f} against fp32 PyTorch's "
                f"{parity['reference_recall']:.4f} (allowed gap {RECALL_GATE})"
            )
    return refused


def calibration_feeds(tokenizer, texts: list[str], max_tokens: int) -> list[dict[str, np.ndarray]]:
    """NNCF's calibration inputs for an embedder: a seeded sample of openvino_export.CALIBRATION_TEXTS Factbook chunks (the
    texts an index embeds; no question is read), stripped as sentence-transformers strips them."""
    return openvino_export.calibration_feeds(tokenizer, [text.strip() for text in texts], max_tokens)


def time_embedders(model: str | Path, backends: list[str], threads: int | None, say: Say) -> dict[str, float]:
    from tunelab.rag.embed import SentenceEmbedder

    texts = [chunk.indexed_text() for chunk in factbook_chunks(SentenceEmbedder(model).tokenizer, TIMING_DOCUMENTS)][:TIMING_TEXTS]
    say(f"timing {', '.join(backends)} on {len(texts)} Factbook chunks (first use of --backend auto on this CPU)")
    speeds = {}
    for backend in backends:
        speeds[backend] = choice.texts_per_second(load_embedder(model, backend, threads, say).encode, texts, TIMING_BATCH)
    return speeds


def measurement_key(model: str | Path, threads: int | None) -> dict[str, Any]:
    folder = onnx_folder(model)
    versions = {backend: _file_version(folder / MODEL_FILES[backend]) for backend in GATED}
    return choice.cpu_key(threads, {"torch": folder.name, **versions}, EMBED_BACKENDS)


def read_parity(folder: Path) -> dict[str, Any] | None:
    return atomic.read_json(folder / PARITY_FILE)


def _file_version(path: Path) -> str | None:
    if not path.is_file():
        return None
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"
