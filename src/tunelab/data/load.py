"""Reading a data source into a DataFrame with `text` and `label` columns, validated early.

A source is a built-in dataset name, a CSV/TSV/JSONL/JSON/Parquet file, or a folder written by
`datasets.save_to_disk`. Mistakes are named precisely, scikit-learn style.
A CSV's delimiter (',' ';' tab '|') is detected unless given; a TSV's is a tab.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from tunelab.config import DELIMITERS, LabelledColumns, delimiter_value
from tunelab.data.builtin import BUILTIN
from tunelab.errors import TunelabError, did_you_mean
from tunelab.textpairs import PAIR_COLUMN

FILE_FORMATS = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
_SNIFF_CHARS = 64 * 1024  # the first lines are enough to tell the delimiter


def load_source(
    source: str | os.PathLike,
    text_col: str = "text",
    label_col: str | None = "label",
    encoding: str = "utf-8",
    strict: bool = False,
    delimiter: str | None = None,
    text_pair_col: str | None = None,
) -> pd.DataFrame:
    """Load `source` as a DataFrame with columns `text` and (unless label_col is None) `label`;
    with text_pair_col, also `text_pair` (each row's second text, for pair classification).

    Labels become strings (label names). Rows with an empty or missing text or label are dropped
    and counted in `frame.attrs["dropped"]`, or refused with `strict`. `delimiter` applies to
    csv/tsv files; by default it is detected (see `detect_delimiter`).
    """
    raw = read_raw(source, encoding, delimiter)
    name = str(source)
    columns = [str(c) for c in raw.columns]
    raw.columns = columns
    require_columns(raw, name, {"text": text_col, "text-pair": text_pair_col, "label": label_col})
    frame = pd.DataFrame({"text": raw[text_col]})
    if text_pair_col is not None:
        frame[PAIR_COLUMN] = raw[text_pair_col]
    if label_col is not None:
        frame["label"] = _label_names(raw[label_col])
    return drop_missing(frame, name, strict)


def load_labelled(source: str | os.PathLike, columns: LabelledColumns) -> pd.DataFrame:
    """`source` read as `columns` says (training's data settings, `tunelab update`'s): load_source with its settings."""
    return load_source(source, columns.text_col, columns.label_col, columns.encoding, columns.strict, columns.delimiter, columns.text_pair_col)


def require_columns(raw: pd.DataFrame, name: str, columns: dict[str, str | None]) -> None:
    """Each role's column (role -> column name; None: not wanted) must be in `raw`; a missing one is named with the nearest."""
    present = [str(c) for c in raw.columns]
    for role, column in columns.items():
        if column is not None and column not in present:
            hint = _split_by_another_delimiter(column, present) or did_you_mean(column, present)
            raise TunelabError(
                f"{role} column '{column}' not found in {name}; columns are: {', '.join(present)}",
                hint or f"choose it with --{role}-col",
            )


def read_raw(source: str | os.PathLike, encoding: str = "utf-8", delimiter: str | None = None, keep_default_na: bool = True) -> pd.DataFrame:
    """The rows of a built-in dataset, file or save_to_disk folder, with the source's own columns.

    keep_default_na is pandas' own: True reads a CSV's empty cells and strings such as 'NA' or
    'null' as missing; False keeps every cell as written (empty cells become ''), for data whose
    texts may say "None".
    """
    text = str(source)
    if text in BUILTIN:
        return BUILTIN[text].load()
    path = Path(text).expanduser()
    if not path.exists():
        hint = did_you_mean(text, BUILTIN)
        raise TunelabError(
            f"data source '{text}' is neither a file nor a built-in dataset",
            hint or f"check the path, or use a built-in one: {', '.join(BUILTIN)} (`tunelab data list`)",
        )
    if path.is_dir():
        return _read_hf_folder(path)
    try:
        delimiter = delimiter_value(delimiter)
    except ValueError:
        raise TunelabError(f"unsupported delimiter {delimiter!r}", "use one of , ; | or tab") from None
    suffix = path.suffix.lower()
    kind = suffix[1:].upper()
    try:
        if suffix in (".csv", ".tsv"):
            if delimiter is None:
                delimiter = "\t" if suffix == ".tsv" else detect_delimiter(path, encoding)
            kind = f"{kind} with delimiter {_shown(delimiter)}"
            return pd.read_csv(path, sep=delimiter, encoding=encoding, keep_default_na=keep_default_na)
        if suffix == ".jsonl":
            return _read_jsonl(path, encoding)
        if suffix == ".json":
            return _read_json(path, encoding)
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except UnicodeDecodeError as error:
        raise TunelabError(
            f"{path} is not readable as {encoding} (byte {error.object[error.start : error.start + 1]!r} at position {error.start})",
            "re-save the file as UTF-8 or pass its encoding, e.g. --encoding latin-1",
        ) from None
    except pd.errors.EmptyDataError:
        raise TunelabError(f"{path} is empty", "give a file with a header row and at least two rows") from None
    except (ValueError, pd.errors.ParserError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TunelabError(f"cannot parse {path} as {kind}: {first_line}", "check the file's format") from None
    raise TunelabError(
        f"unsupported file type '{suffix or path.name}' for {path}",
        f"use one of {', '.join(FILE_FORMATS)} or a folder saved by datasets.save_to_disk",
    )


def detect_delimiter(path: str | os.PathLike, encoding: str = "utf-8") -> str:
    """The delimiter of a CSV file: one of ',' ';' tab '|', told from its first lines.

    A delimiter must split the header, so only those found in it are candidates (none: a
    single column, read with ','; one: that one). Between several, csv.Sniffer decides from
    quoting and from how regularly each splits the lines; when it cannot, the file is ambiguous
    and the user is asked to name the delimiter.
    """
    with open(path, encoding=encoding, newline="") as handle:
        sample = handle.read(_SNIFF_CHARS)
    if len(sample) == _SNIFF_CHARS and "\n" in sample:
        sample = sample[: sample.rindex("\n") + 1]  # whole lines only
    header = next((line for line in sample.splitlines() if line.strip()), "")
    candidates = [d for d in DELIMITERS if d in header]
    if len(candidates) <= 1:
        return candidates[0] if candidates else ","
    try:
        return csv.Sniffer().sniff(sample, delimiters="".join(candidates)).delimiter
    except csv.Error:
        likely = max(candidates, key=sample.count)
        others = " or ".join(_shown(d) for d in candidates if d != likely)
        raise TunelabError(
            f"{path} looks {_shown(likely)}-separated, but its lines split irregularly on {_shown(likely)} and on {others}",
            _set_delimiter(likely),
        ) from None


def _split_by_another_delimiter(column: str, columns: list[str]) -> str:
    """A hint when the wanted column is part of a column name that another delimiter would split."""
    for d in DELIMITERS:
        if any(d in name and column in (part.strip() for part in name.split(d)) for name in columns):
            return f"the file looks {_shown(d)}-separated: {_set_delimiter(d)}"
    return ""


def _shown(delimiter: str) -> str:
    """A delimiter as written in messages, and as the --delimiter flag takes it."""
    return "tab" if delimiter == "\t" else f"'{delimiter}'"


def _set_delimiter(delimiter: str) -> str:
    return f"set the delimiter with --delimiter {_shown(delimiter)} (delimiter: {_shown(delimiter)} in a config file)"


def _read_jsonl(path: Path, encoding: str) -> pd.DataFrame:
    records = [record for _, record in read_jsonl_records(path, encoding)]
    if not records:
        raise TunelabError(f"{path} is empty", "write one JSON object per line, with at least two lines")
    return pd.DataFrame.from_records(records)


def read_jsonl_records(path: Path, encoding: str = "utf-8") -> list[tuple[int, dict]]:
    """(line number, object) for each line of a JSONL file; blank lines are skipped, a broken line is
    named by its number."""
    records = []
    with open(path, encoding=encoding) as handle:
        for number, line in enumerate(handle, start=1):
            line = line.lstrip("\ufeff") if number == 1 else line
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise TunelabError(
                    f"{path} line {number} is not valid JSON: {error.msg} (column {error.colno})",
                    "fix that line: each line holds one JSON object",
                ) from None
            if not isinstance(record, dict):
                raise TunelabError(
                    f"{path} line {number} is a JSON {_json_kind(record)}, not an object",
                    'write one object per line, e.g. {"text": "...", "label": "..."}',
                )
            records.append((number, record))
    return records


def _json_kind(value) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def _read_json(path: Path, encoding: str) -> pd.DataFrame:
    data = json.loads(path.read_text(encoding=encoding))
    if isinstance(data, dict):
        # {"data": [...]} or {"train": [...]} wrappers, or a dict of columns.
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1 and lists[0] and isinstance(lists[0][0], dict):
            data = lists[0]
    return pd.DataFrame(data)


def _read_hf_folder(path: Path) -> pd.DataFrame:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise TunelabError(
            f"folder {path} is not a dataset saved by datasets.save_to_disk",
            "pass a data file (csv, tsv, jsonl, json, parquet) or a save_to_disk folder",
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        split = "train" if "train" in loaded else next(iter(loaded))
        loaded = loaded[split]
    frame = loaded.to_pandas()
    # ClassLabel columns hold ints; give them back their names.
    for column, feature in loaded.features.items():
        if isinstance(feature, datasets.ClassLabel):
            frame[column] = [feature.int2str(int(v)) if pd.notna(v) else None for v in frame[column]]
    return frame


def _label_names(values: pd.Series) -> pd.Series:
    """Labels as strings; integral floats (1.0, from a column with NaNs) become '1'."""

    def name(value):
        if is_missing(value):
            return None
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        text = str(value).strip()
        return text or None

    return values.map(name)


def is_missing(value: Any) -> bool:
    """An empty cell as pandas hands it over: None, NaN or pd.NA (one cell; `Series.isna` for a column)."""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def drop_missing(frame: pd.DataFrame, name: str, strict: bool, label_col: str = "label") -> pd.DataFrame:
    """Rows with an empty text (either text of a pair) or a missing label dropped and counted in attrs["dropped"], or refused with `strict`."""
    text_columns = [column for column in ("text", PAIR_COLUMN) if column in frame]
    empty_text = pd.Series(False, index=frame.index)
    for column in text_columns:
        empty_text |= frame[column].isna() | frame[column].map(lambda t: not str(t).strip())
    no_label = frame[label_col].isna() if label_col in frame else pd.Series(False, index=frame.index)
    dropped = {"empty_text": int(empty_text.sum()), "missing_label": int((no_label & ~empty_text).sum())}
    if strict and (dropped["empty_text"] or dropped["missing_label"]):
        raise TunelabError(
            f"{name} has {dropped['empty_text']} rows with an empty or missing text and {dropped['missing_label']} with a missing label",
            "clean those rows, or drop --strict to have them dropped and counted",
        )
    kept = frame[~(empty_text | no_label)].copy()
    for column in text_columns:
        kept[column] = kept[column].astype(str)
    kept = kept.reset_index(drop=True)
    kept.attrs["dropped"] = dropped
    kept.attrs["source"] = name
    return kept
