"""RAG: chunking, RRF, search modes, incremental re-index, the Qdrant adapter, answers and abstention."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from tests._rag_fixtures import ConceptEmbedder, tiny_tokenizer, write_docs, write_tiny_sentence_model
from tunelab.data.factbook import Section, clean_html, flatten_json
from tunelab.errors import TunelabError
from tunelab.rag.answer import MIN_SIMILARITY
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
        "d.md",
        "D",
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


def test_a_simulated_retrieval_miss_shows_the_best_chunks_of_the_other_documents_only(concept_index):
    from tunelab.rag.reader_data import ContextSettings, retrieve_context, retrieve_miss_context

    settings = ContextSettings(mode="hybrid", k=2, context="chunks")
    question = "What do cats eat?"
    found = retrieve_context(concept_index, question, settings)
    assert found.hits[0].chunk.doc_id == "cats.md"
    missed = retrieve_miss_context(concept_index, question, "cats.md", settings)
    others = [h for h in concept_index.search(question, "hybrid", 50) if h.chunk.doc_id != "cats.md"]
    assert [h.chunk.chunk_id for h in missed.hits] == [h.chunk.chunk_id for h in others[:2]]  # the others' order is kept
    assert [h.rank for h in missed.hits] == [1, 2] and all("cats" not in p.reader_text().lower() for p in missed.passages)
    assert missed.best_similarity < found.best_similarity


@pytest.mark.parametrize("context", ["focused", "chunks"])
def test_a_simulated_line_miss_shows_the_questions_own_retrieval_without_the_lines_that_answer(concept_index, context):
    from tunelab.rag.focus import focus, split_lines
    from tunelab.rag.reader_data import ContextSettings, retrieve_context, retrieve_line_miss_context

    settings = ContextSettings(mode="hybrid", k=2, context=context, lines=2)
    row = {"question": "What do cats eat?", "answer": "Fish", "aliases": ["mice"]}
    found = retrieve_context(concept_index, row["question"], settings)
    assert any("fish" in p.text for p in found.passages)
    missed = retrieve_line_miss_context(concept_index, row, settings)
    assert [h.chunk.chunk_id for h in missed.hits] == [h.chunk.chunk_id for h in found.hits] and missed.best_similarity == found.best_similarity
    shown = [p.text for p in missed.passages]
    assert shown and not any("fish" in text or "mice" in text for text in shown)
    if context == "focused":  # the next closest lines take the answer's place
        every_line = [p.text for p in focus(row["question"], found.hits, concept_index.embedder, lines=100)]
        assert shown == [line for line in every_line if "fish" not in line][:2]
    else:  # each chunk without its answering lines
        assert shown == ["\n".join(line for line in split_lines(h.chunk.text) if "fish" not in line) for h in found.hits]


def test_titles_a_question_names_are_matched_as_whole_words_and_the_longest_wins():
    from tunelab.rag.named import TitleMatcher

    matcher = TitleMatcher({"gv": "Guinea", "pp": "Papua New Guinea", "vq": "Virgin Islands", "vi": "British Virgin Islands", "vt": "Holy See (Vatican City)"})
    assert matcher.named("On what date is the national holiday of Guinea?") == ["gv"]
    assert matcher.named("What is the capital of Papua New Guinea?") == ["pp"]
    assert matcher.named("Is British Virgin Islands larger than virgin islands?") == ["vi", "vq"]
    assert matcher.named("When did Holy See (Vatican City) become independent?") == ["vt"]
    assert matcher.named("Where is Guineas?") == [] and matcher.named("What is the population of France?") == []


@pytest.mark.parametrize("store", ["lancedb", "qdrant"])
def test_retrieval_kept_to_documents_ranks_only_their_chunks(tmp_path, store):
    embedder = ConceptEmbedder()
    build_index(write_docs(tmp_path / "docs"), tmp_path / "index", embedder=embedder, store=store, chunk_tokens=64, overlap=8)
    with open_index(tmp_path / "index", embedder=embedder) as index:
        assert index.store.titles() == {"cars.json": "Automobile", "cats.md": "Cats", "census.html": "Census & Statistics", "rivers.txt": "rivers"}
        for mode in ("bm25", "dense", "hybrid"):
            everywhere = index.search("feline diet tables fish", mode, 6)
            assert {"census.html", "cats.md"} <= {h.chunk.doc_id for h in everywhere}, mode
            kept = index.search("feline diet tables fish", mode, 6, documents=["cats.md", "rivers.txt"])
            assert kept and {h.chunk.doc_id for h in kept} <= {"cats.md", "rivers.txt"}, mode
            assert [h.chunk.chunk_id for h in kept] == [h.chunk.chunk_id for h in everywhere if h.chunk.doc_id in ("cats.md", "rivers.txt")][: len(kept)], mode


def test_the_named_scope_retrieves_from_the_documents_a_question_names(concept_index):
    from tunelab.rag.reader_data import ContextSettings, retrieve_context, retrieve_miss_context

    question = "What does the Automobile need, fish or milk?"
    everywhere = retrieve_context(concept_index, question, ContextSettings(k=3, context="chunks"))
    assert everywhere.hits[0].chunk.doc_id == "cats.md"
    named = ContextSettings(k=3, context="chunks", scope="named")
    assert {h.chunk.doc_id for h in retrieve_context(concept_index, question, named).hits} == {"cars.json"}
    unnamed = "What do felines eat?"  # names no document: every document is ranked, as with scope "all"
    assert [h.chunk.chunk_id for h in retrieve_context(concept_index, unnamed, named).hits] == [
        h.chunk.chunk_id for h in retrieve_context(concept_index, unnamed, ContextSettings(k=3, context="chunks")).hits
    ]
    # a simulated miss of the named document: as if it were not in the index, so every other document is ranked
    missed = retrieve_miss_context(concept_index, question, "cars.json", named)
    assert missed.hits and "cars.json" not in {h.chunk.doc_id for h in missed.hits} and missed.hits[0].chunk.doc_id == "cats.md"


def test_every_context_names_the_documents_its_question_names_whatever_the_scope(concept_index):
    from tunelab.rag.reader_data import ContextSettings, retrieve_context, retrieve_miss_context

    question = "What does the Automobile need, fish or milk?"
    for scope in ("all", "named"):
        settings = ContextSettings(k=3, context="chunks", scope=scope)
        assert retrieve_context(concept_index, question, settings).named_documents == ("cars.json",)
        # a simulated miss shows other documents, but the question still names its own: an answer from them is not from it
        assert retrieve_miss_context(concept_index, question, "cars.json", settings).named_documents == ("cars.json",)
        assert retrieve_context(concept_index, "What do felines eat?", settings).named_documents == ()


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


def test_grounded_prompt_and_the_source_the_answer_came_from(concept_index):
    from tunelab.rag.answer import answer
    from tunelab.rag.reader_data import ContextSettings

    chunks = ContextSettings(mode="dense", k=3, context="chunks")
    generator = RecordingGenerator("fish and mice")
    result = answer("what do cats eat", concept_index, generator, settings=chunks, min_similarity=0.3)
    assert not result.abstained
    prompt = generator.prompts[0]
    assert "[1] Cats — Food: Cats eat fish and mice" in prompt  # each passage named by its document and section
    assert "[2]" in prompt and "[3]" in prompt and "[4]" not in prompt
    assert prompt.rstrip().endswith("Question: what do cats eat\nAnswer:")
    # The source is the one passage the answer was read from, and the quote is its text.
    assert [h.chunk.chunk_id for h in result.sources] == ["cats.md#0"] and result.passage.text.startswith("Cats eat fish and mice")
    formatted = result.format()
    assert formatted.splitlines()[0] == generator.reply
    assert "Sources:" in formatted and "[1] Cats — Food (cats.md, cats.md#0)" in formatted
    assert '"Cats eat fish and mice; kittens eat milk."' in formatted
    as_json = result.to_dict()
    assert as_json["quote"] == result.passage.text and [s["chunk_id"] for s in as_json["sources"]] == ["cats.md#0"]

    # An answer found in no passage names no passage: every shown chunk is listed, nothing quoted.
    elsewhere = answer("what do cats eat", concept_index, RecordingGenerator("lasagne"), settings=chunks, min_similarity=0.3)
    assert not elsewhere.abstained and elsewhere.passage is None
    assert [h.rank for h in elsewhere.sources] == [1, 2, 3]

    # Focused context: only the `lines` closest lines are shown.
    focused = RecordingGenerator("fish")
    answer("what do cats eat", concept_index, focused, settings=ContextSettings(mode="dense", k=3, context="focused", lines=2), min_similarity=0.3)
    assert "[1] " in focused.prompts[0] and "[2] " in focused.prompts[0] and "[3] " not in focused.prompts[0]


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
        json.dumps({"question": "census bureau statistics", "answer": "tables", "aliases": [], "doc_id": "census.html"})
        + "\n"
        + json.dumps({"question": "Nile river", "answer": "long", "aliases": [], "doc_id": "rivers.txt"})
        + "\n"
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


@pytest.mark.parametrize("decoding", ["grounded", "free"])
def test_cli_ask_answers_with_a_lora_run(colour_index, lora_run, monkeypatch, decoding):
    from peft import PeftModel
    from typer.testing import CliRunner

    import tunelab.lm.load as lm_load
    import tunelab.prompts.generate as prompts_generate
    from tunelab.cli import app
    from tunelab.rag.answer import ABSTAIN

    loaded, calls = [], []
    real_load, real_batch = lm_load.load_lm, prompts_generate.answer_batch

    def spy_load(source, *args, **kwargs):
        model, tokenizer = real_load(source, *args, **kwargs)
        loaded.append((source, model))
        return model, tokenizer

    def spy_batch(generator, prompts, **kwargs):
        calls.append(kwargs)
        return real_batch(generator, prompts, **kwargs)

    monkeypatch.setattr(lm_load, "load_lm", spy_load)
    monkeypatch.setattr(prompts_generate, "answer_batch", spy_batch)
    result = CliRunner().invoke(
        app,
        [
            "rag",
            "ask",
            "What colour is the sky?",
            "--index",
            str(colour_index),
            "--reader",
            "lm",
            "--model",
            str(lora_run),
            "--decoding",
            decoding,
            "-k",
            "1",
            "--context",
            "chunks",
            "--min-similarity",
            "-1",
            "--max-new-tokens",
            "4",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    [(source, model)] = loaded
    assert source.adapter == (lora_run / "model").resolve() and isinstance(model, PeftModel)  # the adapter, on its base
    [call] = calls  # the LM was asked once, with the CLI's token budget and decoding
    assert call["max_new_tokens"] == 4
    answered = json.loads(result.stdout)
    assert answered["reader"].endswith(f":{decoding}")
    assert answered["question"] == "What colour is the sky?" and isinstance(answered["answer"], str) and answered["answer"]
    assert isinstance(answered["abstained"], bool)
    if decoding == "grounded":
        [[passage]] = call["grounded_passages"]  # -k 1, whole chunks: one passage to copy from
        assert answered["abstained"] or answered["answer"] in passage  # a span of the passage, or the abstention
    else:
        assert call["grounded_passages"] is None
    if answered["abstained"]:
        assert answered["answer"] == ABSTAIN and answered["sources"] == []
    else:
        assert [s["source"] for s in answered["sources"]] in (["sky.md"], ["grass.md"])


def test_cli_eval_answers_json_and_predictions_file(colour_index, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import tunelab.lm.generate as lm_generate
    import tunelab.prompts.generate as prompts_generate
    from tunelab.cli import app
    from tunelab.prompts.generate import Answered

    replies = {"What colour is the sky?": "The sky is blue [1].", "What colour is grass?": "purple", "What colour is coal?": "I'm not sure."}

    class FakeGenerator:
        models: list = []
        name = "fake"

        def __init__(self, model):
            self.models.append(model)

    def fake_answers(generator, prompts, grounded_passages=None, **kwargs):
        assert grounded_passages is None  # --decoding free
        return [Answered(replies[p.rsplit("Question: ", 1)[1].split("\nAnswer:")[0]], 0.0, 1, 1) for p in prompts]

    monkeypatch.setattr(lm_generate, "Generator", FakeGenerator)
    monkeypatch.setattr(prompts_generate, "answer_batch", fake_answers)
    lm = ["--reader", "lm", "--decoding", "free"]
    qa = tmp_path / "qa.jsonl"
    qa.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {"question": "What colour is the sky?", "answer": "blue", "aliases": [], "doc_id": "sky.md"},
                {"question": "What colour is grass?", "answer": "green", "aliases": [], "doc_id": "grass.md"},
                {"question": "What colour is coal?", "answer": "black", "aliases": [], "doc_id": "coal.md"},
            ]
        )
    )
    out = tmp_path / "predictions.jsonl"
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "rag",
            "eval",
            str(qa),
            "--index",
            str(colour_index),
            "--modes",
            "bm25",
            "--answer",
            *lm,
            "--model",
            "some-run",
            "--min-similarity",
            "-1",
            "--json",
            "--predictions",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert FakeGenerator.models == ["some-run"]
    answers = json.loads(result.stdout)["answers"]
    assert answers["reader"].startswith("lm:fake:") and answers["reader"].endswith(":free")
    assert answers["context"] == {"mode": "hybrid", "k": 6, "context": "focused", "lines": 5, "scope": "all"} and answers["context_from"] == "default"
    assert answers["thresholds"] == {
        "min_similarity": -1.0,
        "min_similarity_from": "--min-similarity",
        "min_confidence": None,
        "min_confidence_from": answers["thresholds"]["min_confidence_from"],
        "require_named_document": False,
    }
    assert answers["right"] == answers["hallucinated"] == answers["abstained"] == pytest.approx(1 / 3, abs=1e-4)
    assert answers["exact_match"] == 0.0 and 0 < answers["token_f1"] < 1
    assert answers["answer_in_context"] == pytest.approx(2 / 3, abs=1e-4)  # both passages shown; coal is in neither
    assert answers["retrieval_misses"] == {"questions": 1, "abstained": 1.0}  # coal, which the reader did not guess
    assert answers["abstained_because"] == {"reader": 1}
    assert len(answers["right_ci95"]) == len(answers["hallucinated_ci95"]) == 2
    assert "predictions" not in answers  # those go to the file
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(p["question"], p["verdict"]) for p in lines] == [
        ("What colour is the sky?", "right"),
        ("What colour is grass?", "hallucinated"),
        ("What colour is coal?", "abstained"),
    ]
    assert lines[0]["prediction"] == "The sky is blue [1]." and lines[0]["sources"][0]["rank"] == 1
    assert {"answer", "aliases", "abstained", "exact_match", "f1", "hallucinated"} <= set(lines[0])

    table = runner.invoke(app, ["rag", "eval", str(qa), "--index", str(colour_index), "--modes", "bm25", "--answer", *lm])
    assert table.exit_code == 0, table.output
    for column in ("right", "EM", "F1", "abstained", "hallucinated"):
        assert column in table.output
    assert f"abstains below similarity {MIN_SIMILARITY:.3f} (default)" in " ".join(table.output.split())
    assert "retrieval misses (no answer in the shown context): 1, abstained on 100.0%" in " ".join(table.output.split())
    assert "abstained because of: " in table.output
    missing = runner.invoke(app, ["rag", "eval", str(qa), "--index", str(colour_index), "--predictions", str(tmp_path / "p.jsonl")])
    assert missing.exit_code == 2 and "--answer" in missing.output
    reader_without_answers = runner.invoke(app, ["rag", "eval", str(qa), "--index", str(colour_index), *lm])
    assert reader_without_answers.exit_code == 2 and "--reader needs --answer" in reader_without_answers.output


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
    from tunelab.answers import summarise, verdict
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
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=256,
            num_labels=1,
        )
    ).save_pretrained(folder)
    reranker = CrossEncoderReranker(folder)
    hits = concept_index.search("feline diet", "hybrid", 5)
    expected = reranker.model.predict([("feline diet", h.chunk.indexed_text()) for h in hits])
    reranked = reranker.rerank("feline diet", hits)
    assert [h.score for h in reranked] == pytest.approx(sorted(map(float, expected), reverse=True), rel=1e-5)
    with pytest.raises(TunelabError, match="cross-encoder"):
        CrossEncoderReranker(tmp_path / "nothing")


# -- readers from the command line: train-reader, ask and eval with an extractive run ---------

# (kind, question, answer, aliases, doc_id): facts of write_docs() the reader can copy
READER_FACTS = [
    ("food", "what do cats eat", "fish", ["mice"], "cats.md"),
    ("food", "what do kittens eat", "milk", [], "cats.md"),
    ("vehicle", "what does an automobile engine burn", "petrol", [], "cars.json"),
    ("vehicle", "what stops the wheels", "Brakes", [], "cars.json"),
]


def reader_rows(n: int) -> list[dict]:
    """n distinct questions of two kinds (numbered variants of READER_FACTS)."""
    rows = []
    for i in range(n):
        kind, question, answer, aliases, doc_id = READER_FACTS[i % len(READER_FACTS)]
        rows.append({"question": f"{question} {i}", "answer": answer, "aliases": aliases, "doc_id": doc_id, "kind": kind})
    return rows


def write_reader_bert(folder):
    """A 2-layer BERT, hidden 32, with the RAG fixtures' vocabulary (unknown words spell out in letters)."""
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = tiny_tokenizer(folder)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=256
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reader_run(tmp_path_factory):
    """`tunelab rag train-reader` on 120 train questions over a concept-embedder index, with a tiny BERT: the
    run and its output. While it lives, an index naming the "concept-fake" model opens with the ConceptEmbedder
    (a real sentence model, even a tiny one, makes focusing 120 questions' lines take seconds)."""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    import tunelab.rag.embed as embed
    from tunelab.cli import app

    real = embed.SentenceEmbedder

    def embedder(name, *args, **kwargs):
        return ConceptEmbedder() if str(name) == ConceptEmbedder.name else real(name, *args, **kwargs)

    patch = pytest.MonkeyPatch()
    patch.setattr(embed, "SentenceEmbedder", embedder)
    root = tmp_path_factory.mktemp("reader")
    build_index(write_docs(root / "docs"), root / "index", embedder=ConceptEmbedder(), chunk_tokens=64, overlap=8)
    qa = root / "qa"
    qa.mkdir()
    (qa / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reader_rows(120)))
    (qa / "test.jsonl").write_text("".join(json.dumps({**r, "question": r["question"].rsplit(" ", 1)[0]}) + "\n" for r in reader_rows(4)))
    # fields.jsonl beside train.jsonl (as `tunelab data factbook-qa` writes it): extra training questions
    (qa / "fields.jsonl").write_text("".join(json.dumps({**r, "question": f"field {r['question']}", "kind": "field:x"}) + "\n" for r in reader_rows(6)))
    bert = write_reader_bert(root / "bert")
    result = CliRunner().invoke(
        app,
        ["rag", "train-reader", str(qa), "--index", str(root / "index"), "--out", str(root / "run"), "--model", str(bert), "--epochs", "1"]
        + ["--distractors", "retrieval-miss", "--miss-abstention", "0.5", "--miss-kind", "retrieval"],
    )
    yield SimpleNamespace(run=root / "run", index=root / "index", qa=qa, bert=bert, result=result)
    patch.undo()


def test_cli_train_reader_abstains_on_line_misses_by_default(reader_run, tmp_path):
    """Without --miss-abstention the thresholds are chosen among those abstaining on MISS_ABSTENTION of the calibration
    questions asked as line misses (their own retrieval without the lines that answer)."""
    from typer.testing import CliRunner

    from tunelab.cli import app

    out = tmp_path / "default"
    args = ["rag", "train-reader", str(reader_run.qa), "--index", str(reader_run.index), "--out", str(out), "--model", str(reader_run.bert)]
    result = CliRunner().invoke(app, [*args, "--epochs", "1"])
    assert result.exit_code == 0, result.output
    abstention = json.loads((out / "rag_reader.json").read_text())["abstention"]
    assert abstention["min_miss_abstention"] == 0.6 and abstention["miss_kind"] == "line" and abstention["simulated_misses"] > 0
    assert abstention["miss_abstention"] >= 0.6 and "of simulated line misses" in abstention["criterion"]


def test_cli_train_reader_writes_thresholds_chosen_on_train(reader_run):
    from tunelab.rag.reader_data import ContextSettings

    result = reader_run.result
    assert result.exit_code == 0, result.output
    saved = json.loads((reader_run.run / "rag_reader.json").read_text())
    assert saved["context"] == ContextSettings().to_dict()
    abstention = saved["abstention"]
    assert {"min_similarity", "min_confidence"} <= set(abstention) and "train" in abstention["chosen_on"]
    assert abstention["questions"] == 50  # the calibration share of the 120 train questions (at least 50)
    assert saved["examples"]["total"] == 70 + 6  # the rest trained the reader, with the field questions
    assert saved["examples"]["distractors"] == "retrieval-miss" and saved["examples"]["distractor"] > 0
    # every calibration question is also asked as if retrieval had missed (two documents, so the other one shows)
    assert abstention["min_miss_abstention"] == 0.5 and abstention["simulated_misses"] > 0 and abstention["miss_abstention"] >= 0.5
    assert abstention["miss_kind"] == "retrieval" and "of simulated retrieval misses" in abstention["criterion"]
    output = " ".join(result.output.split())
    assert f"trained the reader: {reader_run.run} (with 6 questions of" in output and "abstains below retrieval similarity" in output
    for metric in ("right", "EM", "F1", "abstained", "hallucinated"):
        assert f" {metric} " in output


def _shown(index_dir, run, question):
    from tunelab.rag.reader_data import retrieve_context
    from tunelab.rag.train_reader import read_reader_settings

    settings, _ = read_reader_settings(run)
    with open_index(index_dir) as opened:
        return retrieve_context(opened, question, settings).passages


def _check_span_answer(answered: dict, shown) -> None:
    from tunelab.rag.answer import ABSTAIN
    from tunelab.rag.reader_data import join_passages

    if answered["abstained"]:
        assert answered["answer"] == ABSTAIN and answered["sources"] == [] and answered["quote"] is None
        return
    assert answered["answer"] and answered["answer"] in join_passages(shown)  # a span of what the reader was shown
    quoted = [p for p in shown if p.text == answered["quote"]]
    assert quoted, "the quote is one of the shown lines"
    assert [s["chunk_id"] for s in answered["sources"]] == [quoted[0].hit.chunk.chunk_id]


def test_cli_ask_with_an_extractive_run_answers_with_a_span_and_quotes_it(reader_run, tmp_path):
    from typer.testing import CliRunner

    from tunelab.cli import app

    runner = CliRunner()
    question = "what do cats eat"
    shown = _shown(reader_run.index, reader_run.run, question)
    result = runner.invoke(app, ["rag", "ask", question, "--reader", str(reader_run.run), "--index", str(reader_run.index), "--json"])
    assert result.exit_code == 0, result.output
    answered = json.loads(result.stdout)
    saved = json.loads((reader_run.run / "rag_reader.json").read_text())
    assert answered["reader"] == f"extractive:{reader_run.run.name}"
    assert answered["context"] == saved["context"]  # read as the reader was trained
    assert answered["thresholds"]["min_similarity_from"] == "rag_reader.json (chosen on train)"
    _check_span_answer(answered, shown)

    # The same run with thresholds that never abstain and one line of context: it answers from that line,
    # with its source and the quoted line.
    eager = tmp_path / "eager"
    shutil.copytree(reader_run.run, eager)
    saved["abstention"].update(min_similarity=-1.0, min_confidence=-1e9)
    saved["context"]["lines"] = 1
    (eager / "rag_reader.json").write_text(json.dumps(saved))
    shown = _shown(reader_run.index, eager, question)
    assert len(shown) == 1
    result = runner.invoke(app, ["rag", "ask", question, "--reader", str(eager), "--index", str(reader_run.index), "--json"])
    assert result.exit_code == 0, result.output
    answered = json.loads(result.stdout)
    assert not answered["abstained"] and answered["context"]["lines"] == 1
    _check_span_answer(answered, shown)
    text = runner.invoke(app, ["rag", "ask", question, "--reader", str(eager), "--index", str(reader_run.index)])
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    assert lines[0] == answered["answer"] and "Sources:" in lines and f'    "{answered["quote"]}"' in lines

    # --scope named: a question naming the Automobile document is answered from its lines only
    named = runner.invoke(
        app, ["rag", "ask", "What does the Automobile eat?", "--reader", str(eager), "--index", str(reader_run.index), "--scope", "named", "--json"]
    )
    assert named.exit_code == 0, named.output
    answered = json.loads(named.stdout)
    assert answered["context"]["scope"] == "named" and not answered["abstained"]
    assert [s["chunk_id"].split("#")[0] for s in answered["sources"]] == ["cars.json"]


def test_cli_eval_answers_with_a_trained_reader_says_where_its_thresholds_came_from(reader_run):
    from typer.testing import CliRunner

    from tunelab.cli import app

    runner = CliRunner()
    base = [
        "rag",
        "eval",
        str(reader_run.qa / "test.jsonl"),
        "--index",
        str(reader_run.index),
        "--modes",
        "bm25",
        "--answer",
        "--reader",
        str(reader_run.run),
        "--json",
    ]
    result = runner.invoke(app, base)
    assert result.exit_code == 0, result.output
    answers = json.loads(result.stdout)["answers"]
    saved = json.loads((reader_run.run / "rag_reader.json").read_text())
    assert answers["reader"] == f"extractive:{reader_run.run.name}" and answers["questions"] == 4
    assert answers["context"] == saved["context"] and answers["context_from"].startswith("rag_reader.json")
    thresholds = answers["thresholds"]
    assert thresholds["min_similarity"] == pytest.approx(saved["abstention"]["min_similarity"], abs=1e-4)
    assert thresholds["min_similarity_from"] == thresholds["min_confidence_from"] == "rag_reader.json (chosen on train)"
    if math.isfinite(saved["abstention"]["min_confidence"]):
        assert thresholds["min_confidence"] == pytest.approx(saved["abstention"]["min_confidence"], abs=1e-4)

    # Options on the command line override the reader's settings, and say so.
    result = runner.invoke(app, [*base, "-k", "2", "--context", "chunks", "--min-similarity", "-1"])
    assert result.exit_code == 0, result.output
    answers = json.loads(result.stdout)["answers"]
    assert answers["context"]["k"] == 2 and answers["context"]["context"] == "chunks" and "command line" in answers["context_from"]
    assert answers["thresholds"]["min_similarity"] == -1.0 and answers["thresholds"]["min_similarity_from"] == "--min-similarity"


def test_cli_defaults_to_the_builtin_index_and_reader(reader_run, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import tunelab.rag.builtin as builtin
    from tunelab.cli import app

    monkeypatch.chdir(tmp_path)  # no folder named "factbook" here
    monkeypatch.setattr(builtin, "builtin_index", lambda progress=True, embed_model="minilm", backend="torch": reader_run.index)
    monkeypatch.setattr(builtin, "builtin_reader", lambda progress=True: reader_run.run)
    runner = CliRunner()
    for where in ([], ["--index", "factbook"]):
        result = runner.invoke(app, ["rag", "ask", "what do cats eat", *where, "--json"])
        assert result.exit_code == 0, result.output
        answered = json.loads(result.stdout)
        assert answered["reader"] == f"extractive:{reader_run.run.name}"
        _check_span_answer(answered, _shown(reader_run.index, reader_run.run, "what do cats eat"))
    result = runner.invoke(app, ["rag", "search", "census bureau", "--mode", "bm25", "-k", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["source"] == "census.html"


def test_cli_reader_options_are_checked_before_anything_is_built(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import tunelab.rag.builtin as builtin
    from tunelab.cli import app

    def never(*args, **kwargs):
        raise AssertionError("nothing should be built for a wrong option")

    monkeypatch.setattr(builtin, "builtin_index", never)
    monkeypatch.setattr(builtin, "builtin_reader", never)
    run = tmp_path / "run"
    run.mkdir()
    cases = [
        (["rag", "ask", "q", "--decoding", "free"], "--decoding applies only to --reader lm"),
        (["rag", "ask", "q", "--reader", str(run), "--index", str(tmp_path), "--decoding", "grounded"], "--decoding applies only to --reader lm"),
        (["rag", "ask", "q", "--model", "smollm2"], "--model applies only to --reader lm"),
        (["rag", "ask", "q", "--reader", str(tmp_path / "nope")], "is not 'builtin', 'lm' or a run directory"),
        (["rag", "ask", "q", "--reader", "lm", "--lines", "0"], "--lines must be at least 1"),
        (["rag", "eval", str(tmp_path / "qa.jsonl"), "--answer", "--decoding", "free"], "--decoding applies only to --reader lm"),
        (["rag", "train-reader", str(tmp_path / "test.jsonl"), "--out", str(tmp_path / "r")], "test split"),
        (
            ["rag", "train-reader", str(tmp_path / "train.jsonl"), "--out", str(tmp_path / "r"), "--calibration-fields", "-1"],
            "--calibration-fields must be 0 or more",
        ),
        (
            ["rag", "train-reader", str(tmp_path / "train.jsonl"), "--out", str(tmp_path / "r"), "--miss-abstention", "1.5"],
            "--miss-abstention is a share between 0 and 1",
        ),
    ]
    runner = CliRunner()
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)


@pytest.mark.parametrize("flag, expected", [([], False), (["--named-document"], True), (["--no-named-document"], False)])
def test_cli_train_reader_passes_the_named_document_choice_on(tmp_path, monkeypatch, flag, expected):
    from contextlib import nullcontext

    from typer.testing import CliRunner

    import tunelab.rag.builtin as builtin
    import tunelab.rag.index as index_module
    import tunelab.rag.train_reader as train_reader
    from tunelab.cli import app
    from tunelab.errors import TunelabError

    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reader_rows(4)))
    monkeypatch.setattr(builtin, "resolve_index", lambda index, progress=True: tmp_path)
    monkeypatch.setattr(index_module, "open_index", lambda folder: nullcontext("index"))
    asked = {}

    def train(*args, **kwargs):
        asked.update(kwargs)
        raise TunelabError("stopped here", "the test needs only the arguments")

    monkeypatch.setattr(train_reader, "train_rag_reader", train)
    result = CliRunner().invoke(app, ["rag", "train-reader", str(tmp_path), "--out", str(tmp_path / "r"), *flag])
    assert result.exit_code == 2 and "stopped here" in result.output, result.output
    assert asked["named_document"] is expected


def test_reader_thresholds_are_chosen_on_train_questions_it_was_not_trained_on(concept_index, tmp_path, monkeypatch):
    from pathlib import Path

    import tunelab.rag.readers as readers
    import tunelab.rag.train_reader as train_reader
    from tunelab.rag.readers import Reading
    from tunelab.training import extractive_qa

    rows = reader_rows(120)
    trained, calibrated = [], []

    def fake_train(config, progress=True):
        trained.extend(json.loads(line)["question"] for line in Path(config.data).read_text().splitlines())
        Path(config.out).mkdir(parents=True)

    class FakeSpanReader:
        def __init__(self, run, threshold=None):
            pass

        def read_many(self, questions, passages, threshold=None):
            return [Reading("fish", 0, False, float(i % 5)) for i, _ in enumerate(questions)]

    real_choose = train_reader.choose_abstention

    named_document = []

    def spy_choose(calibration, contexts, readings, chosen_on, **kwargs):
        calibrated.extend(r["question"] for r in calibration)
        named_document.append(kwargs["named_document"])
        return real_choose(calibration, contexts, readings, chosen_on, **kwargs)

    monkeypatch.setattr(extractive_qa, "train_extractive_qa", fake_train)
    monkeypatch.setattr(readers, "SpanReader", FakeSpanReader)
    monkeypatch.setattr(train_reader, "choose_abstention", spy_choose)
    extra = [{**row, "question": f"extra {row['question']}", "kind": "field:x"} for row in reader_rows(10)]
    unseen = [{**row, "question": f"unseen {row['question']}", "kind": "field:y"} for row in reader_rows(6)]
    run = train_reader.train_rag_reader(rows, concept_index, tmp_path / "run", progress=False, extra_rows=extra, extra_calibration=unseen)
    given = {r["question"] for r in rows}
    assert calibrated and trained
    assert set(calibrated) <= given | {r["question"] for r in unseen}  # only train questions...
    assert not set(calibrated) & set(trained)  # ...that the reader was not trained on
    assert set(calibrated) | set(trained) == given | {r["question"] for r in extra} | {r["question"] for r in unseen}
    assert {r["question"] for r in unseen} <= set(calibrated)  # extra calibration: calibrated on only; extra rows: trained on only
    abstention = json.loads((run / "rag_reader.json").read_text())["abstention"]
    assert "train" in abstention["chosen_on"] and abstention["questions"] == len(calibrated)
    train_reader.train_rag_reader(rows, concept_index, tmp_path / "named", progress=False, named_document=True)
    assert named_document == [train_reader.NAMED_DOCUMENT, True]  # the choice reaches the thresholds


@pytest.mark.parametrize("distractors", ["retrieval-miss", "both", "line-miss"])
def test_retrieval_miss_distractors_show_the_question_its_best_chunks_of_the_other_documents(concept_index, tmp_path, monkeypatch, distractors):
    from pathlib import Path

    import tunelab.rag.readers as readers
    import tunelab.rag.train_reader as train_reader
    from tunelab.rag.reader_data import ContextSettings, retrieve_line_miss_context, retrieve_miss_context
    from tunelab.rag.readers import Reading
    from tunelab.training import extractive_qa

    examples = []

    def fake_train(config, progress=True):
        examples.extend(json.loads(line) for line in Path(config.data).read_text().splitlines())
        Path(config.out).mkdir(parents=True)

    class FakeSpanReader:
        def __init__(self, run, threshold=None):
            pass

        def read_many(self, questions, passages, threshold=None):
            return [Reading("fish", 0, False, 1.0) for _ in questions]

    monkeypatch.setattr(extractive_qa, "train_extractive_qa", fake_train)
    monkeypatch.setattr(readers, "SpanReader", FakeSpanReader)
    settings = ContextSettings(k=2, lines=2)
    train_reader.train_rag_reader(reader_rows(120), concept_index, tmp_path / "run", settings=settings, progress=False, distractors=distractors)
    shown = [e for e in examples if e["distractor"]]
    assert len(shown) > 2
    if distractors == "line-miss":  # its own retrieval, no line holding its answer: the reader must answer nothing
        row_of = {r["question"]: r for r in reader_rows(120)}
        own = [[p.reader_text() for p in retrieve_line_miss_context(concept_index, row_of[e["question"]], settings).passages] for e in shown]
        assert [e["passages"] for e in shown] == own and all(e["answer"] == "" for e in shown)
        return
    own_miss = [e["passages"] == [p.reader_text() for p in retrieve_miss_context(concept_index, e["question"], e["doc_id"], settings).passages] for e in shown]
    # every distractor is its question's own retrieval miss, or with "both" every other one (the rest: another question's passages)
    assert own_miss == ([True] * len(shown) if distractors == "retrieval-miss" else [i % 2 == 0 for i in range(len(shown))])
    with pytest.raises(TunelabError, match="unknown distractors"):
        train_reader.train_rag_reader(reader_rows(120), concept_index, tmp_path / "other", progress=False, distractors="nearby")


# -- the built-in Factbook index and reader (cheap fakes record what would be built) ---------


@pytest.fixture()
def fake_builds(tmp_path, monkeypatch):
    import contextlib
    from pathlib import Path

    import tunelab.rag.builtin as builtin
    from tunelab.data.factbook_qa import QAItem

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    calls = {"index": [], "reader": []}

    def fake_build_index(source, index_dir, **kwargs):
        calls["index"].append((source, Path(index_dir), kwargs))
        Path(index_dir).mkdir(parents=True, exist_ok=True)
        (Path(index_dir) / "index.json").write_text("{}")

    def fake_train(rows, index, out, **kwargs):
        calls["reader"].append((list(rows), index, Path(out), kwargs))
        Path(out).mkdir(parents=True)
        (Path(out) / "rag_reader.json").write_text("{}")
        return Path(out)

    @contextlib.contextmanager
    def fake_open(index_dir, **kwargs):
        yield f"opened {index_dir}"

    items = [QAItem(f"question {i}?", f"answer {i}", [], f"doc{i % 4}", ("capital", "currency")[i % 2], f"T{i % 4}") for i in range(20)]
    monkeypatch.setattr(builtin, "build_index", fake_build_index)
    monkeypatch.setattr(builtin, "train_rag_reader", fake_train)
    monkeypatch.setattr(builtin, "open_index", fake_open)
    monkeypatch.setattr(builtin, "build_factbook_qa", lambda: items)
    fields = [
        QAItem(f"What is the {f} of T{i}?", f"{f} {i}", [], f"doc{i}", f"field:{f}", f"T{i}")
        for f in ("terrain", "climate", "coastline", "area")
        for i in range(4)
    ]
    monkeypatch.setattr(builtin, "build_field_questions", lambda: fields)
    return builtin, calls, items


def test_builtin_index_is_built_once_in_the_cache(fake_builds, tmp_path, capsys):
    from tunelab.atomic import partial_path

    builtin, calls, _ = fake_builds
    final = builtin.builtin_index(progress=False)
    assert final.parent == tmp_path / "cache" / "indexes" and final.name.startswith("factbook-")
    [(source, built_in, kwargs)] = calls["index"]
    assert source == "factbook" and built_in == partial_path(final)  # built in a staging folder, then renamed
    assert (kwargs["model"], kwargs["chunk_tokens"], kwargs["overlap"]) == ("minilm", 200, 32)
    assert (final / "index.json").is_file() and not partial_path(final).exists()
    assert "building the built-in Factbook index once" in capsys.readouterr().err
    assert builtin.builtin_index(progress=False) == final and len(calls["index"]) == 1  # reused
    assert builtin.resolve_index(None, progress=False) == final and len(calls["index"]) == 1


def test_builtin_index_never_takes_an_interrupted_build_as_done(fake_builds):
    from tunelab.atomic import partial_path

    builtin, calls, _ = fake_builds
    final = builtin.index_path()
    staging = partial_path(final)
    staging.mkdir(parents=True)
    (staging / "index.json").write_text("{}")  # a leftover staging folder, even one with a manifest
    assert builtin.builtin_index(progress=False) == final
    assert len(calls["index"]) == 1 and (final / "index.json").is_file() and not staging.exists()

    # Interrupted mid-build: nothing is published, and the next call builds afresh.
    shutil.rmtree(final)
    real = builtin.build_index

    def interrupted(source, index_dir, **kwargs):
        real(source, index_dir, **kwargs)
        raise KeyboardInterrupt

    builtin.build_index = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            builtin.builtin_index(progress=False)
    finally:
        builtin.build_index = real
    assert not final.exists() and not staging.exists()
    assert builtin.builtin_index(progress=False) == final and len(calls["index"]) == 3

    # A folder in the final place that no complete build put there is rebuilt, not trusted.
    (final / "index.json").unlink()
    assert builtin.builtin_index(progress=False) == final and len(calls["index"]) == 4 and (final / "index.json").is_file()


def test_builtin_settings_name_their_folder(fake_builds, monkeypatch):
    import tunelab.rag.index as index_module

    builtin, calls, _ = fake_builds
    folders = [builtin.builtin_index(progress=False), builtin.builtin_index(progress=False, embed_model="another-model")]
    monkeypatch.setattr(builtin, "CHUNK_TOKENS", 120)
    folders.append(builtin.builtin_index(progress=False))
    monkeypatch.setattr(index_module, "FORMAT_VERSION", index_module.FORMAT_VERSION + 1)
    folders.append(builtin.builtin_index(progress=False))
    assert len(set(folders)) == 4 and len(calls["index"]) == 4
    assert calls["index"][1][2]["model"] == "another-model" and calls["index"][2][2]["chunk_tokens"] == 120
    reader = builtin.reader_path()
    monkeypatch.setattr(builtin, "READER_EPOCHS", builtin.READER_EPOCHS + 1)
    assert builtin.reader_path() != reader
    # a setting added later is named only when it is not what it was before: a reader trained then keeps its folder
    assert "scope" not in builtin.reader_settings()["context"]


def test_builtin_reader_is_trained_once_on_the_train_split(fake_builds, capsys):
    from tunelab.atomic import partial_path
    from tunelab.data.factbook_qa import split_qa
    from tunelab.rag.reader_data import ContextSettings

    builtin, calls, items = fake_builds
    run = builtin.builtin_reader(progress=False)
    assert run.parent.name == "readers" and run.name.startswith("factbook-") and (run / "rag_reader.json").is_file()
    [(rows, index, out, kwargs)] = calls["reader"]
    train, test = split_qa(items, 0.2, 0)
    assert rows == [item.to_dict() for item in train]
    assert not {r["question"] for r in rows} & {item.question for item in test}  # the test split is never seen
    assert out == partial_path(run) and not out.exists()
    assert index == f"opened {builtin.index_path()}" and len(calls["index"]) == 1
    assert kwargs["settings"] == ContextSettings() and (kwargs["model"], kwargs["epochs"], kwargs["seed"]) == ("minilm", 2.0, 0)
    # and field questions: two fields (at most half) only to calibrate on, the other two spread over and trained on
    trained_on, calibrated_on = kwargs["extra_rows"], kwargs["extra_calibration"]
    assert len(trained_on) == len(calibrated_on) == 8
    assert len({r["kind"] for r in trained_on[:2]}) == 2 and not {r["kind"] for r in trained_on} & {r["kind"] for r in calibrated_on}
    assert "building the built-in Factbook reader once" in capsys.readouterr().err
    assert builtin.builtin_reader(progress=False) == run and len(calls["reader"]) == 1


def test_resolve_index_names_the_builtin_index_unless_a_folder_is_called_so(fake_builds, tmp_path, monkeypatch):
    from pathlib import Path

    builtin, calls, _ = fake_builds
    monkeypatch.chdir(tmp_path)
    assert builtin.resolve_index("factbook", progress=False) == builtin.index_path()
    (tmp_path / "factbook").mkdir()
    assert builtin.resolve_index("factbook", progress=False) == Path("factbook")
    assert builtin.resolve_index(tmp_path / "mine", progress=False) == tmp_path / "mine"
    assert len(calls["index"]) == 1


# -- prompts eval with grounded decoding -------------------------------------------------------


def test_prompts_eval_grounded_decoding_copies_from_the_retrieved_passages(colour_index, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import tunelab.prompts.evaluate as prompts_evaluate
    from tunelab.cli import app
    from tunelab.prompts.generate import Answered

    qa = tmp_path / "qa.jsonl"
    qa.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {"question": "What colour is the sky?", "answer": "blue", "aliases": [], "doc_id": "sky.md"},
                {"question": "What colour is grass?", "answer": "green", "aliases": [], "doc_id": "grass.md"},
            ]
        )
    )
    seen = []

    def fake_answers(generator, prompts, grounded_passages=None, **kwargs):
        seen.append((list(prompts), grounded_passages))
        return [Answered("blue", 0.0, 1, 1) for _ in prompts]

    monkeypatch.setattr(prompts_evaluate, "answer_batch", fake_answers)
    result = prompts_evaluate.evaluate_templates(["grounded"], qa, index=colour_index, k=2, decoding="grounded", generator=object())
    [(prompts, passages)] = seen
    assert len(passages) == len(prompts) == 2
    for prompt, texts in zip(prompts, passages):
        assert len(texts) == 2 and all(text in prompt for text in texts)  # the passages are the context the prompt shows
    assert result["decoding"] == result["templates"][0]["decoding"] == "grounded"
    prompts_evaluate.evaluate_templates(["grounded"], qa, index=colour_index, k=2, generator=object())
    assert seen[-1][1] is None  # free decoding by default

    runner = CliRunner()
    no_index = runner.invoke(app, ["prompts", "eval", "grounded", "--qa", str(qa), "--decoding", "grounded"])
    assert no_index.exit_code == 2 and "--decoding grounded" in no_index.output and "--index" in no_index.output
    closed_book = runner.invoke(app, ["prompts", "eval", "plain", "--qa", str(qa), "--index", str(colour_index), "--decoding", "grounded"])
    assert closed_book.exit_code == 2 and "plain" in closed_book.output
