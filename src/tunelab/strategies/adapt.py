"""New knowledge: edit facts in a copy of the knowledge base and make questions about the edits.

Edits are made to Document objects (never to the source files): some capitals are renamed to
invented cities, some populations changed, and one invented country is added. The probe
questions carry the new answer and the old one, so a strategy still giving the old answer
is visibly stale rather than just wrong.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import replace

from tunelab.answers import normalize
from tunelab.data.factbook import Section
from tunelab.rag.documents import Document

NEW_CITIES = ["Marrowick", "Zelthane", "Orvandel", "Quillbrook", "Tessaport", "Vandrecht", "Halvoria City", "Kestremont"]
NEW_COUNTRY = {
    "title": "Veloria",
    "capital": "Marisol Bay",
    "population": "4,318,902",
    "currency": "Velorian crowns",
}


def _hash(doc_id: str, sections: Sequence[Section]) -> str:
    text = doc_id + "\n" + "\n\n".join(s.heading + "\n" + s.text for s in sections)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _replace_in(doc: Document, old: str, new: str) -> Document | None:
    sections = [Section(s.heading, [p.replace(old, new) for p in s.paragraphs]) for s in doc.sections]
    if all(a.paragraphs == b.paragraphs for a, b in zip(sections, doc.sections)):
        return None  # the old value is not written in the document as the QA set has it
    return replace(doc, sections=sections, content_hash=_hash(doc.doc_id, sections))


def new_country_document() -> Document:
    c = NEW_COUNTRY
    sections = [
        Section("Introduction", [f"Background: {c['title']} is an island republic that declared independence in 2024."]),
        Section(
            "Government", [f"Country name: conventional short form: {c['title']}", f"Capital - name: {c['capital']}", "Government type: parliamentary republic"]
        ),
        Section("People and Society", [f"Population: total: {c['population']} (2026 est.)", "Languages: Velorian (official)"]),
        Section("Economy", [f"Exchange rates: {c['currency']} (VLC) per US dollar - 3.1 (2025 est.)"]),
    ]
    return Document("new/veloria.json", c["title"], sections, _hash("new/veloria.json", sections))


def edit_knowledge(documents: Sequence[Document], rows: Sequence[dict], changes: int = 6, seed: int = 0) -> tuple[list[Document], list[dict]]:
    """A copy of `documents` with `changes` facts edited (half capitals, half populations) plus one new
    country; and the probe questions ({question, answer, aliases, old_answer, doc_id, change})."""
    rng = random.Random(seed)
    by_id = {d.doc_id: d for d in documents}
    edited: dict[str, Document] = {}
    probes: list[dict] = []
    cities = list(NEW_CITIES)
    for kind, wanted in (("capital", (changes + 1) // 2), ("population", changes // 2)):
        candidates = [r for r in rows if r.get("kind") == kind and r["doc_id"] in by_id and r["doc_id"] not in edited]
        rng.shuffle(candidates)
        for row in candidates:
            if wanted == 0:
                break
            doc = edited.get(row["doc_id"], by_id[row["doc_id"]])
            if kind == "capital":
                if not cities:
                    break
                new = cities.pop(0)
                aliases: list[str] = []
            else:
                digits = int("".join(ch for ch in row["answer"] if ch.isdigit()) or 0)
                if not digits:
                    continue
                value = int(digits * rng.uniform(1.3, 1.8)) + 7
                new, aliases = f"{value:,}", [str(value)]
            changed = _replace_in(doc, row["answer"], new)
            if changed is None:
                continue
            edited[row["doc_id"]] = changed
            probes.append(
                {
                    "question": row["question"],
                    "answer": new,
                    "aliases": aliases,
                    "old_answer": row["answer"],
                    "doc_id": row["doc_id"],
                    "kind": kind,
                    "change": "edited",
                }
            )
            wanted -= 1
    added = new_country_document()
    c = NEW_COUNTRY
    probes += [
        {
            "question": f"What is the capital of {c['title']}?",
            "answer": c["capital"],
            "aliases": [],
            "old_answer": "",
            "doc_id": added.doc_id,
            "kind": "capital",
            "change": "added",
        },
        {
            "question": f"What is the population of {c['title']}?",
            "answer": c["population"],
            "aliases": [c["population"].replace(",", "")],
            "old_answer": "",
            "doc_id": added.doc_id,
            "kind": "population",
            "change": "added",
        },
        {
            "question": f"What is the currency of {c['title']}?",
            "answer": c["currency"],
            "aliases": ["Velorian crown", "VLC"],
            "old_answer": "",
            "doc_id": added.doc_id,
            "kind": "currency",
            "change": "added",
        },
    ]
    new_docs = [edited.get(d.doc_id, d) for d in documents] + [added]
    return new_docs, probes


def says_old_answer(prediction: str, old_answer: str) -> bool:
    old = normalize(old_answer)
    return bool(old) and f" {old} " in f" {normalize(prediction)} "
