"""Training examples for a RAG reader, made from a QA set and an index as the reader will see them.

Every question is retrieved and focused exactly as at answer time, so the reader learns on the
passages it will be shown, misses included:
  - the gold answer is in the passages  -> the target is its first occurrence (a span);
  - it is not (a retrieval miss)          -> the target is "no answer" / "I don't know";
  - a share of questions get the passages of a different document instead (distractors only), with
    the "no answer" target, so the reader learns to say so when the shown text does not hold it.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from tunelab.answers import ABSTENTION
from tunelab.rag.focus import Passage, focus, split_lines, whole_chunks

CONTEXTS = ("focused", "chunks")
# Which documents retrieval ranks: all of them, or only those the question names by title when it names any
# (rag/named.py); a question naming none is retrieved over all documents either way.
SCOPES = ("all", "named")
# Share of training questions shown another document's passages (target: no answer). Retrieval
# misses alone are ~7% of train questions at k=6 (benchmarks/strategies), too few to learn abstaining.
DISTRACTOR_SHARE = 0.25


@dataclass(frozen=True)
class ContextSettings:
    """How a question's context is built: retrieval depth, then whole chunks or the closest lines."""

    mode: str = "hybrid"
    k: int = 6
    context: str = "focused"
    lines: int = 5
    scope: str = "all"

    def to_dict(self) -> dict:
        return {"mode": self.mode, "k": self.k, "context": self.context, "lines": self.lines, "scope": self.scope}

    def documents(self, named: Sequence[str]) -> list[str] | None:
        """The doc_ids retrieval keeps to, given those the question names (None: every document)."""
        return (list(named) or None) if self.scope == "named" else None


@dataclass
class Retrieved:
    passages: list[Passage]
    hits: list  # every retrieved chunk (Hit)
    best_similarity: float
    seconds: float
    # The doc_ids the question names by title (rag/named.py), whatever the scope: an answer read from another
    # document is one the abstention thresholds may refuse (rag/train_reader.reading_features).
    named_documents: tuple[str, ...] = ()


def retrieve_context(index, question: str, settings: ContextSettings, skip: Callable[[str], bool] | None = None) -> Retrieved:
    """What the reader is shown for `question` (shown_context), without the lines `skip` says."""
    import time

    started = time.perf_counter()
    named = index.named_documents(question)
    retrieval = index.retrieve(question, settings.mode, settings.k, need_similarity=True, documents=settings.documents(named))
    best = 0.0 if math.isnan(retrieval.best_similarity) else retrieval.best_similarity  # NaN: the index is empty
    return shown_context(index, question, retrieval.hits, best, settings, started, skip, named)


def retrieve_miss_context(index, question: str, doc_id: str, settings: ContextSettings) -> Retrieved:
    """The context `question` would get if retrieval missed its document `doc_id`: the best k chunks of
    the other documents, focused as at answer time. Real misses are a few percent of questions, too few
    to choose how often the reader must abstain on them; these simulated ones are one per question. With the
    "named" scope, as if `doc_id` were not in the index: the other documents the question names, else all."""
    import time

    started = time.perf_counter()
    depth = max(50, 4 * settings.k)  # the fused lists' own depth (rag/index.py), so the other documents' order is unchanged
    named = index.named_documents(question)
    documents = [d for d in settings.documents(named) or [] if d != doc_id] or None
    retrieval = index.retrieve(question, settings.mode, depth, need_similarity=True, documents=documents)
    others = [hit for hit in retrieval.hits if hit.chunk.doc_id != doc_id]
    similarities = [hit.similarity for hit in others if hit.similarity is not None]
    hits = others[: settings.k]
    for rank, hit in enumerate(hits, start=1):
        hit.rank = rank
    return shown_context(index, question, hits, max(similarities, default=0.0), settings, started, named=named)


def retrieve_line_miss_context(index, row: dict, settings: ContextSettings) -> Retrieved:
    """The context `row`'s question would get if no shown line held its answer although retrieval found its
    document: the question's own retrieval, every line that holds the answer (or an alias) left out. On train
    questions most real misses are of this kind (the document shown, the answering line not among the
    focused lines), not the document misses retrieve_miss_context simulates."""

    def holds_answer(line: str) -> bool:
        return locate(line, row["answer"], row.get("aliases") or []) is not None

    return retrieve_context(index, row["question"], settings, skip=holds_answer)


def simulated_miss_context(index, row: dict, settings: ContextSettings, kind: str = "retrieval") -> Retrieved:
    """`row`'s context as a miss of `kind` shows it: "retrieval", its document missed (retrieve_miss_context; the
    row needs its doc_id), or "line", its document found without the lines that answer (retrieve_line_miss_context)."""
    if kind == "line":
        return retrieve_line_miss_context(index, row, settings)
    return retrieve_miss_context(index, row["question"], row["doc_id"], settings)


def shown_context(
    index,
    question: str,
    hits: list,
    best_similarity: float,
    settings: ContextSettings,
    started: float,
    skip: Callable[[str], bool] | None = None,
    named: Sequence[str] = (),
) -> Retrieved:
    """What the reader is shown of `hits`: their lines closest to the question, or the whole chunks, without the
    lines `skip` says; timed from `started`. `named`: the doc_ids the question names."""
    import time

    if settings.context == "focused":
        passages = focus(question, hits, index.embedder, settings.lines, cache=line_cache(index), skip=skip)
    else:
        passages = whole_chunks(hits)
        if skip is not None:
            passages = [Passage("\n".join(line for line in split_lines(p.text) if not skip(line)), p.hit) for p in passages]
    return Retrieved(passages, hits, best_similarity, time.perf_counter() - started, tuple(named))


def line_cache(index) -> dict:
    """Line vectors of the index's chunks, kept on the open index (a chunk's lines embed the same every time)."""
    cache = getattr(index, "_line_vectors", None)
    if cache is None or len(cache) > 50_000:  # about 1 GB of float32 vectors at most
        cache = {}
        index._line_vectors = cache
    return cache


def locate(context: str, answer: str, aliases: Sequence[str] = ()) -> tuple[int, str] | None:
    """(start, text) of the first whole-word, case-insensitive occurrence of the answer or, failing
    that, of its longest alias found; None when the context holds none of them."""
    for candidate in [answer, *sorted(aliases, key=len, reverse=True)]:
        candidate = candidate.strip()
        if not candidate:
            continue
        match = re.search(rf"(?<!\w){re.escape(candidate)}(?!\w)", context, flags=re.IGNORECASE)
        if match:
            return match.start(), match.group(0)
    return None


def join_passages(passages: Sequence[Passage]) -> str:
    """The extractive reader's context when the passages are read as one text (training examples)."""
    return "\n".join(p.reader_text() for p in passages)


def distractor_rows(rows: Sequence[dict], seed: int = 0, share: float = DISTRACTOR_SHARE) -> dict[int, int]:
    """A seeded `share` of the rows, each mapped to another row, about another document, whose passages
    it is shown instead of its own (row index -> other row index)."""
    rng = random.Random(seed)
    chosen = {}
    for i, row in enumerate(rows):
        if rng.random() < share:
            others = [j for j in range(len(rows)) if rows[j].get("doc_id") != row.get("doc_id")]
            if others:
                chosen[i] = rng.choice(others)
    return chosen


def reader_examples(
    rows: Sequence[dict],
    contexts: Sequence[Retrieved],
    seed: int = 0,
    distractor_share: float = DISTRACTOR_SHARE,
    miss_contexts: Mapping[int, Retrieved] | None = None,
    distractor_of: Mapping[int, int] | None = None,
) -> list[dict]:
    """One example per question: {question, passages (texts), answer ('' = none in them), answer_start,
    kind, doc_id, distractor}. A distractor row (`distractor_of`, when the caller drew them already, else
    distractor_rows of `seed` and `distractor_share`) is shown its context in `miss_contexts` when there is
    one (a simulated miss: retrieve_miss_context, the same question's best chunks of the other documents, the
    hard case of a country's neighbour read for it; or retrieve_line_miss_context, its own document without
    the answering line), else another question's passages."""
    chosen = distractor_rows(rows, seed, distractor_share) if distractor_of is None else distractor_of
    miss_contexts = miss_contexts or {}
    examples = []
    for i, (row, retrieved) in enumerate(zip(rows, contexts)):
        passages = retrieved.passages
        distractor = i in chosen
        if distractor:
            passages = (miss_contexts[i] if i in miss_contexts else contexts[chosen[i]]).passages
        texts = [p.reader_text() for p in passages]
        context = "\n".join(texts)
        found = locate(context, row["answer"], row.get("aliases") or [])
        examples.append(
            {
                "question": row["question"],
                "passages": texts,
                "context": context,
                "answer": found[1] if found else "",
                "answer_start": found[0] if found else -1,
                "kind": row.get("kind", ""),
                "doc_id": row.get("doc_id", ""),
                "distractor": distractor,
            }
        )
    return examples


def sft_examples(examples: Sequence[dict], template) -> list[dict]:
    """Prompt/response pairs for a generative reader: the answer span, or the abstention phrase."""
    from tunelab.rag.readers import format_passages_text

    return [{"prompt": template.render(e["question"], format_passages_text(e["passages"])), "response": e["answer"] or ABSTENTION} for e in examples]
