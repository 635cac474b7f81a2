"""Embedding backends of an index (rag.embed_choice): ONNX embedders behind the recall gate, the backend recorded in the index, no mixed queries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests._rag_fixtures import write_docs, write_tiny_sentence_model
from tunelab.cli import app as cli
from tunelab.errors import TunelabError

pytest.importorskip("onnxruntime")

# Questions about write_docs' four documents, with the document that answers each.
QUESTIONS = [
    ("what do cats eat", "cats.md"),
    ("how long do kittens sleep", "cats.md"),
    ("the census bureau office tables", "census.html"),
    ("fixing an automobile engine", "cars.json"),
    ("brakes stop wheels", "cars.json"),
    ("which river is long", "rivers.txt"),
    ("water flows to the sea", "rivers.txt"),
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_sentence_model(tmp_path_factory.mktemp("tiny-st"))


@pytest.fixture()
def small_gate(tmp_path, monkeypatch):
    """The gate retrieves over write_docs' chunks instead of the Factbook's (same code, seconds instead of minutes); a fresh cache."""
    from tunelab.rag import embed_choice
    from tunelab.rag.chunk import chunk_document
    from tunelab.rag.documents import load_folder

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    docs = write_docs(tmp_path / "docs")

    def gate_set(tokenizer):
        chunks = [chunk for document in load_folder(docs) for chunk in chunk_document(document, tokenizer, 24, 4)]
        return embed_choice.GateSet(
            [c.indexed_text() for c in chunks], [c.doc_id for c in chunks], [q for q, _ in QUESTIONS], [d for _, d in QUESTIONS], "test questions"
        )

    monkeypatch.setattr(embed_choice, "factbook_gate_set", gate_set)
    return docs


def test_onnx_embedders_match_torch_and_record_their_gate(tiny_model: Path, small_gate: Path) -> None:
    from tunelab.rag.embed import SentenceEmbedder
    from tunelab.rag.embed_choice import load_embedder, onnx_folder

    texts = ["  Cats eat fish and mice ", "The Nile is a long river.", "x", "brakes stop the wheels of the automobile " * 10]
    reference = SentenceEmbedder(tiny_model, bf16=False).encode(texts)
    lines: list[str] = []
    onnx = load_embedder(tiny_model, "onnx", say=lines.append)
    assert onnx.backend == "onnx" and onnx.dim == reference.shape[1]
    assert np.abs(onnx.encode(texts, batch_size=3) - reference).max() < 1e-4
    assert np.abs(onnx.encode_query(texts[1]) - reference[1]).max() < 1e-4
    int8 = load_embedder(tiny_model, "onnx-int8", say=lines.append)
    assert int8.backend == "onnx-int8" and np.allclose(np.linalg.norm(int8.encode(texts), axis=1), 1.0, atol=1e-5)

    parity = json.loads((onnx_folder(tiny_model) / "parity.json").read_text())
    assert parity["questions"] == len(QUESTIONS) and 0 <= parity["reference_recall"] <= 1
    assert parity["backends"]["onnx"]["gap"] == 0.0  # fp32 ONNX retrieves exactly what fp32 PyTorch does
    assert set(parity["backends"]) == {"onnx", "onnx-int8"} and parity["backends"]["onnx-int8"]["recipe"] == "all-matmuls"
    assert any("checking the onnx embedders" in line for line in lines)
    assert not list(onnx_folder(tiny_model).glob(".partial.*"))


def test_a_tunelab_that_exports_another_graph_exports_the_embedder_again(tiny_model: Path, monkeypatch) -> None:
    import tunelab.runtime.export as export
    from tunelab.rag.embed_choice import onnx_folder

    before = onnx_folder(tiny_model)
    assert onnx_folder(tiny_model) == before  # the same model and exporter: the same cached exports
    monkeypatch.setattr(export, "GRAPH_VERSION", export.GRAPH_VERSION + 1)
    assert onnx_folder(tiny_model) != before


def test_a_backend_failing_the_recall_gate_is_refused_with_the_reason(tiny_model: Path, small_gate: Path, monkeypatch) -> None:
    from tunelab.rag import embed_choice
    from tunelab.rag.embed_choice import load_embedder, onnx_folder

    real = embed_choice.recall_at_k

    def int8_loses_recall(embedder, gate, k=5, progress=False):
        return real(embedder, gate, k, progress) - (0.02 if getattr(embedder, "backend", "") == "onnx-int8" else 0.0)

    monkeypatch.setattr(embed_choice, "recall_at_k", int8_loses_recall)
    with pytest.raises(
        TunelabError, match=r"onnx-int8 is refused for embedding model .*: dense recall@5 on the Factbook train questions is .* \(allowed gap 0.005\)"
    ):
        load_embedder(tiny_model, "onnx-int8", say=lambda line: None)
    # Both recipes were tried before refusing; the fp32 model passed and stays usable.
    parity = json.loads((onnx_folder(tiny_model) / "parity.json").read_text())
    assert parity["backends"]["onnx-int8"]["recipe"] == "ffn-down-fp32" and parity["backends"]["onnx-int8"]["gap"] == pytest.approx(-0.02)
    lines: list[str] = []
    chosen = load_embedder(tiny_model, "auto", say=lines.append)
    assert chosen.backend != "onnx-int8"
    record = json.loads((onnx_folder(tiny_model) / "backend_choice.json").read_text())
    assert set(record["refused"]) == {"onnx-int8"} and set(record["texts_per_s"]) == {"torch", "onnx", "openvino", "openvino-int8"}
    assert lines[-1].startswith(f"backend auto: {record['chosen']}") and "not used: onnx-int8: dense recall@5" in lines[-1]


def test_openvino_embedders_match_torch_and_pass_their_gate(tiny_model: Path, small_gate: Path) -> None:
    from tunelab.rag.embed import SentenceEmbedder
    from tunelab.rag.embed_choice import load_embedder, onnx_folder

    texts = ["  Cats eat fish and mice ", "The Nile is a long river.", "x", "brakes stop the wheels of the automobile " * 10]
    reference = SentenceEmbedder(tiny_model, bf16=False).encode(texts)
    lines: list[str] = []
    fp32 = load_embedder(tiny_model, "openvino", say=lines.append)
    assert fp32.backend == "openvino" and type(fp32.session).__name__ == "OpenVinoSession"
    assert np.abs(fp32.encode(texts, batch_size=3) - reference).max() < 1e-4
    int8 = load_embedder(tiny_model, "openvino-int8", say=lines.append)
    vectors = int8.encode(texts)
    assert int8.backend == "openvino-int8" and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.abs(vectors - reference).max() > 1e-6  # quantized: not the fp32 graph under another name

    folder = onnx_folder(tiny_model)
    parity = json.loads((folder / "parity.json").read_text())
    assert set(parity["backends"]) == {"onnx", "openvino", "openvino-int8"}  # the ONNX Runtime int8 model was not needed
    assert parity["backends"]["openvino"]["gap"] == 0.0 and "recall" in parity["backends"]["openvino-int8"]
    assert parity["backends"]["openvino-int8"]["calibration_texts"] == min(128, parity["chunks"])
    assert (folder / "openvino.int8.xml").is_file() and (folder / "openvino.int8.bin").is_file() and not list(folder.glob(".partial.*"))
    assert any("NNCF" in line for line in lines)


def test_openvino_not_installed_is_one_line_and_auto_passes_it_over(tiny_model: Path, small_gate: Path, tmp_path: Path, monkeypatch) -> None:
    import importlib.util

    from tunelab.rag.embed_choice import load_embedder, onnx_folder

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name in ("openvino", "nncf") else real(name, *rest))
    with pytest.raises(TunelabError, match=r"backend openvino needs openvino, which is not installed") as raised:
        load_embedder(tiny_model, "openvino", say=lambda line: None)
    assert "pip install 'tunelab[openvino]'" in raised.value.hint
    command = ["rag", "index", str(small_gate), "--index", str(tmp_path / "index"), "--model", str(tiny_model), "--chunk-tokens", "24", "--overlap", "4"]
    result = CliRunner().invoke(cli, [*command, "--backend", "openvino-int8"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1 and "openvino-int8 needs openvino" in result.output
    assert not (tmp_path / "index").exists()

    chosen = load_embedder(tiny_model, "auto", say=lambda line: None)
    record = json.loads((onnx_folder(tiny_model) / "backend_choice.json").read_text())
    assert chosen.backend == record["chosen"] and set(record["texts_per_s"]) == {"torch", "onnx", "onnx-int8"}
    assert record["refused"] == {name: "openvino is not installed (pip install 'tunelab[openvino]')" for name in ("openvino", "openvino-int8")}


def test_the_index_records_its_backend_and_refuses_mixed_queries(tiny_model: Path, small_gate: Path, tmp_path: Path) -> None:
    from tunelab.rag.embed import SentenceEmbedder
    from tunelab.rag.index import build_index, open_index, read_manifest

    index_dir = tmp_path / "index"
    command = ["rag", "index", str(small_gate), "--index", str(index_dir), "--model", str(tiny_model), "--chunk-tokens", "24", "--overlap", "4"]
    built = CliRunner().invoke(cli, [*command, "--backend", "onnx"])
    assert built.exit_code == 0, built.output
    assert read_manifest(index_dir)["backend"] == "onnx"
    with open_index(index_dir) as opened:
        assert opened.embedder.backend == "onnx"  # queries go through the backend that embedded the chunks
        assert opened.search("what do cats eat", "dense", 2)
    with open_index(index_dir, backend="auto") as opened:
        assert opened.embedder.backend == "onnx"
    with pytest.raises(TunelabError, match="was embedded with onnx; queries embedded with torch would not match"):
        open_index(index_dir, embedder=SentenceEmbedder(tiny_model))
    result = CliRunner().invoke(cli, ["rag", "search", "cats", "--index", str(index_dir), "--backend", "onnx-int8"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1 and "embedded with onnx" in result.output

    # Another backend re-embeds everything, and says why.
    report = build_index(small_gate, index_dir, model=str(tiny_model), chunk_tokens=24, overlap=4, backend="torch")
    assert report.rebuilt == "settings changed: backend" and read_manifest(index_dir)["backend"] == "torch"
    # An index written before backends were recorded was embedded by torch: nothing to re-embed.
    manifest = read_manifest(index_dir)
    del manifest["backend"]
    (index_dir / "index.json").write_text(json.dumps(manifest))
    again = build_index(small_gate, index_dir, model=str(tiny_model), chunk_tokens=24, overlap=4)
    assert again.rebuilt == "" and again.chunks_embedded == 0
