"""Batch manifests: JSONL or CSV, one job per row.

A row names its inputs (`video`, `audio`, `image`), `prompt`, `negative_prompt`, `seed`, an `id`
for the output names, and config overrides: a `set` column/object, or columns named
`section.key` directly. Relative input paths are read relative to the manifest's folder.

Problems with the manifest as a whole (unreadable file, unknown column, duplicate output names)
raise SahError before any work; a problem with one row's values is kept on that row
(`Row.error`) so the batch records it in failures.jsonl and goes on.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sah import config as cfg
from sah.api import sanitize_name
from sah.errors import ConfigError, SahError

INPUT_COLUMNS = ("video", "audio", "image")
RUN_COLUMNS = ("prompt", "negative_prompt", "seed")
COLUMNS = ("id", *RUN_COLUMNS, *INPUT_COLUMNS, "set")
_DOTTED = re.compile(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)+")


@dataclass
class Row:
    """One manifest row, turned into config layers (lowest first). `error` is set when the row's
    own values are bad; such a row is recorded as failed without running."""

    number: int  # 1-based data row (JSONL: line number; CSV: row after the header)
    id: str
    name: str  # sanitised id: the output file stem
    layers: list[dict[str, Any]] = field(default_factory=list)
    fingerprint: str = ""  # hash of the row's content: a failure recorded for other content is stale
    error: str | None = None


def read_manifest(path: str | Path) -> list[Row]:
    """Parse a JSONL (`.jsonl`, `.ndjson`) or CSV manifest; other suffixes are sniffed."""
    path = Path(path)
    if not path.is_file():
        raise SahError(f"manifest {str(path)!r} does not exist" if not path.exists()
                       else f"manifest {str(path)!r} is not a file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SahError(f"manifest {str(path)!r} is not UTF-8 text: {exc}") from None
    suffix = path.suffix.lower()
    is_jsonl = suffix in (".jsonl", ".ndjson") or (suffix != ".csv" and text.lstrip().startswith("{"))
    records = _jsonl_records(path, text) if is_jsonl else _csv_records(path, text)
    if not records:
        raise SahError(f"manifest {str(path)!r} has no rows")
    rows = [_row(number, record, path.parent.resolve(), from_csv=not is_jsonl) for number, record in records]
    _check_names(path, rows)
    return rows


def _jsonl_records(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SahError(f"{path}:{number}: not valid JSON: {exc.msg}") from None
        if not isinstance(record, dict):
            raise SahError(f"{path}:{number}: each line must be a JSON object, got {type(record).__name__}")
        _check_columns(path, number, record)
        records.append((number, record))
    return records


def _csv_records(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames:
        return []
    header = {name: name.strip() for name in reader.fieldnames}
    _check_columns(path, 1, {name: None for name in header.values()})
    records = []
    for record in reader:
        if None in record:  # more cells than header columns
            raise SahError(f"{path}:{reader.line_num}: more cells than the header has columns")
        cleaned = {header[k]: v for k, v in record.items() if v is not None and v.strip() != ""}
        if cleaned:
            records.append((reader.line_num, cleaned))
    return records


def _check_columns(path: Path, number: int, record: dict[str, Any]) -> None:
    # An unknown column is most likely a typo ("promt") that would silently change every row.
    for key in record:
        if key not in COLUMNS and not _DOTTED.fullmatch(key):
            raise SahError(f"{path}:{number}: unknown column {key!r} (columns: {', '.join(COLUMNS)}, "
                           f"or a config key as section.key)")


def _row(number: int, record: dict[str, Any], base: Path, from_csv: bool) -> Row:
    raw_id = record.get("id")
    row_id = str(raw_id).strip() if raw_id is not None and str(raw_id).strip() else f"row-{number:05d}"
    row = Row(number, row_id, sanitize_name(row_id))
    row.fingerprint = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]
    try:
        row.layers = _layers(record, base, from_csv)
    except SahError as exc:
        row.error = str(exc)
    return row


def _layers(record: dict[str, Any], base: Path, from_csv: bool) -> list[dict[str, Any]]:
    fields: dict[str, dict[str, Any]] = {}
    for key in RUN_COLUMNS:
        if key in record:
            value = record[key]
            if key == "seed":
                value = _seed(value)
            elif not isinstance(value, str):
                raise ConfigError(f"column {key!r} must be a string, got {value!r}")
            fields.setdefault("run", {})[key] = value
    for key in INPUT_COLUMNS:
        if key in record:
            if not isinstance(record[key], str):
                raise ConfigError(f"column {key!r} must be a file path, got {record[key]!r}")
            fields.setdefault("input", {})[key] = _input_path(record[key], base)
    layers = [fields] if fields else []
    for key, value in record.items():
        if _DOTTED.fullmatch(key):
            layers.append(cfg.parse_set(f"{key}={value}") if from_csv else _nest(key, value))
    if "set" in record:
        layers.extend(_set_layers(record["set"]))
    for layer in layers:
        output = layer.get("output", {})
        if isinstance(output, dict) and ({"dir", "name"} & set(output)):
            raise ConfigError("output.dir and output.name are set by sah batch (--out and the row id)")
    return layers


def _seed(value: Any) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ConfigError(f"column 'seed' must be a non-negative integer, got {value!r}")


def _input_path(value: str, base: Path) -> str:
    path = Path(os.path.expanduser(value.strip()))
    return str(path if path.is_absolute() else base / path)


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in reversed(dotted.split(".")):
        out = {part: value if not out else out}
    return out


def _set_layers(value: Any) -> list[dict[str, Any]]:
    """`set` as a table (`{"guidance": {"lr": 0.1}}` or `{"guidance.lr": 0.1}`), a list of
    `section.key=value` strings, or one string of them separated by `;`."""
    if isinstance(value, dict):
        return [_nest(k, v) if _DOTTED.fullmatch(k) else {k: v} for k, v in value.items()]
    items = value.split(";") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ConfigError(f"'set' must be a table, a list of section.key=value strings or one such string "
                          f"separated by ';', got {value!r}")
    return [cfg.parse_set(item) for item in items if item.strip()]


def _check_names(path: Path, rows: list[Row]) -> None:
    # casefold: on case-insensitive filesystems "Dog" and "dog" are the same file.
    seen: dict[str, Row] = {}
    for row in rows:
        key = row.name.casefold()
        if key in seen:
            first = seen[key]
            raise SahError(f"{path}: rows {first.number} (id {first.id!r}) and {row.number} (id {row.id!r}) "
                           f"would both write outputs named {row.name!r}; give them distinct ids")
        seen[key] = row
