"""Paper dataset loaders on small local files shaped like the Hub datasets (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gsil import paper_data
from gsil.cli import main
from gsil.records import read_records

SHAPES = Path(__file__).parent / "data" / "paper_shapes"
ULTRAFEEDBACK = SHAPES / "ultrafeedback_binarized_train_prefs.jsonl"
SPIN = SHAPES / "spin_iter0_train.jsonl"


def test_ultrafeedback_demonstrations_take_the_chosen_assistant_turn():
    rows, info = paper_data.load_ultrafeedback_demonstrations(str(ULTRAFEEDBACK))
    assert [(r["prompt"], r["response"]) for r in rows] == [
        ("What is 2+2?", "2+2 equals 4."),
        ("Name a primary colour.", "Red is a primary colour."),
    ]
    # the third row's chosen answer is empty: skipped on purpose, and counted
    assert info["skipped_empty_response"] == 1 and info["records"] == 2 and info["rows_in_source"] == 3
    assert info["source"] == "local" and len(info["sha256"]) == 64
    assert [r["id"] for r in rows] == ["uf-000000", "uf-000001"]


def test_ultrafeedback_preferences():
    rows, info = paper_data.load_ultrafeedback_preferences(str(ULTRAFEEDBACK))
    assert [(r["chosen"], r["rejected"]) for r in rows] == [
        ("2+2 equals 4.", "It is 5."), ("Red is a primary colour.", "Green, always."),
    ]
    assert rows[0]["score_chosen"] == 9.0 and info["skipped_empty_response"] == 1


def test_spin_demonstrations_take_the_real_conversation():
    rows, info = paper_data.load_spin_demonstrations(str(SPIN))
    assert rows[0]["prompt"] == "Write a haiku about rain."
    assert rows[0]["response"].startswith("Soft rain on the roof")
    assert rows[1] == {"id": "spin-000001", "prompt": "Give one tip for studying.",
                       "response": "Study in short sessions with breaks."}
    assert info["records"] == 2 and info["skipped_empty_response"] == 0


def test_limit_reads_a_prefix():
    rows, info = paper_data.load_spin_demonstrations(str(SPIN), limit=1)
    assert len(rows) == 1 and info["rows_read"] == 1 and info["rows_in_source"] == 2


def test_malformed_row_names_row_and_field():
    with pytest.raises(paper_data.PaperDataError, match=r"ultrafeedback_malformed\.jsonl row 1: field 'chosen': "
                                                        r"needs at least 2 messages"):
        paper_data.load_ultrafeedback_demonstrations(str(SHAPES / "ultrafeedback_malformed.jsonl"))


def test_wrong_role_is_an_error():
    row = {"real": [{"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}]}
    with pytest.raises(paper_data.PaperDataError, match="field 'real': message 0 should be a 'user' turn"):
        paper_data.spin_demonstration(row, 0, "here")


def test_missing_local_file_and_offline_hub(tmp_path):
    with pytest.raises(paper_data.PaperDataError, match="does not exist"):
        paper_data.load_spin_demonstrations(str(tmp_path / "missing.jsonl"))
    # tests run with HF_HUB_OFFLINE=1 / HF_DATASETS_OFFLINE=1: the Hub path must fail with a clear message
    with pytest.raises(paper_data.PaperDataError, match="could not load .* from the Hugging Face Hub"):
        paper_data.load_spin_demonstrations("UCLA-AGI/no-such-dataset-for-gsil-tests")


def test_prepare_data_paper_profile_on_local_files(tmp_path):
    out = tmp_path / "data"
    code = main([
        "prepare-data", "--profile", "paper", "--output", str(out), "--seed", "0",
        "--ultrafeedback-source", str(ULTRAFEEDBACK), "--spin-source", str(SPIN),
    ])
    assert code == 0
    assert len(read_records(out / "selfplay.jsonl", "demonstration")) == 2
    assert len(read_records(out / "spin_selfplay.jsonl", "demonstration")) == 2
    assert len(read_records(out / "preferences.jsonl", "preference")) == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"selfplay": 2, "spin_selfplay": 2, "preferences": 2}
    assert manifest["sources"]["selfplay"]["skipped_empty_response"] == 1
    assert (out / "run_info.json").is_file()


# ---------------------------------------------------------------------------------------------------------------
# The Hub path itself, offline: the datasets in a local Hugging Face cache (tests/hub_fixtures.py), read exactly as
# the paper run reads the Hub (repo id, split, revision "main").

PAPER_REPOS = ("HuggingFaceH4/ultrafeedback_binarized", "UCLA-AGI/SPIN_iter0")


@pytest.fixture(scope="module")
def paper_datasets_cache(tmp_path_factory):
    """HF_DATASETS_CACHE with the two paper datasets, and their fixture commit shas."""
    import hub_fixtures

    root = tmp_path_factory.mktemp("hf")
    specs = hub_fixtures.paper_dataset_specs()
    shas = {}
    for repo in PAPER_REPOS:
        snapshot, shas[repo] = hub_fixtures.build_dataset_snapshot(root / "hub", repo, specs[repo])
        hub_fixtures.build_processed_cache(root / "datasets", repo, snapshot, shas[repo], list(specs[repo]["configs"]))
    return root / "datasets", shas


@pytest.fixture
def offline_hub(paper_datasets_cache, monkeypatch):
    import datasets

    cache, shas = paper_datasets_cache
    # `datasets` read HF_DATASETS_CACHE when it was imported; its loaders look the attribute up at call time.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return shas


def test_hub_datasets_read_offline_record_the_cached_commit(offline_hub):
    demos, info = paper_data.load_ultrafeedback_demonstrations(limit=5)
    assert len(demos) == 5 and demos[0]["id"] == "uf-000000"
    assert demos[0]["response"].startswith("Here are two sentences")
    assert info["source"] == "hub" and info["repo"] == paper_data.ULTRAFEEDBACK_REPO
    assert info["split"] == "train_prefs" and info["revision"] == "main"
    # The Hub cannot say which commit "main" is; the datasets cache folder the rows came from can.
    assert info["resolved_sha"] == offline_hub[paper_data.ULTRAFEEDBACK_REPO]
    assert info["resolved_by"] == "datasets cache"
    assert info["rows_in_source"] == 12 and info["rows_read"] == 5 and info["limit"] == 5

    spin, spin_info = paper_data.load_spin_demonstrations()
    assert len(spin) == 12 and spin_info["rows_read"] == 12 and spin_info["limit"] is None
    assert spin_info["resolved_sha"] == offline_hub[paper_data.SPIN_REPO]


def test_pinned_revision_is_recorded_as_pinned(offline_hub):
    sha = offline_hub[paper_data.SPIN_REPO]
    _, info = paper_data.load_spin_demonstrations(revision=sha, limit=1)
    assert info["resolved_sha"] == sha and info["resolved_by"] == "pinned"


def test_prepare_data_paper_profile_from_the_hub_cache(offline_hub, tmp_path):
    out = tmp_path / "data"
    assert main(["prepare-data", "--profile", "paper", "--output", str(out), "--seed", "42", "--limit", "4"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"selfplay": 4, "spin_selfplay": 4, "preferences": 4}
    assert {s["resolved_by"] for s in manifest["sources"].values()} == {"datasets cache"}
    # the fixture's long prompt (row 3 of UltraFeedback) comes through whole; truncation is the trainers' business
    prompts = [r["prompt"] for r in read_records(out / "selfplay.jsonl", "demonstration")]
    assert len(prompts[3]) > 300
