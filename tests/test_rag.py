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


@pytest.fixture(scope="module")
def colour_index(tmp_path_factory, tiny_model):
    """Two one-line documents indexed with the tiny sentence model (short passages: the tiny Llama's
    context is 256 tokens)."""
    root = tmp_path_factory.mktemp("colours")
    docs = root / "docs"
    docs.mkdir()
    (docs / "sky.md").write_text("# Sky\n\nThe sky is blue.\n")
    (docs / "grass.md").write_text("# Grass\n\nThe grass is green.\n")
    build_index(docs, root / "index", model=str(tiny_model), chunk_tokens=64, overlap=8)
    return root / "index"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A run directory whose model/ holds a (randomly initialised, so not a no-op) LoRA adapter of a tiny Llama."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests._lm_fixtures import write_tiny_llama

    root = tmp_path_factory.mktemp("lora")
    base = write_tiny_llama(root / "base")
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    run = root / "run"
    model.save_pretrained(run / "model")
    AutoTokenizer.from_pretrained(base).save_pretrained(run / "model")
    return run


def test_cli_ask_answers_with_a_lora_run(colour_index, lora_run, monkeypatch):
    from peft import PeftModel
    from typer.testing import CliRunner

    import tunelab.lm.load as lm_load
    from tunelab.cli import app
    from tunelab.lm.generate import Generator

    loaded, calls = [], []
    real_load, real_call = lm_load.load_lm, Generator.__call__

    def spy_load(source, *args, **kwargs):
        model, tokenizer = real_load(source, *args, **kwargs)
        loaded.append((source, model))
        return model, tokenizer

    def spy_call(self, prompt, **kwargs):
        calls.append(kwargs)
        return real_call(self, prompt, **kwargs)

    monkeypatch.setattr(lm_load, "load_lm", spy_load)
    monkeypatch.setattr(Generator, "__call__", spy_call)
    result = CliRunner().invoke(app, ["rag", "ask", "What colour is the sky?", "--index", str(colour_index), "--model", str(lora_run),
                                      "-k", "1", "--min-similarity", "-1", "--max-new-tokens", "4", "--json"])
    assert result.exit_code == 0, result.output
    [(source, model)] = loaded
    assert source.adapter == (lora_run / "model").resolve() and isinstance(model, PeftModel)  # the adapter, on its base
    assert calls == [{"max_new_tokens": 4}]  # the LM was asked, with the CLI's token budget
    answered = json.loads(result.stdout)
    assert answered["question"] == "What colour is the sky?" and isinstance(answered["answer"], str) and answered["answer"]
    assert isinstance(answered["abstained"], bool)
    if not answered["abstained"]:
        assert [s["source"] for s in answered["sources"]] in (["sky.md"], ["grass.md"])


def test_cli_eval_answers_json_and_predictions_file(colour_index, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import tunelab.lm.generate as lm_generate
    from tunelab.cli import app

    replies = {"What colour is the sky?": "The sky is blue [1].", "What colour is grass?": "purple", "What colour is coal?": "I'm not sure."}

    class FakeGenerator:
        models: list = []

        def __init__(self, model):
            self.models.append(model)

        def __call__(self, prompt: str, max_new_tokens: int = 256) -> str:
            return replies[prompt.rsplit("Question: ", 1)[1].split("\nAnswer:")[0]]

    monkeypatch.setattr(lm_generate, "Generator", FakeGenerator)
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": "What colour is the sky?", "answer": "blue", "aliases": [], "doc_id": "sky.md"},
        {"question": "What colour is grass?", "answer": "green", "aliases": [], "doc_id": "grass.md"},
        {"question": "What colour is coal?", "answer": "black", "aliases": [], "doc_id": "coal.md"},
    ]))
    out = tmp_path / "predictions.jsonl"
    runner = CliRunner()
    result = runner.invoke(app, ["rag", "eval", str(qa), "--index", str(colour_index), "--modes", "bm25", "--answer", "--model", "some-run",
                                 "--min-similarity", "-1", "--json", "--predictions", str(out)])
    assert result.exit_code == 0, result.output
    assert FakeGenerator.models == ["some-run"]
    answers = json.loads(result.stdout)["answers"]
    assert answers["right"] == answers["hallucinated"] == answers["abstained"] == pytest.approx(1 / 3, abs=1e-4)
    assert answers["exact_match"] == 0.0 and 0 < answers["token_f1"] < 1
    assert answers["answer_in_context"] == pytest.approx(2 / 3, abs=1e-4)  # both passages shown; coal is in neither
    assert len(answers["right_ci95"]) == len(answers["hallucinated_ci95"]) == 2
    assert "predictions" not in answers  # those go to the file
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(p["question"], p["verdict"]) for p in lines] == [
        ("What colour is the sky?", "right"), ("What colour is grass?", "hallucinated"), ("What colour is coal?", "abstained")]
    assert lines[0]["prediction"] == "The sky is blue [1]." and lines[0]["sources"][0]["rank"] == 1
    assert {"answer", "aliases", "abstained", "exact_match", "f1", "hallucinated"} <= set(lines[0])

    table = runner.invoke(app, ["rag", "eval", str(qa), "--index", str(colour_index), "--modes", "bm25", "--answer", "--min-similarity", "-1"])
    assert table.exit_code == 0, table.output
    for column in ("right", "EM", "F1", "abstained", "hallucinated"):
        assert column in table.output
    missing = runner.invoke(app, ["rag", "eval", str(qa), "--index", str(colour_index), "--predictions", str(tmp_path / "p.jsonl")])
    assert missing.exit_code == 2 and "--answer" in missing.output


def test_ranking_metrics_arithmetic():
    from tunelab.rag.evaluate import first_relevant_rank, ranking_metrics

    assert first_relevant_rank(["a", "b", "b"], "b") == 2
    assert first_relevant_rank(["a"], "z") is None
    m = ranking_metrics([1, 3, None, 7])
    assert m["recall@1"] == 0.25 and m["recall@5"] == 0.5 and m["recall@10"] == 0.75
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 7) / 4)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(8)) / 4)


def test_answer_evaluation_scores_generated_answers(concept_index):
    from tunelab.rag.evaluate import evaluate_answers

    rows = [
        {"question": "what do cats eat", "answer": "fish", "aliases": ["mice"], "doc_id": "cats.md"},
        {"question": "what do kittens eat", "answer": "milk", "aliases": [], "doc_id": "cats.md"},
        {"question": "stock market prices", "answer": "rising", "aliases": [], "doc_id": "none"},
    ]
    scores = evaluate_answers(concept_index, rows, RecordingGenerator("Cats eat fish [1]."), min_similarity=0.3)
    # Q1 right (fish, in a sentence), Q2 hallucinated (says fish, not milk), Q3 abstained (nothing relevant retrieved);
    # milk and fish are both in the cat passages.
    assert scores["questions"] == 3
    assert scores["right"] == scores["hallucinated"] == scores["abstained"] == pytest.approx(1 / 3, abs=1e-4)
    assert scores["exact_match"] == 0.0  # "cats eat fish" is not exactly "fish"
    assert scores["token_f1"] == pytest.approx(0.5 / 3, abs=1e-4)  # "cats eat fish" vs "fish": F1 0.5
    assert scores["answer_in_context"] == pytest.approx(2 / 3, abs=1e-4)
    for key in ("right_ci95", "hallucinated_ci95"):
        low, high = scores[key]
        assert 0 <= low <= scores[key[:-5]] <= high <= 1
    predictions = scores["predictions"]
    assert [p["verdict"] for p in predictions] == ["right", "hallucinated", "abstained"]
    first = predictions[0]
    assert first["question"] == "what do cats eat" and first["answer"] == "fish" and first["aliases"] == ["mice"]
    assert first["prediction"] == "Cats eat fish [1]." and first["abstained"] == 0 and first["contains"] == 1
    assert first["sources"][0] == {"rank": 1, "doc_id": "cats.md", "chunk_id": "cats.md#0"}
    assert predictions[2]["sources"] == [] and predictions[2]["abstained"] == 1


# The same predictions through every path that scores answers: tricky ones included.
SAME_VERDICTS = [
    # (question, gold, aliases, prediction, verdict)
    ("what is the capital of france", "Paris", [], "The capital of France is Paris [1].", "right"),
    ("what is the capital of chad", "N'Djamena", [], "N’Djamena", "right"),  # typographic apostrophe
    ("how many people live in france", "68512806", [], "68,512,806 people [1, 2]", "right"),
    ("what currency do they use", "euros", ["EUR"], "EUR", "right"),  # an alias
    ("what is the capital of italy", "Rome", [], "", "abstained"),
    ("what is the capital of spain", "Madrid", [], "I'm not sure.", "abstained"),
    ("what is the capital of peru", "Lima", [], "I don’t know", "abstained"),
    ("what number is it", "1", [], "[1]", "abstained"),  # a bare citation is no answer
    ("what is the capital of germany", "Berlin", [], "Lyon [2]", "hallucinated"),
    ("what is the capital of djibouti", "Djibouti", [], "The capital of Djibouti is Obock", "hallucinated"),
]


def test_one_scorer_gives_the_same_verdicts_on_every_path(concept_index, tmp_path, monkeypatch):
    import tunelab.prompts.evaluate as prompts_evaluate
    from tunelab.evaluate.answers import summarise, verdict
    from tunelab.prompts.generate import Answered
    from tunelab.prompts.loader import load_template
    from tunelab.rag.answer import ABSTAIN
    from tunelab.rag.evaluate import evaluate_answers
    from tunelab.strategies.config import StrategiesConfig
    from tunelab.strategies.run import Pipeline

    rows = [{"question": q, "answer": a, "aliases": al, "doc_id": "cats.md"} for q, a, al, _, _ in SAME_VERDICTS]
    replies = {q: text for q, _, _, text, _ in SAME_VERDICTS}
    expected = [v for *_, v in SAME_VERDICTS]

    # rag eval --answer: a generator that answers each question with its fixed text
    def rag_generator(prompt: str) -> str:
        return replies[prompt.rsplit("Question: ", 1)[1].split("\nAnswer:")[0]]

    rag = evaluate_answers(concept_index, rows, rag_generator, min_similarity=-1.0)  # the model answers every question
    assert [p["verdict"] for p in rag["predictions"]] == expected
    abstentions = [p["prediction"] for p in rag["predictions"] if p["question"] in ("what is the capital of spain", "what is the capital of italy")]
    assert abstentions == [ABSTAIN, ABSTAIN]  # rag.answer uses the same abstention detector

    # prompts eval and strategies: run_template with the model's answers replaced by the fixed texts
    def fixed_answers(generator, prompts, **kwargs):
        return [Answered(replies[prompt], 0.0, 1, 1) for prompt in prompts]

    monkeypatch.setattr(prompts_evaluate, "answer_batch", fixed_answers)
    prompts = prompts_evaluate.run_template(load_template("plain"), rows, generator=None)
    pipeline = Pipeline(StrategiesConfig(qa=str(tmp_path), out=str(tmp_path / "out")), progress=False)
    strategies = pipeline.answer(None, "plain", rows)

    for path in (prompts["predictions"], strategies["predictions"]):
        assert [verdict(p) for p in path] == expected
        for mine, theirs in zip(path, rag["predictions"]):
            for key in ("exact_match", "contains", "f1", "abstained", "hallucinated"):
                assert mine[key] == pytest.approx(theirs[key]), (mine["prediction"], key)
    summary = summarise(strategies["predictions"])
    assert rag["right"] == pytest.approx(summary["contains"], abs=1e-4) == pytest.approx(prompts["summary"]["contains"], abs=1e-4)
    assert rag["hallucinated"] == pytest.approx(summary["hallucination_rate_all"], abs=1e-4)
    assert rag["abstained"] == pytest.approx(summary["abstention_rate"], abs=1e-4)


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
