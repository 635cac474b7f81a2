"""Prompt templates: loader validation, SQuAD-style scoring, abstention detection, template eval."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests._lm_fixtures import write_jsonl, write_tiny_llama
from tunelab.answers import (
    answer_in_text,
    bootstrap_ci,
    contains_answer,
    exact_match,
    is_abstention,
    normalize,
    score,
    strip_citations,
    summarise,
    token_f1,
    verdict,
)
from tunelab.errors import TunelabError
from tunelab.prompts import load_template, parse_template, shipped_names


# scoring ---------------------------------------------------------------------------------------
def test_normalize_is_squad_style():
    assert normalize("The  Republic of Chad!") == "republic of chad"
    assert normalize("An apple, a pear") == "apple pear"
    assert normalize("1,246,700 sq km") == "1246700 sq km"
    assert normalize("N'Djamena") == normalize("N’Djamena") == "ndjamena"


def test_exact_match_uses_aliases_and_normalisation():
    assert exact_match("the Euro.", "euro")
    assert exact_match("EUR", "euro", ["EUR"])
    assert not exact_match("The capital is Paris", "Paris")


def test_contains_answer_on_word_boundaries():
    assert contains_answer("The capital is Paris.", "Paris")
    assert contains_answer("About 1246700 people", "1,246,700 sq km", ["1246700"])
    assert not contains_answer("Parisian", "Paris")
    assert not contains_answer("12345", "1234")


def test_token_f1_matches_squad_arithmetic():
    # prediction "capital paris" vs gold "paris": precision 1/2, recall 1 -> F1 2/3
    assert token_f1("capital Paris", "Paris") == pytest.approx(2 / 3)
    assert token_f1("Paris", "Paris") == 1.0
    assert token_f1("Berlin", "Paris") == 0.0
    assert token_f1("new york city", "nyc", ["New York"]) == pytest.approx(0.8)


def test_sentence_answers_with_citations_are_right():
    # The expectations of rag.evaluate's former scorer, which this one replaced.
    assert token_f1("the Paris city", "Paris") == pytest.approx(2 * 0.5 * 1 / 1.5)
    cited = score("The capital of France is Paris [1].", "Paris")
    assert cited["contains"] == 1 and verdict(cited) == "right"
    assert cited["f1"] == pytest.approx(2 * (1 / 5) / (1 + 1 / 5))  # "capital of france is paris" vs "paris"
    assert score("68,512,806 people", "68512806")["contains"] == 1
    assert score("About 1,200 [2, 3]", "nothing", ["1200"])["contains"] == 1  # aliases count
    assert verdict(score("Lyon [1]", "Paris")) == "hallucinated"
    assert verdict(score("I don't know [1].", "Paris")) == "abstained"


def test_strip_citations():
    assert strip_citations("Paris [1].") == "Paris."
    assert strip_citations("Cats eat fish [1, 2] and mice [3][4]") == "Cats eat fish and mice"
    assert strip_citations("[1]") == ""
    assert strip_citations("In [1990] it was 12") == "In [1990] it was 12"  # a year is no passage number
    # A bare citation is no answer: it is scored as an abstention, and its digits never match a gold.
    assert score("[1]", "1")["abstained"] == 1 and score("[1]", "1")["contains"] == 0


def test_answer_in_text_on_word_boundaries():
    passages = "Cats eat fish and mice; kittens eat milk.\nThe Nile is a long river."
    assert answer_in_text(passages, "milk")
    assert answer_in_text(passages, "Dogs", ["the mice"])
    assert not answer_in_text(passages, "fishes") and not answer_in_text(passages, "")


@pytest.mark.parametrize(
    "text",
    [
        "I don't know.",
        "I do not know the answer",
        "I'm not sure.",
        "Im not sure",
        "",
        "The context does not contain that.",
        "I don’t know",
        "I cannot answer this question.",
        "The answer is not contained in the sources.",
        "I don't know: the indexed documents do not seem to cover this question.",
    ],
)
def test_abstentions_detected(text):
    assert is_abstention(text)


@pytest.mark.parametrize("text", ["Paris", "The knowledge economy", "It is known as Kinshasa", "Sure, it is 42"])
def test_answers_are_not_abstentions(text):
    assert not is_abstention(text)


def test_hallucination_rates_among_answered_and_all():
    scores = [score("Paris", "Paris"), score("Lyon", "Paris"), score("I don't know", "Paris"), score("Rome", "Paris")]
    assert [s["hallucinated"] for s in scores] == [0, 1, 0, 1]
    assert scores[2]["f1"] == 0 and scores[2]["abstained"] == 1
    summary = summarise(scores)
    assert summary["abstention_rate"] == 0.25
    assert summary["hallucination_rate_answered"] == pytest.approx(2 / 3)
    assert summary["hallucination_rate_all"] == 0.5
    assert summary["penalised_score"] == pytest.approx((1 - 2) / 4)
    low, high = summary["contains_ci95"]
    assert 0 <= low <= summary["contains"] <= high <= 1


@given(st.lists(st.sampled_from([0.0, 1.0]), min_size=1, max_size=60))
def test_bootstrap_interval_brackets_the_mean(values):
    low, high = bootstrap_ci(values, resamples=200)
    mean = sum(values) / len(values)
    assert min(values) <= low <= mean + 1e-9 and mean - 1e-9 <= high <= max(values)


# templates -------------------------------------------------------------------------------------
def test_shipped_templates_load_and_render():
    assert set(shipped_names()) >= {"plain", "concise", "abstain", "few-shot", "grounded"}
    for name in shipped_names():
        t = load_template(name)
        assert t.name == name and t.version
        text = t.render("What is the capital of Chad?", "[1] Chad\nCapital - name: N'Djamena" if t.needs_context else None)
        assert "What is the capital of Chad?" in text
    assert load_template("plain").render("  Why?  ") == "Why?"
    assert load_template("grounded").needs_context and not load_template("abstain").needs_context


def test_context_template_without_context_is_an_error():
    with pytest.raises(TunelabError, match="needs a context"):
        load_template("grounded").render("Q?")


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: x\nversion: 1\n", "lacks template"),
        ("name: x\nversion: 1\ntemplate: 'Q: {{ question }'\n", "Jinja2 syntax error"),
        ("name: x\nversion: 1\ntemplate: 'no question here'\n", "never uses"),
        ("name: x\nversion: 1\ntemplate: '{{ question }} {{ hint }}'\n", "unknown variable"),
        ("name: x\nversion: 1\ntemplate: '{{ question }}'\ncolour: red\n", "unknown keys"),
        ("- just\n- a list\n", "mapping"),
        ("name: [unclosed\n", "not valid YAML"),
    ],
)
def test_loader_rejects_bad_templates(text, message):
    with pytest.raises(TunelabError, match=message):
        parse_template(text, "t.yaml")


def test_template_file_and_unknown_names(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nversion: 3\ntemplate: |-\n  Context: {{ context }}\n  Q: {{ question }}\n")
    t = load_template(path)
    assert t.id == "mine@v3" and t.needs_context  # using {{ context }} implies requiring it
    with pytest.raises(TunelabError, match="did you mean 'abstain'"):
        load_template("abstian")
    with pytest.raises(TunelabError, match="not found"):
        load_template(tmp_path / "missing.yaml")


# evaluation ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("lm"))


def test_prompts_eval_cli_json(tmp_path, tiny_lm):
    from typer.testing import CliRunner

    from tunelab.cli import app

    qa = write_jsonl(
        tmp_path / "qa.jsonl",
        [
            {"question": f"What colour is {t}?", "answer": c, "aliases": []}
            for t, c in [("sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"), ("sun", "yellow")]
        ],
    )
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(
        app,
        [
            "prompts",
            "eval",
            "plain",
            "abstain",
            "--qa",
            str(qa),
            "--model",
            str(tiny_lm),
            "--max-new-tokens",
            "4",
            "--batch-size",
            "2",
            "--json",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [t["template"] for t in data["templates"]] == ["plain@v1", "abstain@v1"]
    for t in data["templates"]:
        assert t["n"] == 5 and t["latency"]["p95_ms"] >= t["latency"]["p50_ms"] > 0
        assert t["hallucination_rate_all"] <= 1 - t["abstention_rate"] + 1e-9
    full = json.loads(out.read_text())
    assert len(full["templates"][0]["predictions"]) == 5


@pytest.mark.smoke  # embeds with the real minilm
def test_prompts_eval_index_factbook_is_the_one_builtin_index(tmp_path, tiny_lm, monkeypatch):
    from typer.testing import CliRunner

    from tunelab.cli import app
    from tunelab.rag import builtin
    from tunelab.rag.documents import load_documents
    from tunelab.rag.index import build_index

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "sky.md").write_text("# Sky\n\nThe sky is blue on a clear day.\n", encoding="utf-8")
    cached = build_index(load_documents(str(docs)), tmp_path / "cached", model="minilm", progress=False) and tmp_path / "cached"
    requests = []
    monkeypatch.setattr(builtin, "builtin_index", lambda progress=True, embed_model="minilm", backend="torch": requests.append(embed_model) or cached)
    monkeypatch.chdir(tmp_path)  # no folder named 'factbook' here
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": "What colour is the sky?", "answer": "blue", "aliases": []}])
    result = CliRunner().invoke(
        app, ["prompts", "eval", "grounded", "--qa", str(qa), "--model", str(tiny_lm), "--index", "factbook", "--max-new-tokens", "4", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert requests == ["minilm"] and json.loads(result.stdout)["templates"][0]["n"] == 1


def test_batched_answers_equal_one_by_one(tiny_lm):
    from tunelab.lm.generate import Generator
    from tunelab.prompts.generate import answer_batch, first_line

    gen = Generator(tiny_lm)
    prompts = ["What colour is sky?", "What colour is the grass on a summer day?", "Hi"]
    batched = answer_batch(gen, prompts, max_new_tokens=6, batch_size=3)
    for prompt, answered in zip(prompts, batched):
        assert answered.text == first_line(gen(prompt, max_new_tokens=6))


def test_prompts_eval_errors(tmp_path, tiny_lm):
    from tunelab.prompts.evaluate import evaluate_templates

    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Q?", "answer": "A", "doc_id": "d"}])
    with pytest.raises(TunelabError, match="need retrieved context"):
        evaluate_templates(["grounded"], qa, str(tiny_lm))
    with pytest.raises(TunelabError, match="not found"):
        evaluate_templates(["plain"], tmp_path / "nope.jsonl", str(tiny_lm))


def test_qa_rows_need_question_and_answer(tmp_path):
    from tunelab.prompts.evaluate import read_questions

    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "Q?", "answer": "A"}\n{"question": "Q2?"}\n')
    with pytest.raises(TunelabError, match=":2 needs a question and an answer"):
        read_questions(path)


def test_echoing_the_question_is_not_an_answer():
    question = "What is the capital of Djibouti?"
    assert not contains_answer("The capital of Djibouti is Tadjoura.", "Djibouti", question=question)
    assert contains_answer("The capital of Djibouti is Djibouti.", "Djibouti", question=question)
    assert contains_answer("Djibouti", "Djibouti", question=question)
    assert score("The capital of Djibouti is Obock", "Djibouti", [], question)["hallucinated"] == 1


def test_first_line_keeps_the_answer_after_a_lead_in():
    from tunelab.prompts.generate import first_line

    assert first_line("Paris\nParis is also large.") == "Paris"
    assert first_line("\n The answer is:\n1917\nmore") == "The answer is: 1917"
    assert first_line("   ") == ""
