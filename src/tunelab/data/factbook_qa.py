"""A question/answer set with checkable answers, built from the Factbook's structured fields.

Every row: question, answer, aliases (other accepted spellings), doc_id (the Factbook document
holding the answer, as the RAG index names it), kind (capital, currency, ...), title.
Answers are short spans copied from the field, so a reader can check them in the document.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tunelab.answers import normalize
from tunelab.atomic import write_json, write_text
from tunelab.data.factbook import FactbookDocument, field_text, load_factbook
from tunelab.errors import TunelabError


@dataclass(frozen=True)
class QAItem:
    question: str
    answer: str
    aliases: list[str]
    doc_id: str
    kind: str
    title: str

    def to_dict(self) -> dict:
        return asdict(self)


def _strip_notes(text: str) -> str:
    """The value before any explanation: "Amsterdam; note - The Hague ..." -> "Amsterdam"."""
    return re.split(r";|\s\(|\bnote\b", text, maxsplit=1)[0].strip(" ,.-")


def _numbers(text: str) -> list[str]:
    match = re.match(r"^\s*([\d,]+(?:\.\d+)?)", text)
    if not match:
        return []
    number = match.group(1).rstrip(",")
    return [number, number.replace(",", "")]


Extractor = Callable[[FactbookDocument], "tuple[str, str, list[str]] | None"]


def _capital(doc: FactbookDocument):
    name = field_text(doc.raw, "Government", "Capital", "name")
    if not name or name.lower().startswith(("none", "no official")):
        return None
    answer = _strip_notes(name)
    return f"What is the capital of {doc.title}?", answer, [name] if name != answer else []


def _government(doc: FactbookDocument):
    text = field_text(doc.raw, "Government", "Government type")
    if not text:
        return None
    answer = _strip_notes(text)
    return f"What type of government does {doc.title} have?", answer, [text] if text != answer else []


def _currency(doc: FactbookDocument):
    text = field_text(doc.raw, "Economy", "Exchange rates", "Currency")
    match = re.match(r"^(.+?)\s*\(([A-Z/]{3,7})\)", text or "")
    if not match:
        return None
    name, code = match.group(1).strip(), match.group(2)
    aliases = [code, *code.split("/")]
    if name.endswith("s"):
        aliases.append(name[:-1])  # "euros" -> "euro"
    return f"What is the currency of {doc.title}?", name, sorted(set(aliases) - {name})


def _population(doc: FactbookDocument):
    text = field_text(doc.raw, "People and Society", "Population", "total") or field_text(doc.raw, "People and Society", "Population")
    numbers = _numbers(text or "")
    if not numbers:
        return None
    return f"What is the population of {doc.title}?", numbers[0], numbers[1:]


def _area(doc: FactbookDocument):
    text = field_text(doc.raw, "Geography", "Area", "total")
    numbers = _numbers(text or "")
    if not numbers:
        return None
    return f"What is the total area of {doc.title}?", f"{numbers[0]} sq km", numbers


def _independence(doc: FactbookDocument):
    text = field_text(doc.raw, "Government", "Independence")
    if not text or not re.match(r"^\d{1,2} [A-Z][a-z]+ \d{3,4}\b", text):
        return None  # "none (...)", "no official date ...": no single checkable date
    date = re.match(r"^\d{1,2} [A-Z][a-z]+ \d{3,4}", text).group(0)
    return f"When did {doc.title} become independent?", date, [date.split()[-1]]


def _languages(doc: FactbookDocument):
    text = field_text(doc.raw, "People and Society", "Languages", "Languages") or field_text(doc.raw, "People and Society", "Languages")
    if not text:
        return None
    official = []
    for part in re.split(r",|;", text):
        match = re.match(r"^\s*([A-Z][\w' -]*?)\s*(?:only\s*)?\(official\b", part)
        if match:
            official.append(match.group(1).strip())
    if not official:
        return None
    return f"What is an official language of {doc.title}?", official[0], official[1:]


def _internet_code(doc: FactbookDocument):
    text = field_text(doc.raw, "Communications", "Internet country code")
    match = re.match(r"^(\.[a-z]{2,3})$", text or "")
    if not match:
        return None
    return f"What is the internet country code of {doc.title}?", match.group(1), [match.group(1)[1:]]


def _highest_point(doc: FactbookDocument):
    text = field_text(doc.raw, "Geography", "Elevation", "highest point")
    if not text:
        return None
    name = re.split(r"\s\(|\s\d", text, maxsplit=1)[0].strip(" ,;")
    if not name or name[0].isdigit() or name.lower().startswith(("unnamed", "none")):
        return None
    return f"What is the highest point in {doc.title}?", name, []


def _nationality(doc: FactbookDocument):
    text = field_text(doc.raw, "People and Society", "Nationality", "adjective")
    if not text or text.lower().startswith("none"):
        return None
    answer = _strip_notes(text)
    return f"What is the nationality adjective for people from {doc.title}?", answer, []


def _national_holiday(doc: FactbookDocument):
    text = field_text(doc.raw, "Government", "National holiday")
    match = re.search(r"(\d{1,2} [A-Z][a-z]+)", text or "")
    if not match:
        return None
    return f"On what date is the national holiday of {doc.title}?", match.group(1), []


EXTRACTORS: dict[str, Extractor] = {
    "capital": _capital,
    "government_type": _government,
    "currency": _currency,
    "population": _population,
    "area": _area,
    "independence": _independence,
    "official_language": _languages,
    "internet_code": _internet_code,
    "highest_point": _highest_point,
    "nationality": _nationality,
    "national_holiday": _national_holiday,
}


# The Factbook lines ("field - sub-field") the question kinds above read their answers from. Field
# questions never ask about these lines, so no extra reader-training question holds a test answer or
# asks a kind's own question; they do ask about the other lines of the same fields ("Capital -
# geographic coordinates", "Elevation - lowest point"), so a reader learns to tell a field's lines apart
# instead of taking any line of the field a question names.
KIND_SOURCE_LINES: dict[str, tuple[str, ...]] = {
    "capital": ("Capital - name",),
    "government_type": ("Government type",),
    "currency": ("Exchange rates - Currency",),
    "population": ("Population - total", "Population"),
    "area": ("Area - total",),
    "independence": ("Independence",),
    "official_language": ("Languages", "Languages - Languages"),
    "internet_code": ("Internet country code",),
    "highest_point": ("Elevation - highest point",),
    "nationality": ("Nationality - adjective",),
    "national_holiday": ("National holiday",),
}
KIND_LINES = frozenset(line for lines in KIND_SOURCE_LINES.values() for line in lines)
# Which rule built the field questions; part of the built-in reader's cache key, so a reader trained on
# questions of an earlier rule is rebuilt. 1: whole kind fields left out; 2: only the kinds' own lines.
FIELD_QUESTIONS_VERSION = 2
# Long prose, not facts a question can check.
_PROSE_FIELDS = frozenset({"Background", "Geography - note", "Economic overview", "Government - note", "Languages - major-language sample(s)"})
MAX_FIELD_ANSWER_WORDS = 6


def _field_answer(text: str) -> str | None:
    """The short checkable head of a field's value: "temperate; cool winters" -> "temperate",
    "Mossi 53.7%, Fulani (Peuhl) 6.8%" -> "Mossi 53.7%"; None when it is prose or empty."""
    head = re.split(r", (?=\D)", _strip_notes(text), maxsplit=1)[0].strip(" ,.-:")
    if not head or ":" in head or head.startswith("(") or head.upper() == "NA" or head.lower().startswith(("none", "no ", "see ")):
        return None
    return head if len(head.split()) <= MAX_FIELD_ANSWER_WORDS else None


def build_field_questions(documents: Iterable[FactbookDocument] | None = None, exclude: Iterable[str] = KIND_LINES) -> list[QAItem]:
    """Questions about every other Factbook line, one per paragraph ("Land boundaries - total: 3,611 km"
    -> "What is the total land boundaries of Burkina Faso?" / "3,611 km"): reader-training data with
    many question kinds, so a reader learns to match a question to a line's label rather than
    memorise which field answers which of the eleven kinds. Kind: "field:<field name>".

    `exclude` names whole lines ("Capital - name"); a question whose answer is also one of the eleven
    kinds' answers about the same country (a small island's land area equal to its total area) is
    left out too, so no field question's answer is a kind question's answer."""
    exclude = set(exclude)
    documents = list(documents) if documents is not None else load_factbook()
    kind_answers = {}
    for item in build_factbook_qa(documents):
        kind_answers.setdefault(item.doc_id, set()).update(normalize(a) for a in (item.answer, *item.aliases))
    items = []
    for doc in documents:
        for section in doc.sections:
            for paragraph in section.paragraphs:
                name, _, value = paragraph.partition(": ")
                field, _, sub = name.partition(" - ")
                if not value or name in exclude or name in _PROSE_FIELDS or field in _PROSE_FIELDS or sub.lower().endswith("note"):
                    continue
                answer = _field_answer(value)
                if answer is None or normalize(answer) in kind_answers.get(doc.doc_id, ()):
                    continue
                # "Military expenditures - military expenditures 2020" -> "military expenditures 2020"
                label = sub if field.lower() in sub.lower() else f"{sub} {field}" if sub else field
                items.append(QAItem(f"What is the {label.lower()} of {doc.title}?", answer, [], doc.doc_id, f"field:{field}", doc.title))
    return items


def build_factbook_qa(documents: Iterable[FactbookDocument] | None = None) -> list[QAItem]:
    """Every question the Factbook's fields support, in document order."""
    items = []
    for doc in documents if documents is not None else load_factbook():
        for kind, extract in EXTRACTORS.items():
            found = extract(doc)
            if not found:
                continue
            question, answer, aliases = found
            if not normalize(answer):
                continue
            aliases = [a for a in dict.fromkeys(aliases) if normalize(a) and a != answer]
            items.append(QAItem(question, answer, aliases, doc.doc_id, kind, doc.title))
    return items


def spread_over_kinds(rows: Sequence[dict], n: int, seed: int = 0) -> list[dict]:
    """n rows of a seeded shuffle taken round-robin over their kinds, so a few large fields
    (Legislative branch: 2,887 paragraphs) do not crowd out the many small ones."""
    rng = random.Random(seed)
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row.get("kind", ""), []).append(row)
    queues = [groups[kind] for kind in sorted(groups)]
    for queue in queues:
        rng.shuffle(queue)
    picked: list[dict] = []
    for depth in range(max((len(q) for q in queues), default=0)):
        for queue in queues:
            if depth < len(queue) and len(picked) < n:
                picked.append(queue[depth])
    return picked


# The extractive reader's field questions, chosen by leave-kinds-out on train questions only and confirmed
# on a second seed (benchmarks/leave_kinds_out_dev.py; benchmarks/strategies/README.md): 6,000 questions to
# train on, and 200 questions about 15 fields kept out of that training to choose its thresholds on. A reader
# is less sure of a kind of question it never met; thresholds chosen on kinds it knows alone then abstain on
# new kinds it reads right, and thresholds that have also seen unfamiliar questions do not.
READER_FIELD_QUESTIONS = 6000
CALIBRATION_FIELDS = 15
CALIBRATION_FIELD_QUESTIONS = 200


@dataclass
class FieldQuestionRoles:
    """Field questions split by field: some fields to train a reader on, others only to calibrate it on."""

    training: list[dict]
    calibration: list[dict]
    calibration_fields: list[str]


def field_question_roles(
    pool: Sequence[dict],
    training: int = READER_FIELD_QUESTIONS,
    calibration_fields: int = CALIBRATION_FIELDS,
    calibration: int = CALIBRATION_FIELD_QUESTIONS,
    seed: int = 0,
) -> FieldQuestionRoles:
    """`calibration_fields` fields of the pool (a seeded draw; at most half of its fields, so some are
    left to train on) give `calibration` questions spread over them; the other fields give `training`
    questions spread over them. No field gives questions to both; with no calibration questions asked,
    no field is held back from training."""
    kinds = sorted({r.get("kind", "") for r in pool})
    held = set(random.Random(seed).sample(kinds, min(calibration_fields, len(kinds) // 2))) if calibration else set()
    return FieldQuestionRoles(
        training=spread_over_kinds([r for r in pool if r.get("kind", "") not in held], training, seed),
        calibration=spread_over_kinds([r for r in pool if r.get("kind", "") in held], calibration, seed) if held else [],
        calibration_fields=sorted(held),
    )


def split_qa(items: list[QAItem], test_fraction: float = 0.2, seed: int = 0) -> tuple[list[QAItem], list[QAItem]]:
    """A seeded split, stratified by question kind so both halves cover every kind."""
    if not 0 < test_fraction < 1:
        raise TunelabError(f"test fraction {test_fraction} must be between 0 and 1", "use --test-fraction 0.2")
    rng = random.Random(seed)
    train, test = [], []
    kinds = sorted({item.kind for item in items})
    for kind in kinds:
        group = [item for item in items if item.kind == kind]
        rng.shuffle(group)
        cut = round(len(group) * test_fraction)
        test.extend(group[:cut])
        train.extend(group[cut:])
    return train, test


def write_factbook_qa(out: str | Path, test_fraction: float = 0.2, seed: int = 0) -> dict:
    """Write train.jsonl, test.jsonl, fields.jsonl (questions about the other fields, for training readers)
    and a small summary into `out`; returns the summary."""
    import json

    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise TunelabError(f"'{out}' is a file", "pass --out a folder to write train.jsonl and test.jsonl into")
    items = build_factbook_qa()
    train, test = split_qa(items, test_fraction, seed)
    fields = build_field_questions()
    for name, rows in (("train", train), ("test", test), ("fields", fields)):
        write_text(out / f"{name}.jsonl", "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in rows))
    summary = {
        "questions": len(items),
        "train": len(train),
        "test": len(test),
        "seed": seed,
        "test_fraction": test_fraction,
        "documents": len({i.doc_id for i in items}),
        "kinds": {kind: sum(1 for i in items if i.kind == kind) for kind in EXTRACTORS},
        "field_questions": {
            "questions": len(fields),
            "fields": len({i.kind for i in fields}),
            "note": "fields.jsonl: extra reader-training questions about the Factbook lines no kind above reads",
        },
    }
    write_json(out / "summary.json", summary)
    return summary


_FIELD_NAMES = {"question": "a question", "answer": "an answer", "doc_id": "a doc_id"}


def read_qa(path: str | Path, required: tuple[str, ...] = ("question", "doc_id")) -> list[dict]:
    """Rows of a QA JSONL file, each checked for the (non-empty) fields the caller needs."""
    from tunelab.data.load import read_jsonl_records

    path = Path(path).expanduser()
    if not path.is_file():
        raise TunelabError(f"QA file '{path}' not found", "build one with: tunelab data factbook-qa --out DIR")
    rows = []
    for number, row in read_jsonl_records(path):
        if any(not str(row.get(field, "")).strip() for field in required):
            needs = " and ".join(_FIELD_NAMES.get(field, field) for field in required)
            raise TunelabError(
                f"{path}:{number} needs {needs}",
                'e.g. {"question": "...", "answer": "...", "aliases": [], "doc_id": "..."} (see tunelab data factbook-qa)',
            )
        rows.append(row)
    if not rows:
        raise TunelabError(f"QA file '{path}' is empty", "build one with: tunelab data factbook-qa --out DIR")
    return rows
