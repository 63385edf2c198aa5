"""Record formats: valid files round-trip; every malformed row fails naming file, line and field."""

from __future__ import annotations

import hashlib
import json

import pytest

from gsil import records as rec
from gsil.records import Pair, RecordError

VALID = {
    "demonstration": {"id": "a", "prompt": "p", "response": "r"},
    "preference": {"id": "a", "prompt": "p", "chosen": "c", "rejected": "r"},
    "selfplay": {"id": "a", "prompt": "p", "real": "r", "generated": ""},
    "reference": {"id": "a", "positive": -1.5, "negative": -3, "positive_tokens": 4, "negative_tokens": 0},
    "eval_generation": {"id": "a", "question": "q", "answer": "2 + 2 = 4\n#### 4"},
    "eval_choice": {"id": "a", "question": "q", "choices": ["x", "y"], "label": 1},
}


def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", sorted(VALID))
def test_round_trip_keeps_extra_fields(tmp_path, kind):
    rows = [dict(VALID[kind], id=f"r{i}", extra={"k": i}) for i in range(3)]
    path = tmp_path / f"{kind}.jsonl"
    assert rec.write_records(path, rows, kind) == 3
    assert rec.read_records(path, kind) == rows


# (kind, bad row, field named in the error, words in the error)
BAD_ROWS = [
    ("demonstration", {"id": "a", "prompt": "p"}, "response", "missing"),
    ("demonstration", {"id": "a", "prompt": "p", "response": "  "}, "response", "must not be empty"),
    ("demonstration", {"id": 3, "prompt": "p", "response": "r"}, "id", "expected a string, got int"),
    ("preference", {"id": "a", "prompt": "p", "chosen": "c", "rejected": None}, "rejected", "got null"),
    ("selfplay", {"id": "a", "prompt": "p", "real": "r", "generated": 5}, "generated", "expected a string"),
    ("reference", dict(VALID["reference"], positive="1.0"), "positive", "expected a number, got str"),
    ("reference", dict(VALID["reference"], negative=float("nan")), "negative", "finite"),
    ("reference", dict(VALID["reference"], positive_tokens=-1), "positive_tokens", ">= 0"),
    ("reference", dict(VALID["reference"], negative_tokens=True), "negative_tokens", "expected an integer"),
    ("reference", dict(VALID["reference"], positive_tokens=2.0), "positive_tokens", "expected an integer"),
    ("eval_generation", dict(VALID["eval_generation"], answer="it is 4"), "answer", "####"),
    ("eval_choice", dict(VALID["eval_choice"], choices=["only"]), "choices", "at least 2"),
    ("eval_choice", dict(VALID["eval_choice"], choices=["x", ""]), "choices", "choice 1"),
    ("eval_choice", dict(VALID["eval_choice"], choices="xy"), "choices", "expected a list"),
    ("eval_choice", dict(VALID["eval_choice"], label=2), "label", "not an index"),
]


@pytest.mark.parametrize(("kind", "row", "field", "words"), BAD_ROWS)
def test_bad_row_names_file_line_and_field(tmp_path, kind, row, field, words):
    path = _write_lines(tmp_path / "data.jsonl", [json.dumps(VALID[kind]).replace('"a"', '"ok"', 1), json.dumps(row)])
    with pytest.raises(RecordError) as err:
        rec.read_records(path, kind)
    message = str(err.value)
    assert message.startswith(f"{path}:2: field '{field}'"), message
    assert words in message


def test_invalid_json_names_line(tmp_path):
    path = _write_lines(tmp_path / "d.jsonl", [json.dumps(VALID["demonstration"]), '{"id": "b", "prompt": '])
    with pytest.raises(RecordError, match=r"d\.jsonl:2: not valid JSON"):
        rec.read_records(path, "demonstration")


def test_non_object_and_blank_lines(tmp_path):
    path = _write_lines(tmp_path / "d.jsonl", ['["a", "b"]'])
    with pytest.raises(RecordError, match=r"d\.jsonl:1: expected a JSON object, got list"):
        rec.read_records(path, "demonstration")
    path = _write_lines(tmp_path / "e.jsonl", [json.dumps(VALID["demonstration"]), ""])
    with pytest.raises(RecordError, match=r"e\.jsonl:2: empty line"):
        rec.read_records(path, "demonstration")


def test_duplicate_id_names_both_lines(tmp_path):
    row = json.dumps(VALID["demonstration"])
    other = json.dumps(dict(VALID["demonstration"], id="b"))
    path = _write_lines(tmp_path / "d.jsonl", [row, other, row])
    with pytest.raises(RecordError, match=r"d\.jsonl:3: field 'id': duplicate id 'a' \(first on line 1\)"):
        rec.read_records(path, "demonstration")


def test_missing_file_and_unknown_kind(tmp_path):
    with pytest.raises(RecordError, match="no such file"):
        rec.read_records(tmp_path / "nope.jsonl", "demonstration")
    with pytest.raises(rec.GsilError, match="unknown record kind"):
        rec.read_records(tmp_path / "nope.jsonl", "prompt-ish")


def test_write_refuses_bad_rows_and_writes_nothing(tmp_path):
    path = tmp_path / "out.jsonl"
    with pytest.raises(RecordError, match=r"out\.jsonl \(row 1\): field 'response': missing"):
        rec.write_records(path, [VALID["demonstration"], {"id": "b", "prompt": "p"}], "demonstration")
    with pytest.raises(RecordError, match="duplicate id 'a'"):
        rec.write_records(path, [VALID["demonstration"], VALID["demonstration"]], "demonstration")
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_as_pairs_maps_positive_and_negative():
    selfplay = [dict(VALID["selfplay"], real="gold", generated="mine")]
    preference = [dict(VALID["preference"], chosen="good", rejected="bad")]
    assert rec.as_pairs(selfplay, "selfplay") == [Pair("a", "p", "gold", "mine")]
    assert rec.as_pairs(preference, "preference") == [Pair("a", "p", "good", "bad")]
    with pytest.raises(rec.GsilError, match="not a pair kind"):
        rec.as_pairs([VALID["demonstration"]], "demonstration")


def test_identical_pairs_up_to_whitespace():
    assert rec.normalise_whitespace("  a\n\tb  c ") == "a b c"
    assert rec.is_identical_pair(Pair("i", "p", "The answer\n#### 4", "The  answer #### 4 "))
    assert not rec.is_identical_pair(Pair("i", "p", "#### 4", "#### 5"))


def test_file_sha256(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"gsil" * 1000)
    assert rec.file_sha256(path) == hashlib.sha256(b"gsil" * 1000).hexdigest()
