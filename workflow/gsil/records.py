"""The record formats: the one documented place for every data file the stages exchange.

Every file is JSON Lines (UTF-8, one JSON object per line, no blank lines). Fields are required unless marked
optional; extra fields are allowed and kept as they are. `id` is a non-empty string, unique within its file.

==================  ==========================================================================================
kind                fields
==================  ==========================================================================================
demonstration       id, prompt: str (non-empty), response: str (non-empty)
                    SFT data and the self-play demonstrations (prepare-data).
preference          id, prompt: str (non-empty), chosen: str (non-empty), rejected: str (non-empty)
                    DPO pairs (prepare-data).
selfplay            id, prompt: str (non-empty), real: str (non-empty; the demonstration),
                    generated: str (the model's response; may be empty, and empty ones are counted)
                    written by `gsil generate`.
reference           id, positive: float, negative: float (summed response log-probs of the frozen reference
                    model, finite), positive_tokens: int >= 0, negative_tokens: int >= 0
                    written by `gsil reference-logps`; `positive`/`negative` follow the pair mapping below.
eval_generation     id, question: str (non-empty), answer: str (gold solution, ends with `#### <number>`)
                    held-out and few-shot problems (prepare-data).
eval_choice         id, question: str (non-empty), choices: list[str] (>= 2, each non-empty),
                    label: int (index into choices)
                    multiple-choice problems (prepare-data).
==================  ==========================================================================================

Pair kinds map to (positive, negative): `selfplay` -> (real, generated), `preference` -> (chosen, rejected);
`as_pairs` gives both as `Pair` objects so the trainer and the reference stage never branch on the kind.

`read_records` validates every row and fails on the first bad one with `file:line: field 'x': what was wrong`;
nothing is dropped or repaired. `write_records` validates before writing, then writes whole-or-nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from gsil.io import write_jsonl
from gsil.logutil import GsilError


class RecordError(GsilError):
    """A data row that does not match its record format (the message names file, line and field)."""


# field -> (check name, may be empty) ; checks below
_STR, _TEXT, _FLOAT, _COUNT, _CHOICES, _INT = "str", "text", "float", "count", "choices", "int"

KINDS: dict[str, dict[str, str]] = {
    "demonstration": {"id": _STR, "prompt": _STR, "response": _STR},
    "preference": {"id": _STR, "prompt": _STR, "chosen": _STR, "rejected": _STR},
    "selfplay": {"id": _STR, "prompt": _STR, "real": _STR, "generated": _TEXT},
    "reference": {
        "id": _STR, "positive": _FLOAT, "negative": _FLOAT, "positive_tokens": _COUNT, "negative_tokens": _COUNT,
    },
    "eval_generation": {"id": _STR, "question": _STR, "answer": _STR},
    "eval_choice": {"id": _STR, "question": _STR, "choices": _CHOICES, "label": _INT},
}

PAIR_FIELDS: dict[str, tuple[str, str]] = {
    "selfplay": ("real", "generated"),
    "preference": ("chosen", "rejected"),
}

_FINAL_ANSWER_LINE = re.compile(r"####\s*-?[\d,]+(?:\.\d+)?\s*$")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_value(check: str, value: Any) -> str | None:
    """None if `value` passes `check`, else what is wrong with it."""
    if check in (_STR, _TEXT):
        if not isinstance(value, str):
            return f"expected a string, got {_type_name(value)}"
        if check == _STR and not value.strip():
            return "must not be empty"
    elif check == _FLOAT:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected a number, got {_type_name(value)}"
        if not math.isfinite(value):
            return f"must be finite, got {value}"
    elif check in (_COUNT, _INT):
        if isinstance(value, bool) or not isinstance(value, int):
            return f"expected an integer, got {_type_name(value)}"
        if check == _COUNT and value < 0:
            return f"must be >= 0, got {value}"
    elif check == _CHOICES:
        if not isinstance(value, list):
            return f"expected a list of strings, got {_type_name(value)}"
        if len(value) < 2:
            return f"needs at least 2 choices, got {len(value)}"
        for i, choice in enumerate(value):
            if not isinstance(choice, str) or not choice.strip():
                return f"choice {i} must be a non-empty string, got {choice!r}"
    return None


def validate_record(row: Any, kind: str, where: str) -> dict:
    """Check one row against `kind`; `where` (e.g. 'file.jsonl:12') prefixes the error."""
    if kind not in KINDS:
        raise GsilError(f"unknown record kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not isinstance(row, dict):
        raise RecordError(f"{where}: expected a JSON object, got {_type_name(row)}")
    for name, check in KINDS[kind].items():
        if name not in row:
            raise RecordError(f"{where}: field '{name}': missing (a {kind} record needs {', '.join(KINDS[kind])})")
        problem = _check_value(check, row[name])
        if problem:
            raise RecordError(f"{where}: field '{name}': {problem}")
    if kind == "eval_choice" and not 0 <= row["label"] < len(row["choices"]):
        raise RecordError(f"{where}: field 'label': {row['label']} is not an index into {len(row['choices'])} choices")
    if kind == "eval_generation" and not _FINAL_ANSWER_LINE.search(row["answer"]):
        raise RecordError(f"{where}: field 'answer': must end with a '#### <number>' line, got {row['answer'][-40:]!r}")
    return row


def read_records(path: str | os.PathLike, kind: str) -> list[dict]:
    """All rows of a JSONL file, each validated as `kind`; ids must be unique."""
    path = Path(path)
    if kind not in KINDS:
        raise GsilError(f"unknown record kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not path.is_file():
        raise RecordError(f"{path}: no such file (expected {kind} records)")
    rows: list[dict] = []
    first_line: dict[str, int] = {}
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            where = f"{path}:{line_number}"
            if not line.strip():
                raise RecordError(f"{where}: empty line (JSON Lines files have one object per line)")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise RecordError(f"{where}: not valid JSON: {err.msg} at column {err.colno}") from None
            validate_record(row, kind, where)
            if row["id"] in first_line:
                raise RecordError(
                    f"{where}: field 'id': duplicate id {row['id']!r} (first on line {first_line[row['id']]})"
                )
            first_line[row["id"]] = line_number
            rows.append(row)
    return rows


def write_records(path: str | os.PathLike, rows: Iterable[dict], kind: str) -> int:
    """Validate every row as `kind` (unique ids included), then write the file whole-or-nothing."""
    rows = list(rows)
    seen: dict[str, int] = {}
    for index, row in enumerate(rows):
        where = f"{path} (row {index})"
        validate_record(row, kind, where)
        if row["id"] in seen:
            raise RecordError(f"{where}: field 'id': duplicate id {row['id']!r} (first at row {seen[row['id']]})")
        seen[row["id"]] = index
    return write_jsonl(path, rows)


@dataclass(frozen=True)
class Pair:
    id: str
    prompt: str
    positive: str
    negative: str


def as_pairs(rows: Iterable[dict], kind: str) -> list[Pair]:
    """(positive, negative) pairs of selfplay (real, generated) or preference (chosen, rejected) rows."""
    if kind not in PAIR_FIELDS:
        raise GsilError(f"{kind!r} is not a pair kind; expected one of {', '.join(PAIR_FIELDS)}")
    positive, negative = PAIR_FIELDS[kind]
    return [Pair(row["id"], row["prompt"], row[positive], row[negative]) for row in rows]


def normalise_whitespace(text: str) -> str:
    """Runs of whitespace collapsed to one space, ends stripped (for comparing responses, not for training)."""
    return " ".join(text.split())


def is_identical_pair(pair: Pair) -> bool:
    """Whether the negative response equals the positive one up to whitespace (SPIN's gradient is zero there)."""
    return normalise_whitespace(pair.positive) == normalise_whitespace(pair.negative)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
