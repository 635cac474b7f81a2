"""The documents a question names: index document titles that occur in it as whole words.

A question that names its document ("What is the internet country code of Belgium?") is best answered
from that document. Retrieval over every document can miss it (other documents' "Internet country code"
notes outrank Belgium's own line), and a reader shown Equatorial Guinea's lines for a question about
Guinea answers from them. Retrieval kept to the named documents is a metadata filter on doc_id, which
both stores apply before ranking (rag/stores). It is an option (ContextSettings.scope "named"), not the
default: on train questions it gave more right answers and fewer misses, but the misses it left, lines of
the named document shown with its high similarity, were rarely abstained on (benchmarks/miss_abstention_dev.py,
rules 6 and 7).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_WORD = re.compile(r"\w+")


def words(text: str) -> tuple[str, ...]:
    """Lower-cased word characters only: "Holy See (Vatican City)" and "holy see vatican city" match."""
    return tuple(w.lower() for w in _WORD.findall(text))


class TitleMatcher:
    """Finds the titles of `titles` (doc_id -> title) in a question, by word n-grams rather than one
    pattern per title, so a question costs the same for 200 documents or 200,000."""

    def __init__(self, titles: Mapping[str, str]):
        self.by_words: dict[tuple[str, ...], list[str]] = {}
        for doc_id, title in titles.items():
            key = words(title)
            if key:
                self.by_words.setdefault(key, []).append(doc_id)
        self.longest = max((len(key) for key in self.by_words), default=0)

    def named(self, question: str) -> list[str]:
        """doc_ids whose title the question names, in the order named. Where titles overlap ("Guinea" in
        "Papua New Guinea", "Virgin Islands" in "British Virgin Islands") the longest match wins."""
        found = words(question)
        out: list[str] = []
        start = 0
        while start < len(found):
            for size in range(min(self.longest, len(found) - start), 0, -1):
                doc_ids = self.by_words.get(found[start : start + size])
                if doc_ids:
                    out.extend(d for d in doc_ids if d not in out)
                    start += size
                    break
            else:
                start += 1
        return out
