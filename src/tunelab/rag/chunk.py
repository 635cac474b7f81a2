"""Chunking by tokens with overlap, never across a section boundary.

Token counts come from the embedding model's own tokenizer, so a chunk fits the model's
window. Inside a section a chunk prefers to end at a paragraph break, then a sentence end,
then a word boundary. When a cut falls inside a paragraph, the next chunk starts up to
`overlap` tokens earlier (at the best boundary there), so no sentence is only seen in halves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tunelab.data.factbook import headed_passage
from tunelab.errors import TunelabError


@dataclass(frozen=True)
class Chunk:
    chunk_id: str  # "<doc_id>#<n>"
    doc_id: str
    title: str
    section: str
    text: str
    position: int  # n: the chunk's place in its document

    def indexed_text(self) -> str:
        """What is embedded and keyword-indexed: the text with its title and section in front (data.factbook.headed_passage)."""
        return headed_passage(self.title, self.section, self.text)

    def to_dict(self) -> dict:
        return asdict(self)


def split_section(text: str, tokenizer, max_tokens: int, overlap: int) -> list[str]:
    """Pieces of `text`, each at most max_tokens tokens, consecutive pieces sharing ~overlap tokens."""
    if max_tokens < 8:
        raise TunelabError(f"chunk size {max_tokens} tokens is too small", "use --chunk-tokens of 32 or more")
    if not 0 <= overlap <= max_tokens // 2:
        raise TunelabError(
            f"overlap {overlap} must be between 0 and half the chunk size ({max_tokens})",
            f"use --overlap between 0 and {max_tokens // 2}",
        )
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    offsets = [span for span in encoded["offset_mapping"] if span[1] > span[0]]
    n = len(offsets)
    if n == 0:
        return [text.strip()] if text.strip() else []
    if n <= max_tokens:
        return [text.strip()]

    def gap(j: int) -> str:  # the characters between token j-1 and token j
        return text[offsets[j - 1][1] : offsets[j][0]]

    def rank(j: int) -> int:
        between = gap(j)
        if "\n" in between:
            return 3
        if between and text[offsets[j - 1][1] - 1 : offsets[j - 1][1]] in ".;!?":
            return 2
        return 1 if between else 0  # 0: inside a word (a "##piece")

    pieces = []
    start = 0
    while start < n:
        end = min(start + max_tokens, n)
        if end < n:
            # The best boundary in the second half of the window; ties go to the latest one.
            best = max(range(start + max_tokens // 2, end + 1), key=lambda j: (rank(j), j))
            end = best if rank(best) > 0 else end
        pieces.append(text[offsets[start][0] : offsets[end - 1][1]].strip())
        if end >= n:
            break
        if rank(end) == 3 or overlap == 0:
            start = end  # a clean paragraph break needs no overlap: nothing was cut in half
            continue
        # Start at the best boundary within the last `overlap` tokens (earliest among equals).
        window = range(max(end - overlap, start + 1), end)
        start = max(window, key=lambda j: (rank(j), -j)) if window else end
    return [p for p in pieces if p]


def chunk_document(doc, tokenizer, max_tokens: int = 200, overlap: int = 32) -> list[Chunk]:
    """Chunks of a Document (anything with doc_id, title and sections), numbered in order."""
    chunks: list[Chunk] = []
    for section in doc.sections:
        for piece in split_section(section.text, tokenizer, max_tokens, overlap):
            n = len(chunks)
            chunks.append(Chunk(f"{doc.doc_id}#{n}", doc.doc_id, doc.title, section.heading, piece, n))
    return chunks
