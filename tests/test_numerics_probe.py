"""`gsil.bench.numerics_probe`: the per-kernel diagnosis `gsil check-gpu` runs for the reference's numerics."""

from __future__ import annotations

import argparse

import pytest

from gsil.bench import numerics_probe
from gsil.bench.numerics_probe import compare, mean_gap, variants_for
from gsil.io import read_json
from gsil.records import write_records
from helpers import MAX_LENGTH, MAX_PROMPT, pair_rows


def test_compare_gives_mean_signed_and_largest_absolute_difference():
    figures = compare([-10.0, -20.5, -3.0, -7.25], [-10.5, -20.0, -3.0, -7.0])
    # differences +0.5, -0.5, 0, -0.25: mean -0.0625, largest 0.5
    assert figures == {"bias": pytest.approx(-0.0625), "max_abs": pytest.approx(0.5), "n": 4}
    with pytest.raises(ValueError):
        compare([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        compare([], [])


def test_mean_gap_is_what_delta_starts_at():
    # reference 2.1 nats above the policy on each of two sequences: Δ = policy − reference starts at −2.1
    assert mean_gap([-348.4, -100.0], [-350.5, -102.1]) == pytest.approx(2.1)


def test_variants_follow_the_attention_layout_and_device():
    names = lambda **kw: [v.name for v in variants_for(**kw)]  # noqa: E731
    cpu_eager = names(attention="eager", layout="shared-prompt", cuda=False)
    assert cpu_eager[:3] == ["reference", "policy-step", "one-pair-batches"]
    assert "attention-sdpa" in cpu_eager and "separate-layout" in cpu_eager
    assert not any(n.startswith("sdpa-") for n in cpu_eager) and "fp32-bf16-reductions" not in cpu_eager
    gpu_sdpa = names(attention="sdpa", layout="separate", cuda=True)
    assert {"sdpa-math", "sdpa-efficient", "sdpa-flash", "sdpa-cudnn", "attention-eager",
            "fp32-bf16-reductions"} <= set(gpu_sdpa)
    assert "separate-layout" not in gpu_sdpa
    reference = variants_for(attention="sdpa", layout="separate", cuda=False)[0]
    assert (reference.batching, reference.attention, reference.sdpa_backend, reference.layout) == (
        "reference", None, None, None)


@pytest.mark.timeout(300)
def test_probe_in_bf16_weights_finds_no_gap_on_the_cpu(tiny_model_dir, tmp_path):
    """DeepSpeed's numerics (bf16 weights, no autocast) with SDPA: the reference as scored and the policy's first
    forward agree, every variant that runs is near the float32 truth, and backends the CPU lacks are reported."""
    pairs = tmp_path / "pairs.jsonl"
    write_records(pairs, pair_rows(6), "selfplay")
    parser = argparse.ArgumentParser()
    numerics_probe.add_arguments(parser)
    output = tmp_path / "probe.json"
    args = parser.parse_args(["--model", str(tiny_model_dir), "--pairs", str(pairs), "--output", str(output),
                              "--max-length", str(MAX_LENGTH), "--max-prompt-length", str(MAX_PROMPT),
                              "--batch-size", "4", "--global-batch", "4", "--attention", "sdpa",
                              "--numerics-of", "deepspeed"])
    report = numerics_probe.run(args)
    assert read_json(output) == report
    assert report["numerics"] == {"engine": "deepspeed", "weights_dtype": "bfloat16", "autocast_dtype": None}
    assert report["full_logits"] is True and report["attention"] == "sdpa" and report["sequences"] == 12
    assert abs(report["reference_minus_policy"]) < 0.05
    by_name = {v["name"]: v for v in report["variants"]}
    ran = [v for v in report["variants"] if v["status"] == "ran"]
    assert {"reference", "policy-step", "one-pair-batches", "attention-eager", "sdpa-math"} <= {v["name"] for v in ran}
    # bf16 rounding of a tiny random model: small against the ~2 nats the H200 showed, and not zero
    assert all(abs(v["bias"]) < 0.3 and v["max_abs"] < 1.0 for v in ran)
    assert by_name["reference"]["max_abs"] > 0
    assert by_name["sdpa-efficient"]["status"] == "unavailable" and by_name["sdpa-efficient"]["error"]
    assert "fp32-bf16-reductions" not in by_name
