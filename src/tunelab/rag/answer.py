"""Grounded answers: retrieve, build the reader's context, read, cite the passage the answer came from.

    answer(question, index, SpanReader("runs/reader"))          # extractive: a span of a source
    answer(question, index, LMReader(Generator("smollm2")))     # generative, grounded decoding

When the closest chunk is not similar enough to the question, or the reader is not sure enough of
its answer, the answer is "I don't know": a small model given irrelevant context guesses. Both
thresholds are chosen on train questions (rag/train_reader.py), never on the test split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tunelab.rag.focus import Passage
from tunelab.rag.index import Hit, Index
from tunelab.rag.reader_data import ContextSettings, retrieve_context
from tunelab.rag.readers import CallableReader, Reader
from tunelab.rag.train_reader import Abstention, below_threshold, reading_features

ABSTAIN = "I don't know: the indexed documents do not seem to cover this question."
# all-MiniLM cosine of the closest chunk, used when no threshold was chosen for the reader (a reader
# trained by rag/train_reader.py carries its own, chosen on train questions). 10 off-topic questions
# (recipes, guitar, Hamlet, ...) score 0.19-0.33 on the Factbook index; its train questions 0.5 and up.
MIN_SIMILARITY = 0.4


# What `rag ask` says after "I don't know", by Answer.reason; and how many retrieved chunks it names then.
WHY = {
    "retrieval": "no indexed passage is close enough to the question (closest similarity {similarity:.2f}).",
    "reader": "the reader found no answer it was sure enough of in the passages shown.",
    "named document": "the answer the reader found is not from the document the question names.",
}
CLOSEST_SHOWN = 3


def _where(hit: Hit) -> str:
    where = " — ".join(p for p in (hit.chunk.title, hit.chunk.section) if p)
    return f"[{hit.rank}] {where} ({hit.chunk.doc_id}, {hit.chunk.chunk_id})"


@dataclass
class Answer:
    question: str
    text: str
    sources: list[Hit]  # the chunk the answer came from (all shown chunks when the reader cannot say)
    abstained: bool
    hits: list[Hit] = field(default_factory=list)  # every chunk retrieved
    best_similarity: float = 0.0
    passage: Passage | None = None  # the line or chunk the answer was read from
    confidence: float | None = None
    # why it abstained: "retrieval" (nothing similar enough), "reader", or "named document" (the answer was
    # read from a document other than the one the question names)
    reason: str = ""
    shown: list[Passage] = field(default_factory=list)  # the context the reader read

    def format(self) -> str:
        """The answer with its sources and quote; an abstention with why, and the closest chunks retrieval found."""
        lines = [self.text]
        if self.abstained:
            if self.reason in WHY:
                lines.append(f"Why: {WHY[self.reason].format(similarity=self.best_similarity)}")
            if self.hits:
                lines += ["", "Closest passages:", *(_where(hit) for hit in self.hits[:CLOSEST_SHOWN])]
        elif self.sources:
            lines += ["", "Sources:", *(_where(hit) for hit in self.sources)]
            if self.passage is not None:
                lines.append(f'    "{self.passage.text}"')
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "question": self.question,
            "answer": self.text,
            "abstained": self.abstained,
            "best_similarity": round(self.best_similarity, 4),
            "confidence": None if self.confidence is None or math.isnan(self.confidence) else round(float(self.confidence), 4),
            "reason": self.reason,
            "quote": self.passage.text if self.passage is not None else None,
            "sources": [h.to_dict() for h in self.sources],
        }


def answer(
    question: str,
    index: Index,
    reader: Reader,
    *,
    settings: ContextSettings | None = None,
    min_similarity: float = MIN_SIMILARITY,
    require_named_document: bool = False,
) -> Answer:
    """Retrieve, focus, read; "I don't know" when retrieval or the reader is below its threshold.

    `reader` is a rag.readers reader, or any `prompt -> text` callable (read with free decoding).
    """
    return answer_many([question], index, reader, settings=settings, min_similarity=min_similarity, require_named_document=require_named_document)[0]


def answer_many(
    questions,
    index: Index,
    reader: Reader,
    *,
    settings: ContextSettings | None = None,
    min_similarity: float = MIN_SIMILARITY,
    require_named_document: bool = False,
) -> list[Answer]:
    """answer() for many questions, read in batches (the readers are several times faster so); with
    `require_named_document`, an answer read from a document other than the one the question names is refused."""
    if not hasattr(reader, "read_many"):
        reader = CallableReader(reader)
    settings = settings or ContextSettings()
    # The reader's own threshold is its confidence limit, applied by the rule the thresholds were chosen by.
    abstention = Abstention(min_similarity=min_similarity, min_confidence=reader.threshold, require_named_document=require_named_document)
    contexts = [retrieve_context(index, q, settings) for q in questions]
    retrieval = below_threshold(abstention, [[c.best_similarity for c in contexts]])  # judged before reading: a question it refuses is not read
    asked = [i for i, c in enumerate(contexts) if c.hits and retrieval[i] is None]
    read = reader.read_many([questions[i] for i in asked], [contexts[i].passages for i in asked], threshold=float("-inf"))
    readings = dict(zip(asked, read))
    failed = dict(zip(asked, below_threshold(abstention, reading_features([contexts[i] for i in asked], read))))
    answers = []
    for i, (question, context) in enumerate(zip(questions, contexts)):
        if i not in readings:
            answers.append(Answer(question, ABSTAIN, [], True, context.hits, context.best_similarity, reason="retrieval", shown=context.passages))
            continue
        reading = readings[i]
        if failed[i] is not None:
            answers.append(
                Answer(
                    question,
                    ABSTAIN,
                    [],
                    True,
                    context.hits,
                    context.best_similarity,
                    confidence=reading.confidence,
                    reason="named document" if failed[i] == "named document" else "reader",
                    shown=context.passages,
                )
            )
            continue
        passage = context.passages[reading.passage] if reading.passage is not None else None
        sources = [passage.hit] if passage is not None else context.hits
        answers.append(
            Answer(question, reading.text, sources, False, context.hits, context.best_similarity, passage, reading.confidence, shown=context.passages)
        )
    return answers
