"""`gsil reference-logps`: rows, sidecar metadata, batching-invariant values, and Δ ≈ 0 at the first step."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from gsil.cli import main  # noqa: E402
from gsil.io import read_json  # noqa: E402
from gsil.records import file_sha256, write_records  # noqa: E402
from helpers import MAX_LENGTH, MAX_PROMPT, pair_rows  # noqa: E402


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "selfplay.jsonl"
    write_records(path, pair_rows(8), "selfplay")
    return path


def reference_cli(model, pairs, output, *extra):
    return main(["reference-logps", "--model", str(model), "--pairs", str(pairs), "--kind", "selfplay",
                 "--output", str(output), "--max-length", str(MAX_LENGTH), "--max-prompt-length", str(MAX_PROMPT),
                 "--batch-size", "3", *extra])


def test_rows_and_meta_match_single_sequence_scoring(tiny_model_dir, pairs_file, tmp_path):
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


def test_reference_in_training_precision_makes_delta_start_at_zero(tiny_model_dir, pairs_file, tmp_path):
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
                     "--global-batch-size", "8", "--max-steps", "1", "--precision", "bf16",
                     "--numerics-mismatch", "warn"]) == 0
        first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        starts[precision] = max(abs(first["rewards/real"]), abs(first["rewards/generated"]))
    assert starts["bf16"] < 0.05, starts
    assert starts["fp32"] > starts["bf16"], starts


def test_align_refuses_a_reference_of_other_numerics(tiny_model_dir, pairs_file, tmp_path, capsys):
    reference = tmp_path / "ref.jsonl"
    assert reference_cli(tiny_model_dir, pairs_file, reference, "--precision", "fp32") == 0
    assert main(["align", "--model", str(tiny_model_dir), "--pairs", str(pairs_file), "--kind", "selfplay",
                 "--reference", str(reference), "--loss", "logistic", "--beta", "0.1", "--output",
                 str(tmp_path / "model"), "--metrics", str(tmp_path / "metrics.jsonl"), "--max-length",
                 str(MAX_LENGTH), "--max-prompt-length", str(MAX_PROMPT), "--global-batch-size", "8",
                 "--max-steps", "1", "--precision", "bf16"]) == 1
    err = capsys.readouterr().err
    assert "ref.meta.json" in err and "float32 weights, no autocast" in err
    assert "float32 weights, bfloat16 autocast" in err
    assert not (tmp_path / "model").exists()


def _align_auto(model, pairs, reference, out):
    return main(["align", "--model", str(model), "--pairs", str(pairs), "--kind", "selfplay", "--reference",
                 str(reference), "--loss", "logistic", "--beta", "0.1", "--output", str(out / "model"), "--metrics",
                 str(out / "metrics.jsonl"), "--max-length", str(MAX_LENGTH), "--max-prompt-length", str(MAX_PROMPT),
                 "--global-batch-size", "8", "--max-steps", "1", "--checkpoint-every", "0", "--precision", "auto"])


def test_precision_auto_is_resolved_recorded_and_checked_across_machines(tiny_model_dir, pairs_file, tmp_path,
                                                                        monkeypatch, capsys):
    """reference-logps --precision auto scores with what auto gives on its device and records that with "auto"
    requested; align with auto accepts it on the same kind of machine and refuses it, naming auto, where auto gives
    another precision (a reference scored on a CPU with native bf16, the policy trained on one without)."""
    from gsil.generation import settings as generation_settings

    monkeypatch.setattr(generation_settings, "cpu_prefers_bf16", lambda: False)
    emulated = tmp_path / "fp32" / "ref.jsonl"
    assert reference_cli(tiny_model_dir, pairs_file, emulated, "--precision", "auto") == 0
    meta = read_json(tmp_path / "fp32" / "ref.meta.json")
    assert (meta["precision"], meta["precision_requested"]) == ("fp32", "auto")
    assert meta["numerics"] == {"engine": "single", "weights_dtype": "float32", "autocast_dtype": None}
    recorded = read_json(tmp_path / "fp32" / "ref.jsonl.run_info.json")["settings"]
    assert (recorded["precision"], recorded["precision_requested"]) == ("fp32", "auto")
    assert "--precision auto -> fp32 on cpu" in capsys.readouterr().err

    assert _align_auto(tiny_model_dir, pairs_file, emulated, tmp_path / "same") == 0
    config = read_json(tmp_path / "same" / "model" / "training_config.json")
    assert (config["precision"], config["precision_requested"]) == ("fp32", "auto")
    assert (config["reference_precision"], config["reference_precision_requested"]) == ("fp32", "auto")

    monkeypatch.setattr(generation_settings, "cpu_prefers_bf16", lambda: True)
    native = tmp_path / "bf16" / "ref.jsonl"
    assert reference_cli(tiny_model_dir, pairs_file, native, "--precision", "auto") == 0
    assert read_json(tmp_path / "bf16" / "ref.meta.json")["numerics"]["autocast_dtype"] == "bfloat16"
    capsys.readouterr()
    monkeypatch.setattr(generation_settings, "cpu_prefers_bf16", lambda: False)
    assert _align_auto(tiny_model_dir, pairs_file, native, tmp_path / "other") == 1
    err = capsys.readouterr().err
    assert "float32 weights, bfloat16 autocast" in err and "float32 weights, no autocast" in err
    assert "--precision auto resolves on the machine that runs each stage: the reference's to bf16, this run's to " \
           "fp32" in err
    assert not (tmp_path / "other" / "model").exists()


def test_precision_auto_on_a_gpu_follows_its_bf16_support(monkeypatch):
    from gsil.training.settings import resolve_stage_precision

    for supported, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert resolve_stage_precision("auto", "cuda:3") == expected
    assert resolve_stage_precision("bf16", "cuda:3") == "bf16"


def test_numerics_per_engine_and_from_old_meta():
    from gsil.launch import launch_engine
    from gsil.training.numerics import Numerics, engine_from_distributed_type, expected_numerics, numerics_from_meta

    assert expected_numerics("bf16", "single") == Numerics("single", "float32", "bfloat16")
    assert expected_numerics("bf16", "ddp").values_key == ("float32", "bfloat16")
    # DeepSpeed runs the module in bf16 and accelerate does not autocast there
    assert expected_numerics("bf16", "deepspeed").values_key == ("bfloat16", None)
    assert expected_numerics("bf16", "fsdp").values_key == ("bfloat16", "bfloat16")
    assert expected_numerics("fp32", "deepspeed").values_key == ("float32", None)
    assert launch_engine({"ACCELERATE_USE_DEEPSPEED": "true", "WORLD_SIZE": "8"}) == "deepspeed"
    assert launch_engine({"ACCELERATE_USE_FSDP": "true"}) == "fsdp"
    assert launch_engine({"WORLD_SIZE": "2"}) == "ddp" and launch_engine({}) == "single"
    assert engine_from_distributed_type("MULTI_CPU") == "ddp" and engine_from_distributed_type("NO") == "single"
    # a meta file from before numerics were recorded: its precision string meant the single-process numerics
    assert numerics_from_meta({"precision": "bf16"}).values_key == ("float32", "bfloat16")
    recorded = {"numerics": {"engine": "deepspeed", "weights_dtype": "bfloat16", "autocast_dtype": None}}
    assert numerics_from_meta(recorded) == Numerics("deepspeed", "bfloat16", None)


def test_reference_launched_for_deepspeed_scores_in_bf16_weights(tiny_model_dir, pairs_file, tmp_path,
                                                                   monkeypatch):
    """Launched with the policy's ZeRO-3 config, the scorer takes DeepSpeed's numerics (bf16 weights, no autocast)
    instead of fp32 weights under autocast, and records them."""
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    output = tmp_path / "ds.jsonl"
    assert reference_cli(tiny_model_dir, pairs_file, output) == 0
    meta = read_json(tmp_path / "ds.meta.json")
    assert meta["numerics"] == {"engine": "deepspeed", "weights_dtype": "bfloat16", "autocast_dtype": None}
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    plain = tmp_path / "plain.jsonl"
    assert reference_cli(tiny_model_dir, pairs_file, plain) == 0
    assert read_json(tmp_path / "plain.meta.json")["numerics"]["weights_dtype"] == "float32"
    ds_rows = [json.loads(line) for line in output.read_text().splitlines()]
    plain_rows = [json.loads(line) for line in plain.read_text().splitlines()]
    # same tokens, other rounding
    assert [r["positive_tokens"] for r in ds_rows] == [r["positive_tokens"] for r in plain_rows]
    assert any(a["positive"] != b["positive"] for a, b in zip(ds_rows, plain_rows))


def test_reference_model_goes_to_the_launch_device(tiny_model_dir, pairs_file, tmp_path, monkeypatch):
    """The scorer moves the model to the device accelerate assigns this process (cuda:<local rank> on a GPU node),
    not leaving it on the CPU; here the device is a recorded stand-in."""
    import accelerate

    moved = []
    real_to = torch.nn.Module.to

    def recording_to(self, *args, **kwargs):
        if args and isinstance(args[0], torch.device) and args[0].type == "cuda":
            moved.append(args[0])
            return self  # stays on the CPU for the arithmetic: no GPU here
        return real_to(self, *args, **kwargs)

    class FakeState:
        device = torch.device("cuda", 3)
        process_index, num_processes = 0, 1
        is_main_process = is_local_main_process = True

        def __init__(self, **kwargs):
            pass

        def wait_for_everyone(self):
            pass

    monkeypatch.setattr(accelerate, "PartialState", FakeState)
    monkeypatch.setattr(torch.nn.Module, "to", recording_to)
    assert reference_cli(tiny_model_dir, pairs_file, tmp_path / "ref.jsonl") == 0
    assert moved == [torch.device("cuda", 3)]
    assert read_json(tmp_path / "ref.meta.json")["device"] == "cuda"


def test_process_shares_merge_back_in_input_order():
    from gsil.training.scoring import merge_shares, process_share

    assert process_share(7, 0, 3) == [0, 3, 6] and process_share(7, 2, 3) == [2, 5]
    shares = [(process_share(7, r, 3), [{"id": i} for i in process_share(7, r, 3)]) for r in (2, 0, 1)]
    assert [row["id"] for row in merge_shares(7, shares)] == list(range(7))
    with pytest.raises(ValueError, match="no process"):
        merge_shares(7, shares[:2])
    with pytest.raises(ValueError, match="two processes"):
        merge_shares(7, shares + shares[:1])


@pytest.mark.slow
def test_two_cpu_processes_under_accelerate_launch_equal_one(tiny_model_dir, pairs_file, tmp_path):
    """Data parallel scoring (2 processes over gloo, as N GPUs would run it) writes the same rows in the same order
    as one process."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    one = tmp_path / "one.jsonl"
    assert reference_cli(tiny_model_dir, pairs_file, one, "--precision", "fp32") == 0
    two = tmp_path / "two.jsonl"
    accelerate = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --multi_gpu starts the processes (torchrun); on a machine without CUDA they run on the CPU over gloo
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
               "-m", "gsil", "reference-logps", "--model", str(tiny_model_dir), "--pairs", str(pairs_file),
               "--kind", "selfplay", "--output", str(two), "--max-length", str(MAX_LENGTH), "--max-prompt-length",
               str(MAX_PROMPT), "--batch-size", "3", "--precision", "fp32"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "process 2 of 2" in done.stderr
    rows_one = [json.loads(line) for line in one.read_text().splitlines()]
    rows_two = [json.loads(line) for line in two.read_text().splitlines()]
    assert [r["id"] for r in rows_two] == [r["id"] for r in rows_one]
    for a, b in zip(rows_one, rows_two):
        assert a["positive_tokens"] == b["positive_tokens"]
        assert b["positive"] == pytest.approx(a["positive"], abs=1e-4)
        assert b["negative"] == pytest.approx(a["negative"], abs=1e-4)
    assert read_json(tmp_path / "two.meta.json")["processes"] == 2


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_start_gap_tells_an_offset_from_rounding():
    from gsil.training.numerics import is_offset, start_gap

    offset = start_gap([-10.0, -20.0, -30.0], [-12.0, -22.0, -32.0])
    assert offset == {"mean": pytest.approx(2.0), "se": pytest.approx(0.0), "max_abs": pytest.approx(2.0), "n": 3}
    assert is_offset(offset)
    # gaps 0.6, 0.7, 0.5: mean 0.6, sd 0.1, s.e. 0.0577 -> beyond 0.5 and beyond 3 s.e.
    small_spread = start_gap([0.6, 0.7, 0.5], [0.0, 0.0, 0.0])
    assert small_spread["se"] == pytest.approx(0.1 / 3 ** 0.5) and is_offset(small_spread)
    # gaps 2.0, -0.5, 0.1: mean 0.533 but s.e. 0.754 -> noise, not an offset
    noisy = start_gap([2.0, -0.5, 0.1], [0.0, 0.0, 0.0])
    assert noisy["mean"] == pytest.approx(0.5333, abs=1e-4) and noisy["se"] == pytest.approx(0.7535, abs=1e-4)
    assert not is_offset(noisy)
    assert not is_offset(start_gap([0.4, 0.4], [0.0, 0.0]))  # within the tolerance
    with pytest.raises(ValueError):
        start_gap([], [])
