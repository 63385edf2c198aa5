"""`gsil reference-logps`: rows, sidecar metadata, batching-invariant values, and Δ ≈ 0 at the first step."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from gsil.cli import main  # noqa: E402
from gsil.io import read_json  # noqa: E402
from gsil.records import file_sha256, write_records  # noqa: E402
from test_training import MAX_LENGTH, MAX_PROMPT, pair_rows, tiny_model_dir  # noqa: E402,F401


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "selfplay.jsonl"
    write_records(path, pair_rows(8), "selfplay")
    return path


def reference_cli(model, pairs, output, *extra):
    return main(["reference-logps", "--model", str(model), "--pairs", str(pairs), "--kind", "selfplay",
                 "--output", str(output), "--max-length", str(MAX_LENGTH), "--max-prompt-length", str(MAX_PROMPT),
                 "--batch-size", "3", *extra])


def test_rows_and_meta_match_single_sequence_scoring(tiny_model_dir, pairs_file, tmp_path):  # noqa: F811
    from gsil.logprobs import sequence_logps
    from gsil.modeling import load_model, load_tokenizer
    from gsil.tokenization import encode_example, pad_batch

    output = tmp_path / "ref" / "selfplay.jsonl"
    assert reference_cli(tiny_model_dir, pairs_file, output, "--precision", "fp32") == 0
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    meta = read_json(tmp_path / "ref" / "selfplay.meta.json")
    assert [r["id"] for r in rows] == [f"q{i}" for i in range(8)]
    assert meta["pairs_sha256"] == file_sha256(pairs_file) and meta["rows"] == 8 and meta["kind"] == "selfplay"
    assert meta["tokenization"] == {"max_length": MAX_LENGTH, "max_prompt_length": MAX_PROMPT, "template": "chat"}
    # a tiny Llama on CPU with short sequences: prompts shared within a pair, eager attention
    assert meta["pair_layout"] == "shared-prompt" and meta["attention_implementation"] == "eager"

    # batched, length-sorted scoring equals scoring each sequence alone (fp32: up to float rounding)
    tokenizer, model = load_tokenizer(tiny_model_dir), load_model(tiny_model_dir)
    source = pair_rows(8)[5]
    for side, field in (("positive", "real"), ("negative", "generated")):
        enc = encode_example(tokenizer, source["prompt"], source[field], max_length=MAX_LENGTH,
                             max_prompt_length=MAX_PROMPT)
        batch = pad_batch([enc], tokenizer.pad_token_id)
        with torch.no_grad():
            alone, count = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        assert rows[5][side] == pytest.approx(float(alone[0]), abs=1e-3)
        assert rows[5][f"{side}_tokens"] == int(count[0])


def test_reference_in_training_precision_makes_delta_start_at_zero(tiny_model_dir, pairs_file, tmp_path):  # noqa: F811
    """Δ at step 1 (before any update) is ~0 with a bf16 reference and clearly not with an fp32 one: the reference
    must be computed in the precision the policy trains in."""
    starts = {}
    for precision in ("bf16", "fp32"):
        reference = tmp_path / precision / "ref.jsonl"
        assert reference_cli(tiny_model_dir, pairs_file, reference, "--precision", precision) == 0
        out = tmp_path / precision
        assert main(["align", "--model", str(tiny_model_dir), "--pairs", str(pairs_file), "--kind", "selfplay",
                     "--reference", str(reference), "--loss", "logistic", "--beta", "0.1", "--gamma", "1",
                     "--output", str(out / "model"), "--metrics", str(out / "metrics.jsonl"),
                     "--max-length", str(MAX_LENGTH), "--max-prompt-length", str(MAX_PROMPT),
                     "--global-batch-size", "8", "--max-steps", "1", "--precision", "bf16"]) == 0
        first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        starts[precision] = max(abs(first["rewards/real"]), abs(first["rewards/generated"]))
    assert starts["bf16"] < 0.05, starts
    assert starts["fp32"] > starts["bf16"], starts
