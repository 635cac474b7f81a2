"""Focused context: the lines of the retrieved chunks closest to the question, instead of whole chunks.

A small reader shown four 200-token chunks copies the wrong span (map coordinates for a capital);
shown the few lines nearest the question it has far less to choose from, and reads faster. What
each choice is worth is measured in benchmarks/strategies (the context ablation).

A line is a paragraph of the chunk (a Factbook field such as "Capital - name: Paris"); a long
paragraph is cut into sentences. Each line is embedded with its chunk's title and section in front,
as chunks are, since "Capital - name: Paris" alone does not say which country it is about.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tunelab.rag.index import Hit

# A line longer than this is cut into sentences; the embedding model reads ~256 tokens at most.
MAX_LINE_CHARS = 400
# Embedded: the heading and the line's start, which names what the line is about ("Capital - name: ...").
EMBED_CHARS = 100
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+(?=[A-Z0-9\"'(])")


@dataclass(frozen=True)
class Passage:
    """One piece of context shown to a reader, and the retrieved chunk it was taken from."""

    text: str
    hit: Hit
    similarity: float | None = None  # question-line cosine; None when whole chunks are shown

    @property
    def heading(self) -> str:
        return " — ".join(part for part in (self.hit.chunk.title, self.hit.chunk.section) if part)

    def reader_text(self) -> str:
        """What the reader reads: the line with its document and section named, e.g.
        "France — Government: Capital - name: Paris"."""
        return f"{self.heading}: {self.text}" if self.heading else self.text


def split_lines(text: str) -> list[str]:
    """The chunk's paragraphs; a paragraph over MAX_LINE_CHARS is cut at sentence ends."""
    lines = []
    for paragraph in (p.strip() for p in text.splitlines()):
        if not paragraph:
            continue
        if len(paragraph) <= MAX_LINE_CHARS:
            lines.append(paragraph)
            continue
        lines.extend(s.strip() for s in _SENTENCE_END.split(paragraph) if s.strip())
    return lines


def whole_chunks(hits: Sequence[Hit]) -> list[Passage]:
    """Each retrieved chunk as one passage (the unfocused context)."""
    return [Passage(hit.chunk.text, hit) for hit in hits]


def focus(
    question: str,
    hits: Sequence[Hit],
    embedder,
    lines: int = 5,
    query_vector: np.ndarray | None = None,
    cache: dict | None = None,
    skip: Callable[[str], bool] | None = None,
) -> list[Passage]:
    """The `lines` lines of the hits closest to the question by cosine, best first, leaving out the lines
    `skip` says (e.g. those that hold the answer, for a training example with none).

    `cache` (chunk_id -> line vectors) saves re-embedding chunks that several questions retrieve."""
    candidates = [Passage(line, hit) for hit in hits for line in split_lines(hit.chunk.text)]
    if not candidates:
        return []
    if query_vector is None:
        query_vector = embedder.encode([question])[0]
    cache = {} if cache is None else cache
    todo = list(dict.fromkeys(p.hit.chunk.chunk_id for p in candidates if p.hit.chunk.chunk_id not in cache))
    if todo:
        fresh = [p for p in candidates if p.hit.chunk.chunk_id in set(todo)]
        vectors = embedder.encode([p.reader_text()[:EMBED_CHARS] for p in fresh])
        for chunk_id in todo:
            cache[chunk_id] = np.stack([v for p, v in zip(fresh, vectors) if p.hit.chunk.chunk_id == chunk_id])
    vectors = np.concatenate([cache[chunk_id] for chunk_id in dict.fromkeys(p.hit.chunk.chunk_id for p in candidates)])
    similarity = vectors @ query_vector
    order = [i for i in np.argsort(-similarity, kind="stable") if skip is None or not skip(candidates[i].text)][:lines]
    return [Passage(candidates[i].text, candidates[i].hit, float(similarity[i])) for i in order]
