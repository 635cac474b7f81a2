"""Readers: a question and its passages in, an answer that names its passage (or an abstention) out.

Two kinds, one interface (`read_many`):
  SpanReader   an extractive QA model (`tunelab train --task extractive-qa`): by construction it
               answers with a span of a passage, or abstains when no span beats "no answer".
  LMReader     a causal LM with a prompt template; `decoding="grounded"` constrains its answer, token
               by token, to a span copied from the passages or the abstention phrase.
Each has one confidence (the span's margin over "no answer", the answer's mean token log-probability)
and abstains below a threshold that is chosen on train questions (see rag/train_reader.py), never on test.
A plain `prompt -> text` callable is accepted as a free-decoding reader (custom generators, fakes).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from tunelab.answers import ABSTENTION, is_abstention, normalize
from tunelab.rag.examples import WorkedExample, WorkedExamples
from tunelab.rag.focus import Passage

Decoding = Literal["free", "grounded"]


@dataclass(frozen=True)
class Reading:
    text: str  # the answer, or ABSTENTION
    passage: int | None  # index of the passage the answer came from; None when abstaining or unknown
    abstained: bool
    confidence: float  # higher = surer; -inf when there was no candidate answer
    seconds: float = 0.0  # this question's share of the reading time
    prompt_tokens: int = 0

    def at_threshold(self, threshold: float) -> Reading:
        """The same reading decided with a confidence threshold (no model call)."""
        if self.abstained or self.confidence >= threshold:
            return self
        return Reading(ABSTENTION, None, True, self.confidence, self.seconds, self.prompt_tokens)


class Reader(Protocol):
    name: str
    threshold: float  # abstain when confidence < threshold

    def read_many(self, questions: Sequence[str], passages: Sequence[Sequence[Passage]], threshold: float | None = None) -> list[Reading]:
        """One reading per question, abstaining below `threshold` (None: the reader's own); at -inf, the
        unthresholded readings that thresholds are chosen on and applied to (rag/train_reader.below_threshold)."""
        ...


def source_of(answer: str, passages: Sequence[Passage]) -> int | None:
    """The first passage whose text holds the answer (whole words, normalised), or None."""
    needle = f" {normalize(answer)} "
    if not needle.strip():
        return None
    for i, passage in enumerate(passages):
        if needle in f" {normalize(passage.reader_text())} ":
            return i
    return None


class SpanReader:
    """An extractive QA run read over the passages, all windows of a question in one batch."""

    def __init__(self, run, threshold: float | None = None, threads: int | None = None):
        from tunelab.models.span_reader import ExtractiveReader

        self.reader = ExtractiveReader.load(run, threads=threads)
        self.name = f"extractive:{getattr(run, 'name', run)}"
        # The run's own threshold was chosen on its eval split (windows built like its training
        # data); the RAG pipeline passes one chosen on retrieved train questions instead.
        self.threshold = self.reader.null_threshold if threshold is None else float(threshold)

    def read_many(self, questions: Sequence[str], passages: Sequence[Sequence[Passage]], threshold: float | None = None) -> list[Reading]:
        # The passages are read as one text, joined as in the training examples (rag/reader_data.py),
        # so "no answer" is judged over all of them at once, as it was learned.
        from tunelab.rag.reader_data import join_passages

        started = time.perf_counter()
        contexts = [join_passages(ps) for ps in passages]
        results = self.reader.read_many(list(questions), [[c] for c in contexts], batch_size=32)
        share = (time.perf_counter() - started) / max(len(questions), 1)
        limit = self.threshold if threshold is None else threshold
        readings = []
        for result, ps in zip(results, passages):
            span = result.candidate
            if span is None:
                readings.append(Reading(ABSTENTION, None, True, -math.inf, share))
                continue
            reading = Reading(span.text, passage_at(ps, span.char_start), False, result.margin, share)
            readings.append(reading.at_threshold(limit))
        return readings


def passage_at(passages: Sequence[Passage], offset: int) -> int | None:
    """Which passage a character offset of join_passages(passages) falls in."""
    end = 0
    for i, passage in enumerate(passages):
        end += len(passage.reader_text()) + 1  # the joining newline
        if offset < end:
            return i
    return None


class LMReader:
    """A causal LM (tunelab.lm.generate.Generator) answering from a prompt template, in batches."""

    def __init__(
        self,
        generator,
        template: str = "grounded",
        decoding: Decoding = "grounded",
        threshold: float = -math.inf,
        max_new_tokens: int = 24,
        batch_size: int = 8,
        examples: WorkedExamples | None = None,
    ):
        from tunelab.prompts.loader import load_template

        self.generator = generator
        self.template = load_template(template)
        self.decoding = decoding
        self.threshold = threshold
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.examples = examples  # worked examples shown before each question (rag/examples.py)
        shots = f":{examples.shots}-shot" if examples is not None and examples.shots else ""
        self.name = f"lm:{getattr(generator, 'name', 'model')}:{self.template.id}:{decoding}{shots}"

    def prompt(self, question: str, passages: Sequence[Passage], shown: Sequence[WorkedExample] = ()) -> str | list[dict]:
        """The prompt: one user turn, or, with worked examples, each example as an answered turn before it."""
        asked = self.template.render(question, format_passages(passages))
        if not shown:
            return asked
        turns = []
        for example in shown:
            turns += [
                {"role": "user", "content": self.template.render(example.question, format_passages(example.passages))},
                {"role": "assistant", "content": example.answer},
            ]
        return [*turns, {"role": "user", "content": asked}]

    def read_many(
        self, questions: Sequence[str], passages: Sequence[Sequence[Passage]], threshold: float | None = None, on_batch: Callable[[int], None] | None = None
    ) -> list[Reading]:
        from tunelab.prompts.generate import answer_batch

        shown = self.examples.nearest(questions) if self.examples is not None else [()] * len(questions)
        prompts = [self.prompt(q, ps, ex) for q, ps, ex in zip(questions, passages, shown)]
        grounded = [[p.reader_text() for p in ps] for ps in passages] if self.decoding == "grounded" else None
        answers = answer_batch(
            self.generator, prompts, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, on_batch=on_batch, grounded_passages=grounded
        )
        limit = self.threshold if threshold is None else threshold
        readings = []
        for answered, ps in zip(answers, passages):
            if is_abstention(answered.text):
                readings.append(Reading(ABSTENTION, None, True, answered.logprob_mean, answered.seconds, answered.prompt_tokens))
                continue
            reading = Reading(answered.text, source_of(answered.text, ps), False, answered.logprob_mean, answered.seconds, answered.prompt_tokens)
            readings.append(reading.at_threshold(limit))
        return readings


class CallableReader:
    """Any `prompt -> text` callable as a free-decoding reader with no confidence (never thresholded)."""

    def __init__(self, generate: Callable[[str], str], template: str = "grounded"):
        from tunelab.prompts.loader import load_template

        self.generate = generate
        self.template = load_template(template)
        self.threshold = -math.inf
        self.name = f"callable:{self.template.id}"

    def read_many(self, questions: Sequence[str], passages: Sequence[Sequence[Passage]], threshold: float | None = None) -> list[Reading]:
        readings = []
        for question, ps in zip(questions, passages):
            started = time.perf_counter()
            text = str(self.generate(self.template.render(question, format_passages(ps)))).strip()
            seconds = time.perf_counter() - started
            if is_abstention(text):
                readings.append(Reading(ABSTENTION, None, True, math.inf, seconds))
            else:
                readings.append(Reading(text, source_of(text, ps), False, math.inf, seconds))
        return readings


def format_passages(passages: Sequence[Passage]) -> str:
    """Passages as numbered lines ([1] heading: text), the form every LM prompt and training example uses."""
    return format_passages_text([p.reader_text() for p in passages])


def format_passages_text(texts: Sequence[str]) -> str:
    return "\n".join(f"[{i}] {text}" for i, text in enumerate(texts, start=1))
