"""Focused context, reader training examples, threshold choice and the readers' passage bookkeeping (no model)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests._rag_fixtures import ConceptEmbedder


def _hit(text: str, title: str = "Aland", section: str = "Government", rank: int = 1, chunk_id: str | None = None):
    from tunelab.rag.chunk import Chunk
    from tunelab.rag.index import Hit

    return Hit(rank, 1.0, Chunk(chunk_id or f"{title}#{rank}", f"{title}.md", title, section, text, rank))


def test_split_lines_keeps_paragraphs_and_cuts_long_ones_at_sentences():
    from tunelab.rag.focus import MAX_LINE_CHARS, split_lines

    long = " ".join(f"Sentence number {i} is here." for i in range(40))
    lines = split_lines(f"Capital - name: Mossby\n\nPopulation: 12,345\n{long}")
    assert lines[:2] == ["Capital - name: Mossby", "Population: 12,345"]
    assert len(lines) > 3 and all(len(line) <= MAX_LINE_CHARS for line in lines[2:])
    assert " ".join(lines[2:]) == long  # nothing lost when cutting


def test_focus_picks_the_lines_closest_to_the_question_and_caches_chunk_vectors():
    from tunelab.rag.focus import focus

    embedder = ConceptEmbedder()
    hits = [
        _hit("Rivers: the nile is long\nDiet: cats eat fish and mice\nMarket: stock prices rose", rank=1),
        _hit("Cars: engine and brakes\nMilk: kittens drink milk", rank=2),
    ]
    cache: dict = {}
    best = focus("what food do felines eat", hits, embedder, lines=2, cache=cache)
    assert [p.text for p in best] == ["Diet: cats eat fish and mice", "Milk: kittens drink milk"]
    assert best[0].hit is hits[0] and best[1].hit is hits[1]
    assert best[0].similarity >= best[1].similarity
    assert best[0].reader_text() == "Aland — Government: Diet: cats eat fish and mice"
    calls = len(embedder.calls)
    again = focus("what food do felines eat", hits, embedder, lines=2, cache=cache)
    assert [p.text for p in again] == [p.text for p in best]
    assert len(embedder.calls) == calls + 1  # only the question was embedded again, not the chunks' lines


def test_locate_finds_whole_words_case_insensitively_and_falls_back_to_aliases():
    from tunelab.rag.reader_data import locate

    context = "Aland — Government: Capital - name: Mossbyville; Mossby\nPopulation: 12,345"
    assert locate(context, "mossby") == (context.index("Mossby\n"), "Mossby")
    assert locate(context, "12345", ["12,345"]) == (context.index("12,345"), "12,345")
    assert locate(context, "Kostal") is None


def test_reader_examples_mark_spans_misses_and_distractors():
    from tunelab.rag.focus import Passage
    from tunelab.rag.reader_data import Retrieved, reader_examples

    rows = [{"question": f"What is the capital of C{i}?", "answer": f"City{i}", "aliases": [], "doc_id": f"c{i}", "kind": "capital"} for i in range(40)]
    contexts = []
    for i in range(40):
        line = f"Capital - name: City{i}" if i % 10 else "Climate: mild"  # every tenth: a retrieval miss
        contexts.append(Retrieved([Passage(line, _hit(line, title=f"C{i}"))], [], 0.9, 0.0))
    examples = reader_examples(rows, contexts, seed=1, distractor_share=0.3)
    distractors = [e for e in examples if e["distractor"]]
    assert 3 <= len(distractors) <= 25
    for row, e in zip(rows, examples):
        if e["answer"]:
            assert e["context"][e["answer_start"] : e["answer_start"] + len(e["answer"])] == e["answer"] == row["answer"]
            assert not e["distractor"]
        else:
            assert e["answer_start"] == -1 and row["answer"] not in e["context"]
    assert any(not e["answer"] and not e["distractor"] for e in examples)  # misses are taught to abstain too


def test_distractor_rows_are_shown_their_own_retrieval_miss_when_given_one():
    from tunelab.rag.focus import Passage
    from tunelab.rag.reader_data import Retrieved, distractor_rows, reader_examples

    rows = [{"question": f"What is the capital of C{i}?", "answer": f"City{i}", "aliases": [], "doc_id": f"c{i}"} for i in range(30)]
    contexts = [Retrieved([Passage(f"Capital - name: City{i}", _hit(f"Capital - name: City{i}", title=f"C{i}"))], [], 0.9, 0.0) for i in range(30)]
    chosen = distractor_rows(rows, seed=2, share=0.4)
    assert chosen and all(rows[j]["doc_id"] != rows[i]["doc_id"] for i, j in chosen.items())
    first = min(chosen)
    neighbour = f"Capital - name: Town{first}"  # what retrieval shows when it misses C{first}: another country's capital
    misses = {first: Retrieved([Passage(neighbour, _hit(neighbour, title=f"D{first}"))], [], 0.7, 0.0)}
    examples = reader_examples(rows, contexts, seed=2, distractor_share=0.4, miss_contexts=misses)
    assert neighbour in examples[first]["context"] and f"City{first}" not in examples[first]["context"]
    assert examples[first]["distractor"] and examples[first]["answer"] == ""
    without = reader_examples(rows, contexts, seed=2, distractor_share=0.4)
    for i, j in chosen.items():  # the others: another question's passages, as without misses
        if i != first:
            assert examples[i]["context"] == without[i]["context"] == contexts[j].passages[0].reader_text()


def test_choose_thresholds_maximises_right_minus_hallucinated():
    from tunelab.answers import choose_thresholds

    similarity = [0.9, 0.8, 0.7, 0.3, 0.2, 0.85]
    confidence = [5.0, 4.0, 0.5, 6.0, 6.0, 0.2]
    outcome = [1, 1, -1, -1, -1, 1]  # wrong answers come with low similarity or low confidence
    (min_similarity, min_confidence), value = choose_thresholds([similarity, confidence], outcome)
    answered = [s >= min_similarity and c >= min_confidence for s, c in zip(similarity, confidence)]
    assert answered == [True, True, False, False, False, True]
    assert value == pytest.approx(3 / 6)
    # nothing to gain by abstaining: the lowest thresholds (answer everything)
    (s_all, c_all), _ = choose_thresholds([similarity, confidence], [1] * 6)
    assert s_all < min(similarity) and c_all < min(confidence)
    # abstentions (0) neither help nor hurt; -inf confidence is never answered
    (_, c_inf), value = choose_thresholds([[0.5, 0.5], [-math.inf, 1.0]], [0, 1])
    assert value == pytest.approx(0.5) and c_inf <= 1.0


def test_choose_thresholds_within_a_hallucination_budget():
    from tunelab.answers import choose_thresholds

    # a reader wrong about as often as right, more often right when confident
    confidence = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]
    outcome = [1, 1, -1, -1, 1, -1, 1, -1, -1, 1]
    (_, net), net_value = choose_thresholds([[1.0] * 10, confidence], outcome)
    assert net == pytest.approx(0.75) and net_value == pytest.approx(2 / 10)  # right - hallucinated: answer the top two only
    (_, loose), right = choose_thresholds([[1.0] * 10, confidence], outcome, max_hallucinated=0.3)
    answered = [c >= loose for c in confidence]
    # the most right with at most 3 of 10 hallucinated: the top seven (4 right, 3 wrong)
    assert answered == [True] * 7 + [False] * 3 and right == pytest.approx(4 / 10)
    # the eighth answer adds a hallucination and no right one: not taken even when the budget allows it
    (_, same), _ = choose_thresholds([[1.0] * 10, confidence], outcome, max_hallucinated=0.4)
    assert same == pytest.approx(loose)
    # a budget no answer fits: answer nothing
    (_, none), right = choose_thresholds([[1.0] * 10, [0.5] * 10], [-1] * 10, max_hallucinated=0.05)
    assert none > 0.5 and right == 0.0


def test_choose_thresholds_abstains_on_enough_of_the_unanswerable_questions():
    from tunelab.answers import choose_thresholds

    confidence = [0.9, 0.8, 0.7, 0.6, 0.5]
    outcome = [1, 1, 1, 1, -1]
    missed = [0.95, 0.75, 0.65, 0.55, 0.1]  # the reader's confidence on questions shown no answer
    (free,), _ = choose_thresholds([confidence], outcome)
    assert free == pytest.approx(0.55)  # answers the four right ones and 3 of 5 misses
    (strict,), value = choose_thresholds([confidence], outcome, abstain_on=[missed], min_abstention=0.6)
    # abstaining on 3 of 5 misses costs the right answer at 0.6: the lowest threshold that does it
    assert strict == pytest.approx(0.675) and value == pytest.approx(3 / 5)
    assert sum(m < strict for m in missed) / 5 >= 0.6
    (everything,), value = choose_thresholds([confidence], outcome, abstain_on=[missed], min_abstention=1.0)
    assert everything > 0.95 and value == 0.0  # only answering nothing abstains on every miss


def test_choose_thresholds_with_a_miss_constraint_is_the_best_feasible_point():
    import itertools

    from tunelab.answers import choose_thresholds

    rng = np.random.default_rng(0)
    for case in range(40):
        values = rng.integers(0, 5, size=(2, 12)).astype(float)
        missed = rng.integers(0, 5, size=(2, 6)).astype(float)
        outcome = rng.choice([-1, 0, 1], size=12)
        level = [0.5, 0.8, 1.0][case % 3]
        limits, value = choose_thresholds(values, outcome, abstain_on=missed, min_abstention=level)
        candidates = sorted(set(values.ravel()) | set(missed.ravel()) | {-10.0, 10.0})
        best = max(
            outcome[np.all(values >= np.array(point)[:, None], axis=0)].sum()
            for point in itertools.product(candidates, repeat=2)
            if np.mean(~np.all(missed >= np.array(point)[:, None], axis=0)) >= level
        )
        assert value * 12 == pytest.approx(best)
        assert np.mean(~np.all(missed >= np.array(limits)[:, None], axis=0)) >= level


def test_choose_abstention_with_simulated_misses_records_how_often_it_abstains_on_them():
    from tunelab.rag.focus import Passage
    from tunelab.rag.reader_data import Retrieved
    from tunelab.rag.readers import Reading
    from tunelab.rag.train_reader import choose_abstention

    rows, contexts, readings, miss_contexts, miss_readings = [], [], [], [], []
    for i in range(6):
        line = f"Capital - name: City{i}"
        rows.append({"question": f"What is the capital of C{i}?", "answer": f"City{i}", "aliases": []})
        contexts.append(Retrieved([Passage(line, _hit(line, title=f"C{i}"))], [], 0.9, 0.0))
        readings.append(Reading(f"City{i}", 0, False, 1.0 + i))
        other = f"Capital - name: Town{i}"  # another country's capital, read as confidently as most right answers
        miss_contexts.append(Retrieved([Passage(other, _hit(other, title=f"D{i}"))], [], 0.9, 0.0))
        miss_readings.append(Reading(f"Town{i}", 0, False, 2.5 + i))
    free = choose_abstention(rows, contexts, readings, "train")
    assert free.miss_abstention is None and free.min_confidence < 1.0
    # Another document's line: a simulated document miss (miss_kind "retrieval"; the default kind is "line").
    strict = choose_abstention(rows, contexts, readings, "train", misses=(miss_contexts, miss_readings), min_miss_abstention=0.5, miss_kind="retrieval")
    assert strict.simulated_misses == 6 and strict.min_miss_abstention == 0.5 and strict.miss_kind == "retrieval"
    assert strict.miss_abstention == pytest.approx(0.5) and strict.min_confidence == pytest.approx(4.75)  # above 3 of the misses
    assert strict.value == pytest.approx(2 / 6) and "simulated retrieval misses" in strict.criterion  # the two surest right answers


def test_the_fourth_feature_says_whether_the_answer_is_read_from_a_document_the_question_names():
    from tunelab.answers import ABSTENTION
    from tunelab.rag.focus import Passage
    from tunelab.rag.reader_data import Retrieved
    from tunelab.rag.readers import Reading
    from tunelab.rag.train_reader import reading_features

    france = Passage("Internet country code - note: .fr", _hit("Internet country code - note: .fr", title="France"))
    belgium = Passage("Internet country code: .be", _hit("Internet country code: .be", title="Belgium", rank=2))
    shown = [france, belgium]
    contexts = [Retrieved(shown, [], 0.7, 0.0, named) for named in [("Belgium.md",), ("Belgium.md",), (), ("Belgium.md",), ("Belgium.md", "France.md")]]
    readings = [Reading(".fr", 0, False, 1.0), Reading(".be", 1, False, 1.0), Reading(".fr", 0, False, 1.0), Reading(ABSTENTION, None, True, -math.inf)]
    readings.append(Reading(".fr", 0, False, 1.0))
    # from another document | from the named one | the question names none | abstained | one of two named
    assert reading_features(contexts, readings)[3] == [0.0, 1.0, 1.0, -math.inf, 1.0]
    unquoted = [Retrieved(shown, [], 0.7, 0.0, ("Belgium.md",))], [Reading("dot fr", None, False, 1.0)]
    assert reading_features(*unquoted)[3] == [1.0]  # no passage to judge: the quote feature says so


def test_choose_abstention_requires_the_named_document_only_when_asked_and_when_it_pays():
    from tunelab.rag.focus import Passage
    from tunelab.rag.reader_data import Retrieved
    from tunelab.rag.readers import Reading
    from tunelab.rag.train_reader import answered_by, choose_abstention, reading_features

    rows, contexts, readings = [], [], []
    for i in range(12):
        own, other = f"Capital - name: City{i}", f"Capital - name: Town{i}"
        shown = [Passage(own, _hit(own, title=f"C{i}")), Passage(other, _hit(other, title=f"D{i}", rank=2))]
        rows.append({"question": f"What is the capital of C{i}?", "answer": f"City{i}", "aliases": []})
        contexts.append(Retrieved(shown, [], 0.9, 0.0, (f"C{i}.md",)))
        # Right answers and answers from the other document alike in similarity and confidence: only the document tells them apart.
        confidence = 1.0 + (i // 3) % 2
        readings.append(Reading(f"City{i}", 0, False, confidence) if i % 3 else Reading(f"Town{i}", 1, False, confidence))
    kept = choose_abstention(rows, contexts, readings, "train")
    assert not kept.require_named_document and kept.value == pytest.approx(4 / 12)
    named = choose_abstention(rows, contexts, readings, "train", named_document=True)
    assert named.require_named_document and named.value == pytest.approx(8 / 12)
    assert answered_by(named, reading_features(contexts, readings)) == [bool(i % 3) for i in range(12)]
    for i in range(0, 12, 3):  # now every wrong answer is from the named document too: requiring it no longer pays
        contexts[i] = Retrieved(contexts[i].passages, [], 0.9, 0.0, (f"D{i}.md",))
    assert not choose_abstention(rows, contexts, readings, "train", named_document=True).require_named_document


def test_answer_refuses_an_answer_from_another_document_than_the_named_one_when_the_reader_requires_it(monkeypatch):
    import importlib

    answer_module = importlib.import_module("tunelab.rag.answer")  # the package exports a function of the same name
    from tunelab.rag.focus import Passage
    from tunelab.rag.reader_data import Retrieved
    from tunelab.rag.readers import Reading

    france = Passage("Internet country code - note: .fr", _hit("Internet country code - note: .fr", title="France"))
    monkeypatch.setattr(answer_module, "retrieve_context", lambda index, q, settings: Retrieved([france], [france.hit], 0.8, 0.0, ("Belgium.md",)))

    class Reader:
        name, threshold = "fake", 0.0

        def read_many(self, questions, contexts, threshold=None):
            return [Reading(".fr", 0, False, 1.0) for _ in questions]

    question = "What is the internet country code of Belgium?"
    assert answer_module.answer(question, None, Reader(), min_similarity=0.5).text == ".fr"
    refused = answer_module.answer(question, None, Reader(), min_similarity=0.5, require_named_document=True)
    assert refused.abstained and refused.reason == "named document"
    # what `rag ask` prints: why, and the closest chunk retrieval found
    assert refused.format().splitlines() == [
        answer_module.ABSTAIN,
        "Why: the answer the reader found is not from the document the question names.",
        "",
        "Closest passages:",
        "[1] France — Government (France.md, France#1)",
    ]


def _random_readings(seed: int, n: int = 60):
    """Rows, their contexts and unthresholded readings: right or wrong, quoted or not, or abstained; similarities
    and confidences drawn from a few values, so that thresholds drawn from the same values often meet one exactly."""
    from tunelab.answers import ABSTENTION
    from tunelab.rag.focus import Passage
    from tunelab.rag.reader_data import Retrieved
    from tunelab.rag.readers import Reading

    rng = np.random.default_rng(seed)
    rows, contexts, readings = [], [], []
    for i in range(n):
        line = f"Capital - name: City{i}"
        passage = Passage(line, _hit(line, title=f"C{i}"))
        rows.append({"question": f"What is the capital of C{i}?", "answer": f"City{i}", "aliases": []})
        named = [(), (), (f"C{i}.md",), ("Elsewhere.md",)][int(rng.integers(4))]  # names none, its own document, or another
        contexts.append(Retrieved([passage], [passage.hit], float(rng.choice(SIMILARITIES)), 0.0, named))
        if rng.random() < 0.2:
            readings.append(Reading(ABSTENTION, None, True, -math.inf))
        else:
            readings.append(Reading(f"City{i}" if rng.random() < 0.6 else f"Town{i}", 0 if rng.random() < 0.7 else None, False, float(rng.choice(CONFIDENCES))))
    return rows, contexts, readings


SIMILARITIES, CONFIDENCES = (0.2, 0.4, 0.6, 0.8), (-1.0, 0.0, 1.0, 2.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_strategies_rag_answers_and_the_threshold_choice_apply_one_abstention_rule(tmp_path, monkeypatch, seed):
    import importlib

    from tunelab.answers import ABSTENTION
    from tunelab.rag.train_reader import Abstention, answered_by, choose_abstention, reading_features
    from tunelab.strategies import StrategiesConfig
    from tunelab.strategies.run import Pipeline

    answer_module = importlib.import_module("tunelab.rag.answer")  # the package exports a function of the same name
    rows, contexts, readings = _random_readings(seed)
    context_of = {row["question"]: context for row, context in zip(rows, contexts)}
    reading_of = {row["question"]: reading for row, reading in zip(rows, readings)}
    monkeypatch.setattr(answer_module, "retrieve_context", lambda index, question, settings: context_of[question])
    pipeline = Pipeline(StrategiesConfig(qa=str(tmp_path), out=str(tmp_path / "o")), progress=False)
    pipeline.contexts = lambda rows, context=None, index=None: contexts

    class Reader:  # reads as the real readers do: unthresholded readings, decided at the threshold asked for
        name = "fake"

        def __init__(self, threshold):
            self.threshold = threshold

        def read_many(self, questions, passages, threshold=None):
            return [reading_of[q].at_threshold(self.threshold if threshold is None else threshold) for q in questions]

    features = reading_features(contexts, readings)
    rng = np.random.default_rng(seed)
    for _ in range(20):
        abstention = Abstention(
            float(rng.choice([*SIMILARITIES, 0.5])), float(rng.choice([*CONFIDENCES, 0.5, -math.inf])), bool(rng.random() < 0.5), bool(rng.random() < 0.5)
        )
        answered = answered_by(abstention, features)
        predictions = pipeline.decide(rows, readings, abstention)["predictions"]
        assert [p["prediction"] != ABSTENTION for p in predictions] == answered
        assert [p["retrieval_abstained"] for p in predictions] == [c.best_similarity < abstention.min_similarity for c in contexts]
        if not abstention.require_quote:  # rag ask applies a similarity and the reader's own confidence threshold, and the named document
            answers = answer_module.answer_many(
                [r["question"] for r in rows],
                None,
                Reader(abstention.min_confidence),
                min_similarity=abstention.min_similarity,
                require_named_document=abstention.require_named_document,
            )
            assert [not a.abstained for a in answers] == answered
            assert [a.reason == "retrieval" for a in answers] == [c.best_similarity < abstention.min_similarity for c in contexts]
    # The thresholds chosen on these rows score, applied by decide, what the choice said they would.
    chosen = choose_abstention(rows, contexts, readings, "train")
    predictions = pipeline.decide(rows, readings, chosen)["predictions"]
    assert sum(p["contains"] - p["hallucinated"] for p in predictions) / len(rows) == pytest.approx(chosen.value)
    assert [p["prediction"] != ABSTENTION for p in predictions] == answered_by(chosen, features)


def test_span_reader_maps_the_span_back_to_its_passage(monkeypatch):
    from tunelab.models.span_reader import ReadResult, Span
    from tunelab.rag.focus import Passage
    from tunelab.rag.readers import SpanReader

    passages = [Passage("Climate: mild", _hit("Climate: mild", rank=1)), Passage("Capital - name: Mossby", _hit("Capital - name: Mossby", rank=2))]
    joined = "\n".join(p.reader_text() for p in passages)
    start = joined.index("Mossby")

    class FakeExtractive:
        null_threshold = 0.0

        def read_many(self, questions, contexts, batch_size=32):
            assert contexts == [[joined]]  # one text, joined as in training
            span = Span("Mossby", 0, start, start + 6)
            return [ReadResult("Mossby", 0, start, start + 6, 3.0, 1.0, 2.0, False, span)]

    reader = SpanReader.__new__(SpanReader)
    reader.reader, reader.name, reader.threshold = FakeExtractive(), "fake", 0.0
    (reading,) = reader.read_many(["capital?"], [passages])
    assert reading.text == "Mossby" and reading.passage == 1 and reading.confidence == 2.0
    from tunelab.rag.readers import passage_at

    first = len(passages[0].reader_text())
    assert [passage_at(passages, o) for o in (0, first - 1, first + 1, len(joined) - 1, len(joined) + 5)] == [0, 0, 1, 1, None]
    (strict,) = reader.read_many(["capital?"], [passages], threshold=2.5)
    assert strict.abstained and strict.passage is None


def test_answer_cites_the_passage_the_reader_answered_from(monkeypatch):
    import importlib

    answer_module = importlib.import_module("tunelab.rag.answer")  # the package exports a function of the same name
    from tunelab.rag.focus import Passage
    from tunelab.rag.reader_data import Retrieved
    from tunelab.rag.readers import Reading

    passages = [Passage("Climate: mild", _hit("Climate: mild", rank=1)), Passage("Capital - name: Mossby", _hit("Capital - name: Mossby", rank=2))]
    monkeypatch.setattr(
        answer_module, "retrieve_context", lambda index, q, settings: Retrieved(passages, [p.hit for p in passages], 0.2 if "far" in q else 0.8, 0.0)
    )

    class Reader:
        name, threshold = "fake", 0.0

        def read_many(self, questions, contexts, threshold=None):
            return [Reading("Mossby", 1, False, 1.0) for _ in questions]

    near, far = answer_module.answer_many(["capital near?", "capital far?"], None, Reader(), min_similarity=0.5)
    assert near.text == "Mossby" and near.sources == [passages[1].hit] and near.passage is passages[1]
    assert "Capital - name: Mossby" in near.format()
    assert far.abstained and far.reason == "retrieval"
    assert "Why: no indexed passage is close enough to the question (closest similarity 0.20)." in far.format()
    assert "Sources:" not in far.format() and "[2] Aland — Government (Aland.md, Aland#2)" in far.format()
    assert np.isfinite(near.best_similarity)


def test_worked_examples_are_the_nearest_answerable_train_questions_never_the_asked_one():
    from tunelab.rag.examples import WorkedExamples
    from tunelab.rag.focus import Passage
    from tunelab.rag.reader_data import Retrieved

    class Words:  # bag-of-words vectors: questions sharing words are near
        vocabulary = ["capital", "currency", "chad", "peru", "mali"]

        def encode(self, texts):
            v = np.array([[w in t.lower() for w in self.vocabulary] for t in texts], dtype=float)
            return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)

    def context(text):
        return Retrieved([Passage(text, _hit(text))], [], 1.0, 0.0)

    rows = [
        {"question": "What is the capital of Peru?", "answer": "Lima"},
        {"question": "What is the currency of Mali?", "answer": "CFA franc"},
        {"question": "What is the capital of Mali?", "answer": "Bamako"},
    ]
    contexts = [context("Capital - name: Lima"), context("Currency: West African CFA franc"), context("Capital: unknown")]
    pool = WorkedExamples.from_rows(rows, contexts, Words(), shots=1)
    assert [e.answer for e in pool.examples] == ["Lima", "CFA franc"]  # Bamako is not in its passages
    assert [e.answer for e in pool.nearest(["What is the capital of Chad?"])[0]] == ["Lima"]
    assert [e.question for e in pool.nearest(["What is the capital of Peru?"])[0]] != ["What is the capital of Peru?"]


def test_lm_reader_shows_worked_examples_as_answered_turns():
    from tunelab.rag.examples import WorkedExample, WorkedExamples
    from tunelab.rag.focus import Passage
    from tunelab.rag.readers import LMReader

    example = WorkedExample("What is the capital of Peru?", [Passage("Capital - name: Lima", _hit("Capital - name: Lima"))], "Lima")
    reader = LMReader(None, examples=WorkedExamples([], None, shots=1))  # prompts only: no model needed
    prompt = reader.prompt("What is the capital of Chad?", [Passage("Capital - name: N'Djamena", _hit("Capital - name: N'Djamena"))], [example])
    assert [t["role"] for t in prompt] == ["user", "assistant", "user"]
    assert prompt[1]["content"] == "Lima" and "Capital - name: Lima" in prompt[0]["content"] and "N'Djamena" in prompt[2]["content"]


def _quote_rows(unquoted_right: bool):
    """Calibration rows for a reader whose quoted answers are right and whose other answers are
    right or wrong (`unquoted_right`); its confidence says nothing (the same for every answer)."""
    from tunelab.rag.focus import Passage
    from tunelab.rag.reader_data import Retrieved
    from tunelab.rag.readers import Reading

    rows, contexts, readings = [], [], []
    for i in range(8):
        line = f"Capital - name: City{i}"
        rows.append({"question": f"What is the capital of C{i}?", "answer": f"City{i}", "aliases": []})
        contexts.append(Retrieved([Passage(line, _hit(line, title=f"C{i}"))], [], 0.9, 0.0))
        quoted = i % 2 == 0
        # an unquoted right answer is a paraphrase around the name; an unquoted wrong one a name not shown
        text = f"City{i}" if quoted else (f"the city of City{i}" if unquoted_right else f"Town{i}")
        readings.append(Reading(text, 0 if quoted else None, False, -0.5))
    return rows, contexts, readings


@pytest.mark.parametrize("unquoted_right", [False, True])
def test_abstention_requires_a_quote_when_unquoted_answers_are_the_wrong_ones(unquoted_right):
    from tunelab.rag.train_reader import choose_abstention

    rows, contexts, readings = _quote_rows(unquoted_right)
    abstention = choose_abstention(rows, contexts, readings, "train (calibration questions)")
    assert abstention.require_quote is (not unquoted_right)
    assert abstention.value == pytest.approx(4 / 8 if not unquoted_right else 1.0)
    assert abstention.min_similarity < 0.9 and abstention.min_confidence < -0.5  # the quote alone separates them


def test_strategies_decide_abstains_on_unquoted_answers_when_the_thresholds_require_quotes(tmp_path):
    from tunelab.rag.train_reader import Abstention
    from tunelab.strategies import StrategiesConfig
    from tunelab.strategies.run import Pipeline

    rows, contexts, readings = _quote_rows(unquoted_right=False)
    pipeline = Pipeline(StrategiesConfig(qa=str(tmp_path), out=str(tmp_path / "o")), progress=False)
    pipeline.contexts = lambda rows, context=None, index=None: contexts
    for require_quote, hallucinated in [(True, 0), (False, 4)]:
        outcome = pipeline.decide(rows, readings, Abstention(require_quote=require_quote))
        predictions = outcome["predictions"]
        assert sum(p["hallucinated"] for p in predictions) == hallucinated
        assert sum(p["contains"] for p in predictions) == 4
        assert [p["threshold_abstained"] for p in predictions] == [require_quote and i % 2 == 1 for i in range(8)]
