"""Instruction data: rows in one of three shapes, read and checked before anything expensive.

{"prompt": ..., "response": ...}            one exchange (optional "system"; "completion" = "response")
{"messages": [{"role", "content"}, ...]}    a chat; the loss is on the assistant turns
{"text": ...}                               plain text; the loss is on every token
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.data.load import read_raw
from tunelab.errors import TunelabError, did_you_mean

ROLES = ("system", "user", "assistant")


@dataclass
class InstructionData:
    format: str
    rows: list[dict[str, Any]]  # {"messages": [...]} or {"text": ...}
    source: str
    dropped: dict[str, int] = field(default_factory=dict)


def load_instructions(source: str | os.PathLike, format: str = "auto", encoding: str = "utf-8") -> InstructionData:
    """Read `source` and normalise every row to {"messages"} (chat shapes) or {"text"}."""
    path = Path(source).expanduser()
    records = _read_records(path, encoding)
    if not records:
        raise TunelabError(f"{path} holds no rows", "give at least a few examples")
    chosen = _detect_format(records[0], path) if format == "auto" else format
    rows, dropped = [], {"empty": 0}
    for number, record in enumerate(records, start=1):
        row = _normalise(record, chosen, number, path)
        if row is None:
            dropped["empty"] += 1
        else:
            rows.append(row)
    if not rows:
        raise TunelabError(f"every row of {path} is empty", "fill in the prompts/responses or texts")
    return InstructionData(chosen, rows, str(path), dropped)


def _read_records(path: Path, encoding: str) -> list[dict[str, Any]]:
    """The file's rows as dicts, read by the one reader of data files (data.load.read_raw: a CSV's
    delimiter detected, a broken JSONL line named by its number). A key a JSON row leaves out is
    absent from its dict (pandas fills it with NaN), so that row is named as lacking it."""
    if not path.exists():
        raise TunelabError(f"data file '{path}' does not exist", "check the path")
    frame = read_raw(path, encoding, keep_default_na=False)  # a CSV answer "None" or "NA" is an answer
    columns = [str(column) for column in frame.columns]
    return [{key: value for key, value in zip(columns, row) if not _absent(value)} for row in frame.itertuples(index=False, name=None)]


def _absent(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _detect_format(first: dict[str, Any], path: Path) -> str:
    keys = set(first)
    if "messages" in keys:
        return "messages"
    if "prompt" in keys and ({"response", "completion"} & keys):
        return "prompt-response"
    if "text" in keys:
        return "text"
    expected = ["prompt", "response", "messages", "text"]
    near = next((did_you_mean(k, expected) for k in sorted(keys) if did_you_mean(k, expected)), "")
    raise TunelabError(
        f"cannot tell the format of {path}: its rows have keys {', '.join(sorted(keys)) or '(none)'}",
        near or "rows need 'prompt' and 'response', or 'messages', or 'text'",
    )


def _normalise(record: dict[str, Any], format: str, number: int, path: Path) -> dict[str, Any] | None:
    where = f"{path.name} row {number}"
    if format == "text":
        text = _field(record, "text", where)
        return {"text": text} if text.strip() else None
    if format == "prompt-response":
        prompt = _field(record, "prompt", where)
        response = _field(record, "completion" if "response" not in record and "completion" in record else "response", where)
        if not prompt.strip() or not response.strip():
            return None
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        system = record.get("system")
        if isinstance(system, str) and system.strip():
            messages.insert(0, {"role": "system", "content": system})
        return {"messages": messages}
    messages = record.get("messages")
    if isinstance(messages, str):  # CSV cells hold the list as a JSON string
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError:
            raise TunelabError(f"{where}: 'messages' is not a JSON list", 'write it as [{"role": "user", "content": "..."}, ...]') from None
    if messages is None:
        raise TunelabError(f"{where} has no 'messages'", "every row needs the same format as the first row")
    return _check_messages(messages, where)


def _field(record: dict[str, Any], key: str, where: str) -> str:
    if key not in record:
        hint = did_you_mean(key, record)
        raise TunelabError(f"{where} has no '{key}'; its keys are: {', '.join(map(str, record))}", hint or "every row needs the same format as the first row")
    value = record[key]
    if value is None:  # a null cell of a Parquet file
        return ""
    return str(value)


def _check_messages(messages: Any, where: str) -> dict[str, Any] | None:
    if not isinstance(messages, list) or not messages:
        raise TunelabError(
            f"{where}: 'messages' must be a non-empty list", 'e.g. [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]'
        )
    clean = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise TunelabError(f"{where}: message {i} needs 'role' and 'content'", '{"role": "user", "content": "..."}')
        role = message["role"]
        if role not in ROLES:
            hint = did_you_mean(str(role), ROLES)
            raise TunelabError(f"{where}: message {i} has role '{role}'", hint or f"roles are: {', '.join(ROLES)}")
        clean.append({"role": role, "content": "" if message["content"] is None else str(message["content"])})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in clean):
        return None  # nothing to learn from
    return {"messages": clean}


def prompt_of(row: dict[str, Any]) -> tuple[list[dict[str, str]] | str, str]:
    """(what the model is asked, the reference answer) for the sample generations of the report."""
    if "messages" in row:
        messages = row["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        return messages[:last], messages[last]["content"]
    text = row["text"]
    cut = max(1, len(text) // 2)  # continue the first half of a plain text
    cut = text.rfind(" ", 0, cut) if " " in text[:cut] else cut
    return text[:cut], text[cut:]
