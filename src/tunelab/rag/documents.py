"""Documents to index: a folder of .txt, .md, .html and .json files, or the built-in Factbook."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from tunelab.data.factbook import Section, clean_html, flatten_json, load_factbook
from tunelab.errors import TunelabError

SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".json")
BUILTIN_CORPORA = ("factbook",)


@dataclass(frozen=True)
class Document:
    doc_id: str  # stable id: the path relative to the source folder
    title: str
    sections: list[Section]
    content_hash: str  # sha256 of the file's bytes: what incremental re-indexing compares


def _paragraphs(text: str) -> list[str]:
    return [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def read_text(path: Path) -> tuple[str, list[Section]]:
    return path.stem, [Section("", _paragraphs(path.read_text(encoding="utf-8", errors="replace")))]


def read_markdown(path: Path) -> tuple[str, list[Section]]:
    """ATX headings (#, ##, ...) start sections; the first level-1 heading is the title."""
    title, sections = path.stem, []
    heading, lines = "", []
    in_fence = False

    def close() -> None:
        paragraphs = _paragraphs("\n".join(lines))
        if paragraphs:
            sections.append(Section(heading, paragraphs))

    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        match = None if in_fence else re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if match:
            close()
            heading, lines = match.group(2), []
            if match.group(1) == "#" and title == path.stem:
                title = heading
        else:
            lines.append(line)
    close()
    return title, sections


class _HtmlSections(HTMLParser):
    """Splits an HTML page into sections at h1-h6, keeping block elements as paragraphs."""

    _BLOCKS = {"p", "div", "li", "tr", "br", "pre", "blockquote", "section", "article", "table", "ul", "ol"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.sections: list[tuple[str, list[str]]] = [("", [])]
        self._buffer: list[str] = []
        self._in: str | None = None  # "title", "heading", or a skipped tag
        self._heading: list[str] = []

    def _flush(self) -> None:
        text = re.sub(r"\s+", " ", "".join(self._buffer)).strip()
        if text:
            self.sections[-1][1].append(text)
        self._buffer = []

    def handle_starttag(self, tag, attrs) -> None:
        if tag in ("script", "style", "title") or re.fullmatch(r"h[1-6]", tag):
            self._flush()
            self._in = "heading" if tag.startswith("h") else tag
            self._heading = []
        elif tag in self._BLOCKS:
            self._flush()

    def handle_endtag(self, tag) -> None:
        if re.fullmatch(r"h[1-6]", tag) and self._in == "heading":
            heading = re.sub(r"\s+", " ", "".join(self._heading)).strip()
            self.sections.append((heading, []))
            if tag == "h1" and not self.title:
                self.title = heading
            self._in = None
        elif tag in ("script", "style", "title") and self._in == tag:
            if tag == "title":
                self.title = re.sub(r"\s+", " ", "".join(self._heading)).strip()
            self._in = None
        elif tag in self._BLOCKS:
            self._flush()

    def handle_data(self, data) -> None:
        if self._in in ("heading", "title"):
            self._heading.append(data)
        elif self._in is None:
            self._buffer.append(data)


def read_html(path: Path) -> tuple[str, list[Section]]:
    parser = _HtmlSections()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    parser.close()
    parser._flush()
    sections = [Section(h, p) for h, p in parser.sections if p]
    return parser.title or path.stem, sections


def read_json(path: Path) -> tuple[str, list[Section]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise TunelabError(f"{path} is not valid JSON: {error}", "fix the file or move it out of the folder") from None
    title = data.get("title") if isinstance(data, dict) and isinstance(data.get("title"), str) else path.stem
    return clean_html(title), flatten_json(data)


READERS = {
    ".txt": read_text,
    ".md": read_markdown,
    ".markdown": read_markdown,
    ".html": read_html,
    ".htm": read_html,
    ".json": read_json,
}


def folder_files(root: Path) -> list[Path]:
    return sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in READERS and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def load_folder(root: str | Path) -> list[Document]:
    root = Path(root).expanduser()
    files = folder_files(root)
    if not files:
        raise TunelabError(
            f"no .txt, .md, .html or .json files in '{root}'",
            "point SOURCE at a folder of documents, or use the built-in corpus 'factbook'",
        )
    documents = []
    for path in files:
        title, sections = READERS[path.suffix.lower()](path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        documents.append(Document(path.relative_to(root).as_posix(), title, sections, digest))
    return documents


def load_documents(source: str | Path) -> list[Document]:
    """SOURCE as the CLI takes it: a built-in corpus name or a folder of documents."""
    text = str(source)
    if text == "factbook":
        return [Document(d.doc_id, d.title, d.sections, d.content_hash) for d in load_factbook()]
    path = Path(text).expanduser()
    if path.is_dir():
        return load_folder(path)
    if path.is_file():
        raise TunelabError(f"'{text}' is a file", "SOURCE is a folder of documents (or 'factbook'); put the file in a folder")
    raise TunelabError(
        f"source '{text}' is neither a folder nor a built-in corpus",
        f"built-in corpora: {', '.join(BUILTIN_CORPORA)}",
    )
