"""`gsil align` from the CLI: a full run's outputs, and bad inputs that fail before training."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from gsil.cli import main  # noqa: E402
from gsil.io import read_json, write_json  # noqa: E402
from gsil.records import write_records  # noqa: E402
from helpers import (MAX_LENGTH, MAX_PROMPT, PAIR_METRIC_KEYS, PREFERENCE_METRIC_KEYS, align_args,  # noqa: E402
                     pair_rows)

# `scored` (a selfplay file with two identical pairs and its reference file) and `tiny_model_dir`: tests/conftest.py.


def test_align_cli_trains_saves_and_counts_identical_pairs(tiny_model_dir, scored, tmp_path, capsys):
    pairs, reference = scored
    assert main(align_args(tiny_model_dir, pairs, reference, tmp_path, "--drop-identical-pairs")) == 0
    assert "10 read, 8 kept, 2 identical dropped" in capsys.readouterr().err
    model = tmp_path / "model"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "training_config.json", "run_info.json"):
        assert (model / name).is_file(), name
    config = read_json(model / "training_config.json")
    assert config["loss"] == "logistic" and config["counts"]["dropped_identical"] == 2 and config["examples"] == 8
    assert config["layout"]["accumulation_steps"] == 1 and config["total_steps"] == 2
    assert config["pair_layout"] == "shared-prompt" and config["attention_implementation"] == "eager"
    assert read_json(model / "run_info.json")["settings"]["drop_identical_pairs"] is True
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(PAIR_METRIC_KEYS <= set(r) for r in rows)
    assert not any("rewards/chosen" in r or "rewards/rejected" in r for r in rows)  # self-play: the paper's words
    assert not (tmp_path / "model.checkpoint").exists()


def test_dpo_on_preference_pairs_logs_chosen_and_rejected(tiny_model_dir, tmp_path):
    """A preference run's metrics use TRL's words, rewards/chosen and rewards/rejected, and no rewards/real."""
    pairs = tmp_path / "preferences.jsonl"
    write_records(pairs, [{"id": r["id"], "prompt": r["prompt"], "chosen": r["real"], "rejected": r["generated"]}
                          for r in pair_rows(4)], "preference")
    reference = tmp_path / "ref.jsonl"
    assert main(["reference-logps", "--model", str(tiny_model_dir), "--pairs", str(pairs), "--kind", "preference",
                 "--output", str(reference), "--max-length", str(MAX_LENGTH),
                 "--max-prompt-length", str(MAX_PROMPT)]) == 0
    args = align_args(tiny_model_dir, pairs, reference, tmp_path)
    args[args.index("--kind") + 1] = "preference"
    args[args.index("--loss") + 1] = "dpo"
    assert main(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(PREFERENCE_METRIC_KEYS <= set(r) for r in rows)
    for row in rows:
        assert not {"rewards/real", "rewards/generated", "loss/real", "logps/real"} & set(row)
        assert row["rewards/margin"] == pytest.approx(row["rewards/chosen"] - row["rewards/rejected"], abs=1e-5)


def test_changed_pair_file_fails_before_training(tiny_model_dir, scored, tmp_path, capsys):
    pairs, reference = scored
    changed = tmp_path / "selfplay.jsonl"
    changed.write_text(pairs.read_text().replace("Maybe 0.", "Maybe zero."))
    assert main(align_args(tiny_model_dir, changed, reference, tmp_path)) == 1
    err = capsys.readouterr().err
    assert "sha256" in err and "reference-logps" in err
    assert not (tmp_path / "metrics.jsonl").exists()


def test_other_tokenization_settings_fail_before_training(tiny_model_dir, scored, tmp_path, capsys):
    pairs, reference = scored
    args = align_args(tiny_model_dir, pairs, reference, tmp_path)
    args[args.index("--max-length") + 1] = str(MAX_LENGTH + 8)
    assert main(args) == 1
    assert "max_length" in capsys.readouterr().err
    assert not (tmp_path / "metrics.jsonl").exists()


def test_missing_reference_row_and_missing_meta_are_named(tiny_model_dir, scored, tmp_path, capsys):
    from gsil.logutil import GsilError
    from gsil.training.reference import attach_reference

    pairs, reference = scored
    rows = [json.loads(line) for line in reference.read_text().splitlines()]
    with pytest.raises(GsilError, match="no reference row for pair id 'q4'"):
        attach_reference([type("E", (), {"id": "q4"})()], [r for r in rows if r["id"] != "q4"],
                         reference_path=reference)
    # a reference file whose rows lack one id: its meta's id digest no longer matches the pair file
    partial = tmp_path / "partial.jsonl"
    write_records(partial, [r for r in rows if r["id"] != "q4"], "reference")
    meta = read_json(reference.with_name("ref.meta.json"))
    from gsil.training.reference import ids_digest

    write_json(tmp_path / "partial.meta.json", {**meta, "ids_sha256": ids_digest([r["id"] for r in rows
                                                                                  if r["id"] != "q4"])})
    assert main(align_args(tiny_model_dir, pairs, partial, tmp_path)) == 1
    assert "ids it scored differ" in capsys.readouterr().err
    (tmp_path / "partial.meta.json").unlink()
    assert main(align_args(tiny_model_dir, pairs, partial, tmp_path)) == 1
    assert "partial.meta.json is missing" in capsys.readouterr().err


def test_unknown_loss_is_refused(tiny_model_dir, scored, tmp_path, capsys):
    pairs, reference = scored
    args = align_args(tiny_model_dir, pairs, reference, tmp_path)
    args[args.index("--loss") + 1] = "nonsense"
    assert main(args) == 1
    assert "unknown loss 'nonsense'" in capsys.readouterr().err


def test_reference_of_another_layout_or_attention_is_warned_about(tiny_model_dir, scored, tmp_path, capsys):
    pairs, _ = scored
    reference = tmp_path / "ref.jsonl"
    assert main(["reference-logps", "--model", str(tiny_model_dir), "--pairs", str(pairs), "--kind", "selfplay",
                 "--output", str(reference), "--max-length", str(MAX_LENGTH), "--max-prompt-length", str(MAX_PROMPT),
                 "--pair-layout", "separate", "--attention", "sdpa"]) == 0
    assert read_json(tmp_path / "ref.meta.json")["pair_layout"] == "separate"
    assert main(align_args(tiny_model_dir, pairs, reference, tmp_path, "--max-steps", "1")) == 0
    err = capsys.readouterr().err
    assert "pair_layout=separate but the policy trains with shared-prompt" in err
    assert "attention_implementation=sdpa but the policy trains with eager" in err


def test_first_row_records_the_start_gap_which_is_zero_with_a_matching_reference(tiny_model_dir, scored, tmp_path):
    pairs, reference = scored
    assert main(align_args(tiny_model_dir, pairs, reference, tmp_path, "--start-gap", "fail")) == 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert abs(rows[0]["start_gap"]) < 1e-3 and rows[0]["start_gap_se"] >= 0
    assert all("start_gap" not in row for row in rows[1:])  # later steps have moved the weights


def offset_reference(reference, folder, nats: float):
    """A copy of `reference` (and its metadata) with every log-prob raised by `nats`: a reference that does not
    describe the starting weights, though its metadata all match."""
    shifted = folder / "shifted.jsonl"
    rows = [json.loads(line) for line in reference.read_text().splitlines()]
    write_records(shifted, [{**r, "positive": r["positive"] + nats, "negative": r["negative"] + nats} for r in rows],
                  "reference")
    write_json(folder / "shifted.meta.json", read_json(reference.with_name("ref.meta.json")))
    return shifted


def test_a_reference_off_the_starting_weights_warns_by_default_and_fails_when_asked(tiny_model_dir, scored,
                                                                                     tmp_path, capsys):
    pairs, reference = scored
    shifted = offset_reference(reference, tmp_path, 2.0)
    warned = tmp_path / "warn"
    assert main(align_args(tiny_model_dir, pairs, shifted, warned)) == 0
    err = capsys.readouterr().err
    assert "Δ does not start at 0" in err and str(shifted) in err and "rewards start at -0.2" in err
    first = json.loads((warned / "metrics.jsonl").read_text().splitlines()[0])
    assert first["start_gap"] == pytest.approx(-2.0, abs=1e-3)
    failed = tmp_path / "fail"
    assert main(align_args(tiny_model_dir, pairs, shifted, failed, "--start-gap", "fail")) == 1
    err = capsys.readouterr().err
    assert "-2.000 nats per sequence" in err and "--start-gap warn trains anyway" in err
    assert not (failed / "model").exists()
