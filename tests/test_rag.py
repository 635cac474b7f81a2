"""RAG: chunking, RRF, search modes, incremental re-index, the Qdrant adapter, answers and abstention."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from tests._rag_fixtures import ConceptEmbedder, tiny_tokenizer, write_docs, write_tiny_sentence_model
from tunelab.data.factbook import Section, clean_html, flatten_json
from tunelab.errors import TunelabError
from tunelab.rag.chunk import chunk_document, split_section
from tunelab.rag.documents import Document, load_folder
from tunelab.rag.fuse import DEFAULT_WEIGHTS, rrf
from tunelab.rag.index import build_index, open_index

# -- chunking ------------------------------------------------------------------------------


def _count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_chunks_respect_sections_size_and_overlap():
    tok = tiny_tokenizer()
    long_para = " ".join(["cats eat fish and mice"] * 30)  # 150 tokens, one paragraph
    doc = Document(
        "d.md", "D",
        [Section("One", [" ".join(["river water sea"] * 8), long_para]), Section("Two", ["apples pears fruit"])],
        "h",
    )
    chunks = chunk_document(doc, tok, max_tokens=40, overlap=8)
    assert [c.chunk_id for c in chunks] == [f"d.md#{i}" for i in range(len(chunks))]
    # No chunk mixes the two sections, and the last section is its own chunk.
    assert chunks[-1].section == "Two" and chunks[-1].text == "apples pears fruit"
    assert all("apples" not in c.text for c in chunks[:-1])
    assert all(_count(tok, c.text) <= 40 for c in chunks)
    # The first cut is the paragraph break (24 tokens in: in the window's second half, so preferred),
    # which needs no overlap; later cuts fall inside the long paragraph and overlap.
    assert chunks[0].text == " ".join(["river water sea"] * 8)
    inside = [c.text for c in chunks if c.section == "One"][1:]
    assert len(inside) >= 4
    for first, second in zip(inside, inside[1:]):
        tail = first.split()[-3:]
        assert " ".join(tail) in second, "consecutive chunks of a split paragraph share tokens"
    # Every word of the section survives chunking.
    assert set(" ".join(inside).split()) == set(long_para.split())


def test_chunk_without_overlap_tiles_the_text_exactly():
    tok = tiny_tokenizer()
    text = " ".join(f"word{i % 10}" for i in range(120))
    pieces = split_section(text, tok, max_tokens=32, overlap=0)
    assert " ".join(pieces).split() == text.split()


def test_chunk_settings_are_validated():
    tok = tiny_tokenizer()
    with pytest.raises(TunelabError, match="overlap"):
        split_section("cats " * 100, tok, max_tokens=40, overlap=21)


# -- documents -----------------------------------------------------------------------------


def test_folder_formats_become_titled_sections(tmp_path):
    docs = {d.doc_id: d for d in load_folder(write_docs(tmp_path / "docs"))}
    assert set(docs) == {"cats.md", "census.html", "cars.json", "rivers.txt"}
    assert docs["cats.md"].title == "Cats" and [s.heading for s in docs["cats.md"].sections] == ["Food", "Sleep"]
    html = docs["census.html"]
    assert html.title == "Census & Statistics"
    assert [s.heading for s in html.sections] == ["Census bureau report", "Office"]
    assert "&amp;" not in html.sections[1].text and "&" in html.sections[1].text
    cars = docs["cars.json"]
    assert cars.title == "Automobile"
    assert cars.sections[0].paragraphs[0] == "Engine: An automobile engine burns petrol; fixing the motor."
    assert docs["rivers.txt"].sections[0].paragraphs == ["The Nile is a long river.", "Rivers carry water to the sea."]


def test_clean_html_and_flatten_json():
    assert clean_html("R&eacute;publique <em>fran&ccedil;aise</em><br>line two") == "République française\nline two"
    sections = flatten_json({"Gov": {"Capital": {"name": {"text": "Paris"}, "note": "<strong>note:</strong> seat"}}})
    assert sections == [Section("Gov", ["Capital - name: Paris", "Capital - note: seat"])]


# -- fusion --------------------------------------------------------------------------------


def test_rrf_arithmetic():
    fused = dict(rrf([["a", "b", "c"], ["c", "a"]], k=60))
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["b"] == pytest.approx(1 / 62)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert [item for item, _ in rrf([["a", "b", "c"], ["c", "a"]])] == ["a", "c", "b"]
    weighted = dict(rrf([["a"], ["b"]], k=10, weights=[2.0, 0.5]))
    assert weighted == {"a": pytest.approx(2 / 11), "b": pytest.approx(0.5 / 11)}
    with pytest.raises(ValueError):
        rrf([["a"]], weights=[1.0, 2.0])


# -- search modes --------------------------------------------------------------------------


@pytest.fixture()
def concept_index(tmp_path):
    embedder = ConceptEmbedder()
    docs = write_docs(tmp_path / "docs")
    build_index(docs, tmp_path / "index", embedder=embedder, chunk_tokens=64, overlap=8)
    index = open_index(tmp_path / "index", embedder=embedder)
    yield index
    index.close()


def test_modes_rank_differently_where_keywords_and_meaning_disagree(concept_index):
    query = "feline diet"
    bm25 = [h.chunk.doc_id for h in concept_index.search(query, "bm25", 5)]
    dense = [h.chunk.doc_id for h in concept_index.search(query, "dense", 5)]
    hybrid = [h.chunk.doc_id for h in concept_index.search(query, "hybrid", 2, weights=(1.0, 1.0))]
    # Keywords: only the census page literally says "feline diet"; the cat page shares no word.
    assert bm25[0] == "census.html" and "cats.md" not in bm25
    # Meaning: the cat page ("cats eat fish") is closest.
    assert dense[0] == "cats.md"
    # Fusion keeps the best of both in the top 2.
    assert set(hybrid) == {"census.html", "cats.md"}
    # Weights move the fused ranking towards one list.
    only_dense = concept_index.search(query, "hybrid", 3, weights=(0.0, 1.0))
    assert [h.chunk.chunk_id for h in only_dense] == [h.chunk.chunk_id for h in concept_index.search(query, "dense", 3)]


def test_hybrid_scores_are_rrf_of_the_two_lists(concept_index):
    query = "feline diet"
    depth = 50
    bm25 = [h.chunk.chunk_id for h in concept_index.search(query, "bm25", depth)]
    dense = [h.chunk.chunk_id for h in concept_index.search(query, "dense", depth)]
    assert DEFAULT_WEIGHTS == (1.0, 1.0)
    for weights in ((1.0, 1.0), (0.3, 1.0), (2.0, 0.5)):
        hits = concept_index.search(query, "hybrid", 3, candidates=depth, weights=weights)
        expected = rrf([bm25, dense], k=60, weights=weights)[:3]
        assert [(h.chunk.chunk_id, h.score) for h in hits] == [(cid, pytest.approx(s)) for cid, s in expected]
    assert concept_index.search(query, "hybrid", 3) == concept_index.search(query, "hybrid", 3, weights=DEFAULT_WEIGHTS)
    assert [h.rank for h in hits] == [1, 2, 3]


def test_search_rejects_bad_input(concept_index):
    with pytest.raises(TunelabError, match="mode"):
        concept_index.search("cats", "hybird", 3)
    with pytest.raises(TunelabError, match="empty"):
        concept_index.search("  ", "bm25", 3)


# -- incremental re-index ------------------------------------------------------------------


def test_reindex_embeds_only_changed_files_and_drops_deleted(tmp_path):
    embedder = ConceptEmbedder()
    docs = write_docs(tmp_path / "docs")
    first = build_index(docs, tmp_path / "index", embedder=embedder, chunk_tokens=64, overlap=8)
    assert (first.added, first.changed, first.removed, first.unchanged) == (4, 0, 0, 0)

    embedder.calls.clear()
    again = build_index(docs, tmp_path / "index", embedder=embedder, chunk_tokens=64, overlap=8)
    assert (again.added, again.changed, again.removed, again.unchanged, again.chunks_embedded) == (0, 0, 0, 4, 0)
    assert again.chunks_total == first.chunks_total

    (docs / "rivers.txt").write_text("The Nile is the longest river of Africa.\n")
    (docs / "census.html").unlink()
    (docs / "dogs.md").write_text("# Dogs\n\nDogs eat meat; a puppy drinks milk.\n")
    embedder.calls.clear()
    third = build_index(docs, tmp_path / "index", embedder=embedder, chunk_tokens=64, overlap=8)
    assert (third.added, third.changed, third.removed, third.unchanged) == (1, 1, 1, 2)
    embedded = [text for call in embedder.calls for text in call]
    assert len(embedded) == third.chunks_embedded == 2
    assert all(("Nile" in t) or ("Dogs" in t) for t in embedded)

    with open_index(tmp_path / "index", embedder=embedder) as index:
        found = {h.chunk.doc_id for h in index.search("census bureau statistics tables", "bm25", 10)}
        assert "census.html" not in found
        assert index.search("longest river africa", "bm25", 1)[0].chunk.doc_id == "rivers.txt"
        assert index.store.count() == third.chunks_total
    manifest = json.loads((tmp_path / "index" / "index.json").read_text())
    assert set(manifest["documents"]) == {"cats.md", "cars.json", "rivers.txt", "dogs.md"}

    # A different chunk size means different chunks: everything is rebuilt.
    rebuilt = build_index(docs, tmp_path / "index", embedder=embedder, chunk_tokens=48, overlap=8)
    assert rebuilt.rebuilt and rebuilt.added == 4 and rebuilt.chunks_total == rebuilt.chunks_embedded


def test_index_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "precious.txt").write_text("keep me")
    with pytest.raises(TunelabError, match="not a tunelab index"):
        build_index(write_docs(tmp_path / "docs"), tmp_path / "index", embedder=ConceptEmbedder())


# -- Qdrant adapter ------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["feline diet", "automobile engine repair", "long river water", "bureau office tables"])
def test_qdrant_ranks_like_lancedb_on_the_same_data(tmp_path_factory, query):
    root = tmp_path_factory.mktemp("q")
    embedder = ConceptEmbedder()
    docs = write_docs(root / "docs")
    build_index(docs, root / "lance", embedder=embedder, chunk_tokens=64, overlap=8)
    build_index(docs, root / "qdrant", embedder=embedder, store="qdrant", chunk_tokens=64, overlap=8)
    with open_index(root / "lance", embedder=embedder) as lance, open_index(root / "qdrant", embedder=embedder) as qdrant:
        assert qdrant.store.count() == lance.store.count()
        for mode in ("bm25", "dense", "hybrid"):
            a = lance.search(query, mode, 6)
            b = qdrant.search(query, mode, 6)
            assert [h.chunk.chunk_id for h in a] == [h.chunk.chunk_id for h in b], mode
            assert [h.score for h in a] == pytest.approx([h.score for h in b], rel=1e-4), mode


def test_qdrant_incremental_delete(tmp_path):
    embedder = ConceptEmbedder()
    docs = write_docs(tmp_path / "docs")
    build_index(docs, tmp_path / "q", embedder=embedder, store="qdrant", chunk_tokens=64, overlap=8)
    (docs / "census.html").unlink()
    report = build_index(docs, tmp_path / "q", embedder=embedder, store="qdrant", chunk_tokens=64, overlap=8)
    assert report.removed == 1
    with open_index(tmp_path / "q", embedder=embedder) as index:
        assert all(h.chunk.doc_id != "census.html" for h in index.search("census bureau", "hybrid", 10))


# -- the real embedding path, with a tiny random sentence-transformers model ---------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return write_tiny_sentence_model(tmp_path_factory.mktemp("tiny-st"))


def test_tiny_sentence_transformer_end_to_end(tmp_path, tiny_model):
    from tunelab.rag.embed import SentenceEmbedder

    model_dir = tiny_model
    embedder = SentenceEmbedder(str(model_dir))
    vectors = embedder.encode(["cats eat fish", "car engine", "cats eat fish"])
    assert vectors.shape == (3, 32)
    assert vectors[0] @ vectors[2] == pytest.approx(1.0, abs=1e-3)
    assert (abs((vectors**2).sum(axis=1) - 1) < 1e-3).all()

    report = build_index(write_docs(tmp_path / "docs"), tmp_path / "index", model=str(model_dir), chunk_tokens=64, overlap=8)
    assert report.added == 4 and report.chunks_total > 4
    with open_index(tmp_path / "index") as index:  # the model named in index.json is reloaded
        dense = index.search("cats eat fish", "dense", 3)
        assert len(dense) == 3 and dense[0].similarity is not None
        assert dense[0].score >= dense[1].score >= dense[2].score


# -- answers -------------------------------------------------------------------------------


class RecordingGenerator:
    def __init__(self, reply: str):
        self.reply = reply
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        return self.reply


def test_grounded_prompt_and_citations(concept_index):
    from tunelab.rag.answer import answer

    generator = RecordingGenerator("Cats eat fish and mice [1]. Kittens drink milk [1, 2]. See also [9].")
    result = answer("what do cats eat", concept_index, generator, mode="dense", k=3, min_similarity=0.3)
    assert not result.abstained
    prompt = generator.prompts[0]
    assert "[1] Cats — Food\nCats eat fish and mice" in prompt
    assert "[2]" in prompt and "[3]" in prompt and "[4]" not in prompt
    assert prompt.rstrip().endswith("Question: what do cats eat\nAnswer:")
    assert [h.rank for h in result.sources] == [1, 2]  # [9] does not exist and is not listed
    formatted = result.format()
    assert formatted.splitlines()[0] == generator.reply
    assert "Sources:" in formatted and "[1] Cats — Food (cats.md, cats.md#0)" in formatted


def test_abstains_when_retrieval_is_not_relevant(concept_index):
    from tunelab.rag.answer import ABSTAIN, answer

    generator = RecordingGenerator("a confident guess")
    result = answer("stock market prices", concept_index, generator, min_similarity=0.3)
    assert result.abstained and result.text == ABSTAIN and result.sources == []
    assert generator.prompts == []  # the model is never asked to guess
    assert result.best_similarity < 0.3

    # The model itself saying it does not know is an abstention too.
    unsure = answer("what do cats eat", concept_index, RecordingGenerator("I don't know."), min_similarity=0.3)
    assert unsure.abstained and unsure.sources == []


def test_hf_generator_with_a_tiny_random_gpt2(tmp_path):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from tunelab.rag.answer import HFGenerator

    words = ["<eos>", "[UNK]", *sorted(set("use only the numbered sources below cite answer question what do cats eat".split()))]
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", unk_token="[UNK]")
    tokenizer.save_pretrained(tmp_path / "lm")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(words), n_embd=16, n_layer=1, n_head=2, n_positions=512)).save_pretrained(tmp_path / "lm")

    generator = HFGenerator(str(tmp_path / "lm"), max_new_tokens=5)
    text = generator("Question: what do cats eat\nAnswer:")
    assert isinstance(text, str)
    assert len(tokenizer(text)["input_ids"]) <= 5


# -- CLI -----------------------------------------------------------------------------------


def test_cli_index_search_json_and_eval(tmp_path, tiny_model):
    from typer.testing import CliRunner

    from tunelab.cli import app

    model_dir = tiny_model
    docs = write_docs(tmp_path / "docs")
    runner = CliRunner()
    result = runner.invoke(app, ["rag", "index", str(docs), "--index", str(tmp_path / "ix"), "--model", str(model_dir), "--chunk-tokens", "64"])
    assert result.exit_code == 0, result.output
    assert "4 added, 0 changed, 0 removed" in " ".join(result.output.split())

    result = runner.invoke(app, ["rag", "search", "census bureau", "--index", str(tmp_path / "ix"), "--mode", "bm25", "-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert hits[0]["source"] == "census.html" and hits[0]["rank"] == 1
    assert set(hits[0]) == {"rank", "score", "source", "title", "section", "chunk_id", "text"}

    qa = tmp_path / "qa.jsonl"
    qa.write_text(
        json.dumps({"question": "census bureau statistics", "answer": "tables", "aliases": [], "doc_id": "census.html"}) + "\n"
        + json.dumps({"question": "Nile river", "answer": "long", "aliases": [], "doc_id": "rivers.txt"}) + "\n"
    )
    result = runner.invoke(app, ["rag", "eval", str(qa), "--index", str(tmp_path / "ix"), "--modes", "bm25,hybrid", "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)["retrieval"]
    assert metrics["bm25"]["recall@1"] == 1.0 and metrics["bm25"]["mrr"] == 1.0
    assert set(metrics) == {"bm25", "hybrid"} and metrics["hybrid"]["latency_ms_p95"] > 0

    result = runner.invoke(app, ["rag", "search", "x", "--index", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no index" in result.output
    shutil.rmtree(tmp_path / "ix")


def test_ranking_metrics_arithmetic():
    from tunelab.rag.evaluate import answer_scores, first_relevant_rank, ranking_metrics, token_f1

    assert first_relevant_rank(["a", "b", "b"], "b") == 2
    assert first_relevant_rank(["a"], "z") is None
    m = ranking_metrics([1, 3, None, 7])
    assert m["recall@1"] == 0.25 and m["recall@5"] == 0.5 and m["recall@10"] == 0.75
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 7) / 4)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(8)) / 4)
    assert token_f1("the Paris city", "Paris") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert answer_scores("The capital of France is Paris [1].", ["Paris"]) == (1.0, pytest.approx(2 * (1 / 5) / (1 + 1 / 5)))
    assert answer_scores("68,512,806 people", ["68512806"])[0] == 1.0


def test_answer_evaluation_scores_generated_answers(concept_index):
    from tunelab.rag.evaluate import evaluate_answers

    rows = [
        {"question": "what do cats eat", "answer": "fish", "aliases": ["mice"], "doc_id": "cats.md"},
        {"question": "what do kittens eat", "answer": "milk", "aliases": [], "doc_id": "cats.md"},
        {"question": "stock market prices", "answer": "rising", "aliases": [], "doc_id": "none"},
    ]
    scores = evaluate_answers(concept_index, rows, RecordingGenerator("Cats eat fish [1]."), min_similarity=0.3)
    # Q1 right (fish), Q2 wrong (says fish, not milk), Q3 abstained; milk and fish are both in the cat passages.
    assert scores["exact_match"] == pytest.approx(1 / 3, abs=1e-4)
    assert scores["abstained"] == pytest.approx(1 / 3, abs=1e-4)
    assert scores["answer_in_context"] == pytest.approx(2 / 3, abs=1e-4)
    assert scores["token_f1"] == pytest.approx(0.5 / 3, abs=1e-4)  # "cats eat fish" vs "fish": F1 0.5


def test_cross_encoder_rerank_orders_by_its_scores(tmp_path, concept_index):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from tunelab.rag.rerank import CrossEncoderReranker

    folder = tmp_path / "ce"
    tokenizer = tiny_tokenizer(folder)
    torch.manual_seed(1)
    BertForSequenceClassification(
        BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=64, max_position_embeddings=256, num_labels=1)
    ).save_pretrained(folder)
    reranker = CrossEncoderReranker(folder)
    hits = concept_index.search("feline diet", "hybrid", 5)
    expected = reranker.model.predict([("feline diet", h.chunk.indexed_text()) for h in hits])
    reranked = reranker.rerank("feline diet", hits)
    assert [h.score for h in reranked] == pytest.approx(sorted(map(float, expected), reverse=True), rel=1e-5)
    with pytest.raises(TunelabError, match="cross-encoder"):
        CrossEncoderReranker(tmp_path / "nothing")
