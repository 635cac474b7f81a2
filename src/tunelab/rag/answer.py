"""Grounded answers: retrieve, put the passages in the prompt, answer with [n] citations.

When the closest chunk is not similar enough to the question, the answer is "I don't know"
without calling the model at all: a small model given irrelevant context guesses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

from tunelab.evaluate.answers import is_abstention
from tunelab.rag.index import Hit, Index

ABSTAIN = "I don't know: the indexed documents do not seem to cover this question."
# all-MiniLM cosine of the closest chunk. Measured on the Factbook index: 50 test questions scored
# 0.575 at the lowest (median 0.67); 10 off-topic questions (recipes, guitar, Hamlet, ...) 0.19-0.33.
MIN_SIMILARITY = 0.4

SYSTEM = (
    "You answer questions using only the numbered sources below. "
    "Cite the sources you use as [1], [2]. "
    "If the sources do not contain the answer, reply exactly: I don't know."
)


class Generator(Protocol):
    """Anything that turns a prompt into text: a local causal LM, or a fake in tests."""

    def __call__(self, prompt: str) -> str: ...


@dataclass
class Answer:
    question: str
    text: str
    sources: list[Hit]  # the passages cited in the text (all given passages if none was cited)
    abstained: bool
    hits: list[Hit] = field(default_factory=list)  # every passage shown to the model
    best_similarity: float = 0.0

    def format(self) -> str:
        lines = [self.text]
        if self.sources and not self.abstained:
            lines.append("")
            lines.append("Sources:")
            for hit in self.sources:
                where = " — ".join(p for p in (hit.chunk.title, hit.chunk.section) if p)
                lines.append(f"[{hit.rank}] {where} ({hit.chunk.doc_id}, {hit.chunk.chunk_id})")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "question": self.question,
            "answer": self.text,
            "abstained": self.abstained,
            "best_similarity": round(self.best_similarity, 4),
            "sources": [h.to_dict() for h in self.sources],
        }


def build_prompt(question: str, hits: list[Hit], max_chars: int = 900) -> str:
    """The grounded prompt: instructions, numbered passages (as [rank]), then the question."""
    passages = []
    for hit in hits:
        where = " — ".join(p for p in (hit.chunk.title, hit.chunk.section) if p)
        text = hit.chunk.text if len(hit.chunk.text) <= max_chars else hit.chunk.text[:max_chars].rsplit(" ", 1)[0] + " ..."
        passages.append(f"[{hit.rank}] {where}\n{text}")
    return f"{SYSTEM}\n\nSources:\n" + "\n\n".join(passages) + f"\n\nQuestion: {question}\nAnswer:"


def cited(text: str, hits: list[Hit]) -> list[Hit]:
    """The passages the text cites as [n] (or [n, m]), in citation order; unknown numbers ignored."""
    by_rank = {hit.rank: hit for hit in hits}
    numbers = [int(n) for group in re.findall(r"\[(\d+(?:\s*,\s*\d+)*)\]", text) for n in re.split(r"\s*,\s*", group)]
    return [by_rank[n] for n in dict.fromkeys(numbers) if n in by_rank]


def answer(
    question: str,
    index: Index,
    generator: Generator,
    *,
    mode: str = "hybrid",
    k: int = 4,
    min_similarity: float = MIN_SIMILARITY,
) -> Answer:
    retrieval = index.retrieve(question, mode, k, need_similarity=True)
    best = retrieval.best_similarity
    if not retrieval.hits or not best >= min_similarity:  # also catches NaN (empty index)
        return Answer(question, ABSTAIN, [], True, retrieval.hits, best if best == best else 0.0)
    text = generator(build_prompt(question, retrieval.hits)).strip()
    if is_abstention(text):
        return Answer(question, ABSTAIN, [], True, retrieval.hits, best)
    sources = cited(text, retrieval.hits) or retrieval.hits
    return Answer(question, text, sources, False, retrieval.hits, best)
