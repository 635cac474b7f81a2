"""Worked examples for an untrained LM reader: the train questions nearest a question, each with its
retrieved passages and the span of them that answers it, shown as earlier chat turns.

    shots = WorkedExamples.from_rows(train_rows, contexts, index.embedder)
    LMReader(generator, examples=shots)          # each question sees its 3 nearest worked examples

SmolLM2-135M shown only the question and its passages copies the wrong span (map coordinates for a
capital); shown three questions of the same kind answered from their own passages, it copies the
right one far more often (benchmarks/strategies: the "rag" strategy and the shots ablation). This is
prompt engineering, not training: no weight changes. The pool must be train questions, never the
questions being scored, and an example is kept only when its passages hold its answer, so every
demonstration is a copy from the context it shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tunelab.rag.focus import Passage
from tunelab.rag.reader_data import Retrieved, locate

SHOTS = 3


@dataclass(frozen=True)
class WorkedExample:
    question: str
    passages: list[Passage]
    answer: str  # the answer as it is written in the passages


class WorkedExamples:
    """A pool of worked examples, searched by question embedding."""

    def __init__(self, examples: Sequence[WorkedExample], embedder, shots: int = SHOTS):
        self.examples = list(examples)
        self.embedder = embedder
        self.shots = shots
        self.vectors = embedder.encode([e.question for e in self.examples]) if self.examples else np.zeros((0, 1))

    @classmethod
    def from_rows(cls, rows: Sequence[dict], contexts: Sequence[Retrieved], embedder, shots: int = SHOTS) -> WorkedExamples:
        """Examples from QA rows and their retrieved contexts; rows whose passages lack the answer are left out."""
        examples = []
        for row, context in zip(rows, contexts):
            found = locate("\n".join(p.reader_text() for p in context.passages), row["answer"], row.get("aliases") or [])
            if found is not None:
                examples.append(WorkedExample(row["question"], list(context.passages), found[1]))
        return cls(examples, embedder, shots)

    def __len__(self) -> int:
        return len(self.examples)

    def nearest(self, questions: Sequence[str]) -> list[list[WorkedExample]]:
        """Per question, its `shots` nearest examples, the nearest last (closest to the question in the prompt).
        An example whose question is the asked one is skipped: a question never answers itself."""
        if not self.examples or self.shots <= 0:
            return [[] for _ in questions]
        similarity = self.embedder.encode(list(questions)) @ self.vectors.T
        chosen = []
        for question, row in zip(questions, similarity):
            picked = [self.examples[j] for j in np.argsort(-row, kind="stable") if self.examples[j].question != question][: self.shots]
            chosen.append(picked[::-1])
        return chosen
