"""`tunelab strategies --quick` end to end with a tiny random Llama, and the knowledge-base edits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests._lm_fixtures import write_jsonl, write_tiny_llama

COUNTRIES = [
    ("Aland", "Mossby", "12,345"),
    ("Brevia", "Kostal", "98,760"),
    ("Corvath", "Lindu", "4,321"),
    ("Dunmere", "Ostra", "55,555"),
    ("Eskar", "Pelin", "7,007"),
    ("Fjorda", "Rasten", "31,400"),
]


def _rows(countries) -> list[dict]:
    rows = []
    for name, capital, population in countries:
        rows.append({"question": f"What is the capital of {name}?", "answer": capital, "aliases": [], "doc_id": f"{name.lower()}.md", "kind": "capital"})
        rows.append(
            {
                "question": f"What is the population of {name}?",
                "answer": population,
                "aliases": [population.replace(",", "")],
                "doc_id": f"{name.lower()}.md",
                "kind": "population",
            }
        )
    return rows


@pytest.fixture(scope="module")
def kb_and_qa(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("strategies")
    kb = root / "kb"
    kb.mkdir()
    for name, capital, population in COUNTRIES:
        (kb / f"{name.lower()}.md").write_text(
            f"# {name}\n\n## Government\n\nCapital - name: {capital}\n\n## People\n\nPopulation: {population}\n", encoding="utf-8"
        )
    qa = root / "qa"
    qa.mkdir()
    write_jsonl(qa / "train.jsonl", _rows(COUNTRIES[:4]) * 3)
    write_jsonl(qa / "test.jsonl", _rows(COUNTRIES[4:]) + _rows(COUNTRIES[:1]))
    # questions about other fields (as `tunelab data factbook-qa` writes them): the extractive readers train on
    # one field's and choose their thresholds also on the other's
    write_jsonl(
        qa / "fields.jsonl",
        [
            {"question": f"What is the {field} of {name}?", "answer": answer, "aliases": [], "doc_id": f"{name.lower()}.md", "kind": f"field:{field}"}
            for name, _, population in COUNTRIES[:4]
            for field, answer in (("name", name), ("people population", population))
        ],
    )
    return kb, qa


@pytest.mark.smoke  # the real minilm embeds the index and scores answer relevance
def test_quick_run_writes_every_output(tmp_path, kb_and_qa):
    from tunelab.strategies import STRATEGIES, StrategiesConfig, run_strategies

    kb, qa = kb_and_qa
    model = write_tiny_llama(tmp_path / "llama")
    out = tmp_path / "report"
    results = run_strategies(StrategiesConfig(qa=str(qa), kb=str(kb), model=str(model), out=str(out), quick=True), progress=False)

    assert results["complete"] is True
    assert list(results["strategies"]) == ["closed-book", "rag", "best-prompt", "fine-tuned", "extractive+rag", "fine-tuned+rag"]
    assert set(results["strategies"]) == set(STRATEGIES)
    for name, s in results["strategies"].items():
        assert s["n"] == 6, name
        for key in ("exact_match", "contains", "f1"):
            low, high = s[f"{key}_ci95"]
            assert low <= s[key] <= high
        assert s["latency"]["mean_ms"] > 0 and s["peak_memory_mb"] > 0 and s["disk_mb"] > 0
        lines = [json.loads(line) for line in (out / "predictions" / f"{name}.jsonl").read_text().splitlines()]
        assert len(lines) == 6
        # the summary is the per-question verdicts' mean, and every question has exactly one verdict
        assert s["abstention_rate"] == pytest.approx(sum(p["abstained"] for p in lines) / 6)
        assert s["hallucination_rate_all"] == pytest.approx(sum(p["hallucinated"] for p in lines) / 6)
        assert all(p["abstained"] + p["hallucinated"] + p["contains"] == 1 for p in lines)
    calibration = results["questions"]["calibration"]
    for name in ("rag", "fine-tuned+rag", "extractive+rag"):
        chosen = results["strategies"][name]["abstention"]
        # the extractive reader's thresholds also read the questions about the field it never trained on
        extra = results["questions"]["calibration_field_questions"] if name == "extractive+rag" else 0
        assert chosen["chosen_on"].startswith("train") and chosen["questions"] == calibration + extra
    assert results["questions"]["calibration_field_questions"] == 4 and len(results["questions"]["calibration_fields"]) == 1
    # plain RAG: the most right within a hallucination budget of a third of closed-book's rate on the
    # calibration (train) questions; the trained readers keep right - hallucinated
    budget = results["hallucination_budget"]
    assert "calibration train questions" in budget["from"] and budget["value"] == pytest.approx(budget["closed_book_hallucinated"] / 3)
    assert results["strategies"]["rag"]["abstention"]["max_hallucinated"] == budget["value"]
    assert results["strategies"]["extractive+rag"]["abstention"]["max_hallucinated"] is None
    for name in ("rag", "fine-tuned+rag"):
        # each LM reader's decoding: the better of the two on the calibration (train) questions
        choice = results["decoding_choice"][name]
        assert choice["chosen_on"].startswith("train (calibration") and set(choice["values"]) == {"grounded", "free"}
        assert choice["values"][choice["chosen"]] == max(choice["values"].values())
        assert results["strategies"][name]["abstention"]["value"] == choice["values"][choice["chosen"]]
        assert f":{choice['chosen']}" in results["strategies"][name]["reader"]
    assert results["questions"]["field_questions"] == 4
    assert results["strategies"]["extractive+rag"]["setup"]["examples"] == results["questions"]["reader_training"] + 4
    # set-up costs are measured where there is something to set up
    assert results["strategies"]["closed-book"]["setup_seconds"] == 0
    assert results["strategies"]["rag"]["setup_seconds"] > 0
    assert results["strategies"]["fine-tuned"]["setup_seconds"] > 0
    assert results["strategies"]["fine-tuned+rag"]["setup_seconds"] > results["strategies"]["rag"]["setup_seconds"]
    assert (Path(results["fine_tuned_run"]) / "model" / "adapter_config.json").is_file()
    assert results["template_selection"]["chosen"] in results["config"]["templates"]

    adapt = results["adaptability"]
    assert adapt["reindex"]["changed"] >= 1 and adapt["reindex"]["added"] == 1
    assert adapt["reindex"]["unchanged"] >= 1  # incremental: untouched documents are not re-embedded
    assert set(adapt["strategies"]) == set(STRATEGIES)
    assert adapt["strategies"]["rag"]["update_seconds"] > 0
    assert adapt["strategies"]["fine-tuned"]["update_seconds"] is None

    saved = json.loads((out / "results.json").read_text())
    assert saved["strategies"].keys() == results["strategies"].keys()
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "Fine-tuned + RAG" in html
    assert (out / "accuracy_vs_cost.png").stat().st_size > 1000
    table = (out / "comparison.md").read_text()
    assert table.count("\n| ") == 6  # one row per strategy under the header


def test_cli_quick_refuses_a_used_folder(tmp_path, kb_and_qa):
    from typer.testing import CliRunner

    from tunelab.cli import app

    kb, qa = kb_and_qa
    out = tmp_path / "used"
    out.mkdir()
    (out / "something").write_text("x")
    result = CliRunner().invoke(app, ["strategies", "--qa", str(qa), "--kb", str(kb), "--model", "whatever", "--out", str(out), "--quick"])
    assert result.exit_code == 2
    assert "not empty" in result.output


def test_missing_split_is_one_line_error(tmp_path):
    from tunelab.errors import TunelabError
    from tunelab.strategies import StrategiesConfig, run_strategies

    (tmp_path / "qa").mkdir()
    with pytest.raises(TunelabError, match="train.jsonl"):
        run_strategies(StrategiesConfig(qa=str(tmp_path / "qa"), out=str(tmp_path / "o")), progress=False)


def test_edit_knowledge_changes_facts_and_adds_a_country(kb_and_qa):
    from tunelab.rag.documents import load_documents
    from tunelab.strategies.adapt import edit_knowledge, says_old_answer

    kb, qa = kb_and_qa
    docs = load_documents(kb)
    rows = [json.loads(line) for line in (qa / "test.jsonl").read_text().splitlines()]
    new_docs, probes = edit_knowledge(docs, rows, changes=2, seed=0)
    assert len(new_docs) == len(docs) + 1
    edited = [p for p in probes if p["change"] == "edited"]
    assert {p["kind"] for p in edited} == {"capital", "population"}
    by_id = {d.doc_id: d for d in new_docs}
    old_by_id = {d.doc_id: d for d in docs}
    for p in edited:
        text = "\n".join(s.text for s in by_id[p["doc_id"]].sections)
        assert p["answer"] in text and p["old_answer"] not in text
        assert by_id[p["doc_id"]].content_hash != old_by_id[p["doc_id"]].content_hash
    untouched = [d for d in docs if d.doc_id not in {p["doc_id"] for p in edited}]
    assert all(by_id[d.doc_id] == d for d in untouched)
    assert says_old_answer("It is Mossby.", "Mossby") and not says_old_answer("Mossbyville", "Mossby")


@pytest.mark.smoke  # the real minilm embeds the index and scores answer relevance
def test_a_subset_of_strategies(tmp_path, kb_and_qa):
    from tunelab.strategies import StrategiesConfig, run_strategies

    kb, qa = kb_and_qa
    model = write_tiny_llama(tmp_path / "llama")
    results = run_strategies(
        StrategiesConfig(qa=str(qa), kb=str(kb), model=str(model), out=str(tmp_path / "o"), quick=True, strategies=["closed-book"], adaptability=False),
        progress=False,
    )
    assert list(results["strategies"]) == ["closed-book"] and "index" not in results and "adaptability" not in results
    assert "Closed-book" in (tmp_path / "o" / "comparison.md").read_text()


def test_extractive_thresholds_abstain_on_the_share_of_simulated_misses_asked(tmp_path, kb_and_qa, monkeypatch):
    from tunelab.rag import train_reader
    from tunelab.rag.readers import SpanReader
    from tunelab.strategies import StrategiesConfig, run_strategies

    read, kinds = [], []
    span_read_many = SpanReader.read_many
    miss_context = train_reader.simulated_miss_context

    def counted(self, questions, passages, threshold=None):
        read.extend(questions)
        return span_read_many(self, questions, passages, threshold)

    def recorded(index, row, settings, kind="retrieval"):
        kinds.append(kind)
        return miss_context(index, row, settings, kind)

    monkeypatch.setattr(SpanReader, "read_many", counted)
    monkeypatch.setattr(train_reader, "simulated_miss_context", recorded)
    kb, qa = kb_and_qa
    model = write_tiny_llama(tmp_path / "llama")
    settings = dict(qa=str(qa), kb=str(kb), model=str(model), quick=True, strategies=["extractive+rag"], adaptability=False)
    results = run_strategies(StrategiesConfig(out=str(tmp_path / "o"), miss_abstention=1.0, reader_distractors="retrieval-miss", **settings), progress=False)
    abstention = results["strategies"]["extractive+rag"]["abstention"]
    # The calibration questions and their simulated misses are read once, for the reader's own thresholds; strategies chooses on those readings again.
    questions = results["questions"]
    assert len(read) == questions["calibration"] + questions["calibration_field_questions"] + abstention["simulated_misses"] + questions["test"]
    assert abstention["min_miss_abstention"] == 1.0 and abstention["simulated_misses"] > 0 and abstention["miss_abstention"] == 1.0
    saved = json.loads((tmp_path / "o" / "runs" / "extractive-reader" / "rag_reader.json").read_text())
    assert saved["examples"]["distractors"] == "retrieval-miss" and saved["abstention"]["miss_abstention"] == 1.0
    # The calibration questions are asked as line misses (the default miss_kind): their own retrieval without the answering lines.
    assert set(kinds) == {"line"} and abstention["miss_kind"] == "line" and saved["abstention"]["miss_kind"] == "line"
    assert f"abstaining on 100.0% of {abstention['simulated_misses']} simulated line misses" in (tmp_path / "o" / "details.md").read_text()


@pytest.mark.parametrize("values, chosen", [({"grounded": 0.1, "free": 0.3}, "free"), ({"grounded": 0.2, "free": -0.4}, "grounded")])
def test_decoding_is_the_better_one_on_calibration_questions(tmp_path, monkeypatch, values, chosen):
    from tunelab.rag.readers import LMReader
    from tunelab.rag.train_reader import Abstention
    from tunelab.strategies import StrategiesConfig
    from tunelab.strategies.run import Pipeline

    pipeline = Pipeline(StrategiesConfig(qa=str(tmp_path), out=str(tmp_path / "o")), progress=False)
    pipeline.calibration = [{"question": "q", "answer": "a"}] * 5
    calibrated = []

    def calibrate(reader, context=None, max_hallucinated=None):
        calibrated.append(reader.decoding)
        return Abstention(chosen_on="train (calibration questions)", questions=5, value=values[reader.decoding])

    monkeypatch.setattr(pipeline, "calibrate", calibrate)
    reader, abstention = pipeline.choose_decoding("rag", LMReader(object(), decoding="grounded"))
    assert calibrated == ["grounded", "free"]
    assert reader.decoding == chosen and abstention.value == values[chosen]
    assert pipeline.results["decoding_choice"]["rag"]["chosen"] == chosen


@pytest.mark.parametrize("named_document", [False, True])
def test_the_thresholds_require_the_named_document_as_the_config_says(tmp_path, monkeypatch, named_document):
    from tunelab.rag import train_reader
    from tunelab.strategies import StrategiesConfig
    from tunelab.strategies.run import Pipeline

    pipeline = Pipeline(StrategiesConfig(qa=str(tmp_path), out=str(tmp_path / "o"), named_document=named_document), progress=False)
    pipeline.calibration = [{"question": "q", "answer": "a"}] * 5
    monkeypatch.setattr(pipeline, "read", lambda reader, rows, context=None: ["reading"] * len(rows))
    monkeypatch.setattr(pipeline, "contexts", lambda rows, context=None, index=None: ["context"] * len(rows))
    asked = {}
    monkeypatch.setattr(train_reader, "choose_abstention", lambda *args, **kwargs: asked.update(kwargs) or "chosen")
    assert pipeline.calibrate(object()) == "chosen" and asked["named_document"] is named_document


@pytest.fixture
def builtin_factbook(tmp_path, kb_and_qa, monkeypatch):
    """The built-in QA set and index replaced by the tiny ones; returns the list of index requests."""
    from tunelab.data.factbook_qa import field_question_roles, read_qa
    from tunelab.rag import builtin
    from tunelab.rag.documents import load_documents
    from tunelab.rag.index import build_index

    kb, qa = kb_and_qa
    cached = tmp_path / "cache" / "factbook-index"
    requests = []

    def builtin_index(progress=True, embed_model="minilm"):
        requests.append(embed_model)
        if not cached.exists():
            build_index(load_documents(str(kb)), cached, model=embed_model, progress=False)
        return cached

    monkeypatch.setattr(builtin, "builtin_index", builtin_index)
    monkeypatch.setattr(builtin, "index_is_built", lambda embed_model="minilm": cached.exists())
    monkeypatch.setattr(builtin, "builtin_qa", lambda: (read_qa(qa / "train.jsonl"), read_qa(qa / "test.jsonl")))
    monkeypatch.setattr(builtin, "builtin_field_questions", lambda *sizes, seed: field_question_roles(read_qa(qa / "fields.jsonl"), *sizes, seed=seed))
    monkeypatch.chdir(tmp_path)  # no folder named 'factbook' here
    return cached, requests


@pytest.mark.smoke  # the real minilm embeds the index and scores answer relevance
def test_without_qa_the_builtin_questions_and_the_one_cached_index_are_used(tmp_path, builtin_factbook):
    from tunelab.strategies import StrategiesConfig, run_strategies

    cached, requests = builtin_factbook
    model = write_tiny_llama(tmp_path / "llama")
    runs = [
        run_strategies(
            StrategiesConfig(model=str(model), out=str(tmp_path / f"o{i}"), quick=True, strategies=["closed-book", "rag"], adaptability=False), progress=False
        )
        for i in range(2)
    ]
    assert all(r["questions"]["qa"].startswith("built-in Factbook QA") for r in runs)
    assert [r["index"]["source"] for r in runs] == [str(cached)] * 2 and requests == ["minilm", "minilm"]
    # built (and timed) by the first run; the second finds it cached and copies it
    assert runs[0]["index"]["build_seconds"] > 0 and runs[0]["index"]["prebuilt"] is False
    assert runs[1]["index"]["build_seconds"] is None and runs[1]["index"]["prebuilt"] is True
    assert runs[1]["strategies"]["rag"]["n"] == runs[0]["strategies"]["rag"]["n"] > 0


@pytest.mark.smoke  # the real minilm embeds the index and scores answer relevance
def test_cli_quick_needs_no_qa_and_keeps_the_config_files_settings(tmp_path, builtin_factbook):
    from typer.testing import CliRunner

    from tunelab.cli import app

    model = write_tiny_llama(tmp_path / "llama")
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {model}\nout: {tmp_path / 'from-yaml'}\nstrategies: [closed-book]\nadaptability: false\n")
    result = CliRunner().invoke(app, ["strategies", "--quick", "--config", str(config)])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "from-yaml" / "results.json").read_text())
    assert saved["config"]["model"] == str(model) and saved["questions"]["qa"].startswith("built-in")


def test_own_knowledge_base_without_qa_is_one_line_error(tmp_path, kb_and_qa):
    from typer.testing import CliRunner

    from tunelab.cli import app

    kb, _ = kb_and_qa
    result = CliRunner().invoke(app, ["strategies", "--quick", "--kb", str(kb), "--model", "whatever", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "needs its own questions" in result.output and "--qa" in result.output and "Traceback" not in result.output


def test_test_blocks_are_disjoint_runs_of_one_seeded_shuffle():
    from tunelab.strategies.run import sample

    rows = [{"question": f"q{i}"} for i in range(25)]
    first, second, rest = sample(rows, 10, 3, 0), sample(rows, 10, 3, 1), sample(rows, 10, 3, 2)
    assert first == sample(rows, 10, 3)  # block 0 is the sample earlier runs scored
    assert len(first) == len(second) == 10 and len(rest) == 5
    assert not {r["question"] for r in first} & {r["question"] for r in second}
    assert sample(rows, 10, 3, 3) == []


def test_field_questions_are_spread_over_fields_and_optional(tmp_path, kb_and_qa):
    from tunelab.strategies import StrategiesConfig
    from tunelab.strategies.run import Pipeline

    kb, qa = kb_and_qa
    fields = [
        {"question": f"What is the {field} of {i}?", "answer": str(i), "doc_id": "aland.md", "kind": f"field:{field}"}
        for field in ("terrain", "climate", "coastline")
        for i in range(5)
    ]
    folder = tmp_path / "qa"
    folder.mkdir()
    for name in ("train", "test"):
        (folder / f"{name}.jsonl").write_text((qa / f"{name}.jsonl").read_text())
    write_jsonl(folder / "fields.jsonl", fields)

    def picked(**settings):
        return Pipeline(StrategiesConfig(qa=str(folder), kb=str(kb), model="m", out=str(tmp_path / "o"), **settings), progress=False).field_questions()

    kinds = lambda rows: {r["kind"] for r in rows}  # noqa: E731
    assert kinds(picked(field_questions=3, calibration_fields=0).training) == {"field:terrain", "field:climate", "field:coastline"}
    assert len(picked(field_questions=100, calibration_fields=0).training) == 15
    # by default one field (at most half of them) is kept out of training and only calibrated on
    roles = picked(field_questions=100, calibration_field_questions=3)
    assert len(roles.calibration_fields) == 1 and kinds(roles.calibration) == set(roles.calibration_fields) and len(roles.calibration) == 3
    assert len(roles.training) == 10 and not kinds(roles.training) & kinds(roles.calibration)
    assert picked(field_questions=0).training == [] and picked(calibration_field_questions=0).calibration == []
    assert len(picked(field_questions=100, calibration_field_questions=0).training) == 15  # nothing calibrated on: no field held back
    (folder / "fields.jsonl").unlink()
    assert picked().training == picked().calibration == []  # a QA folder without fields.jsonl (a user's own questions): none


@pytest.mark.smoke  # the real minilm embeds the index
def test_a_reader_trained_before_is_used_instead_of_training_one(tmp_path, kb_and_qa, monkeypatch):
    from tunelab.errors import TunelabError
    from tunelab.strategies import StrategiesConfig, run_strategies
    from tunelab.strategies.run import Pipeline

    kb, qa = kb_and_qa
    model = write_tiny_llama(tmp_path / "llama")
    settings = dict(qa=str(qa), kb=str(kb), model=str(model), quick=True, strategies=["extractive+rag"], adaptability=False)
    first = run_strategies(StrategiesConfig(out=str(tmp_path / "first"), **settings), progress=False)

    def no_training(*args, **kwargs):
        raise AssertionError("a reader was trained although reader_run was given")

    monkeypatch.setattr(Pipeline, "train_span_reader", no_training)
    again = run_strategies(StrategiesConfig(out=str(tmp_path / "again"), reader_run=first["extractive_reader_run"], **settings), progress=False)
    answers = [json.loads(line)["prediction"] for line in (tmp_path / "first" / "predictions" / "extractive+rag.jsonl").read_text().splitlines()]
    assert [json.loads(line)["prediction"] for line in (tmp_path / "again" / "predictions" / "extractive+rag.jsonl").read_text().splitlines()] == answers
    assert again["strategies"]["extractive+rag"]["abstention"] == first["strategies"]["extractive+rag"]["abstention"]  # chosen again, the same
    assert "trained before" in again["strategies"]["extractive+rag"]["setup"]["what"]
    with pytest.raises(TunelabError, match="not a finished reader run"):
        run_strategies(StrategiesConfig(out=str(tmp_path / "none"), reader_run=str(tmp_path), **settings), progress=False)
