"""The training loop: schedules, batch layout, data plan, every loss trains, SFT learns, resume, accumulation, NaN."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")

from gsil.logutil import GsilError  # noqa: E402
from gsil.training.data import plan_epoch, steps_per_epoch  # noqa: E402
from gsil.losses import LOSS_INFO  # noqa: E402  (torch-free: the loss list for parametrize)
from gsil.training.optim import lr_factor, warmup_steps_for  # noqa: E402
from gsil.training.settings import BatchLayout, TrainSettings, batch_layout  # noqa: E402
from helpers import (MAX_LENGTH, MAX_PROMPT, METRIC_KEYS, as_pair_objects, demonstration_rows,  # noqa: E402
                     pair_rows)


# ------------------------------------------------------------------------------------------------ pure pieces


def test_lr_factor_hand_values():
    # 100 steps, 10 warmup: half-way up at 5, peak at 10, linear half-way down at 55, zero at 100
    # warmup: no step at learning rate 0; 1/11, 2/11, ... 10/11, then the peak
    assert lr_factor(0, 100, 10, "linear") == pytest.approx(1 / 11)
    assert lr_factor(5, 100, 10, "linear") == pytest.approx(6 / 11)
    assert lr_factor(9, 100, 10, "linear") == pytest.approx(10 / 11)
    assert all(lr_factor(s, 16, warmup_steps_for(16, 0.1), "linear") > 0 for s in range(16))
    assert lr_factor(10, 100, 10, "linear") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "linear") == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, "linear") == pytest.approx(0.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(10 + 45 // 2, 100, 10, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 22 / 90)))
    assert lr_factor(80, 100, 10, "constant") == 1.0
    assert warmup_steps_for(100, 0.1) == 10 and warmup_steps_for(7, 0.1) == 1 and warmup_steps_for(7, 0.0) == 0


def test_batch_layout_derives_accumulation():
    assert batch_layout(128, 4, 8) == BatchLayout(128, 4, 4, 8)
    assert batch_layout(8, 0, 2) == BatchLayout(8, 4, 1, 2)
    with pytest.raises(GsilError, match="not divisible"):
        batch_layout(10, 4, 1)
    with pytest.raises(GsilError, match="processes"):
        batch_layout(9, 0, 2)


def test_plan_epoch_covers_every_example_once_and_is_deterministic():
    lengths = [5, 1, 9, 3, 7, 2, 8, 4, 6, 10, 11]
    layout = BatchLayout(4, 2, 1, 2)  # 2 processes x 2 per device
    plan = plan_epoch(lengths, layout, seed=3, epoch=0)
    assert plan == plan_epoch(lengths, layout, seed=3, epoch=0)
    assert plan != plan_epoch(lengths, layout, seed=3, epoch=1)
    seen = [i for step in plan for micro in step for i in micro]
    assert sorted(seen) == list(range(11))  # last short step of 3 still gives both processes an example
    assert len(plan) == steps_per_epoch(11, layout) == 3
    for step in plan:
        assert len(step) == 2  # one micro-batch per process
    # with 4 micro-batches per step a remainder of 3 cannot be split: it is left out and counted
    assert steps_per_epoch(11, BatchLayout(4, 1, 2, 2)) == 2


# ------------------------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from gsil.modeling import load_tokenizer

    return load_tokenizer(tiny_model_dir)


def _pair_examples(tiny_model_dir, tokenizer, rows=None, precision="bf16"):
    from gsil.modeling import load_model
    from gsil.training.examples import encode_pairs
    from gsil.training.reference import attach_reference
    from gsil.training.scoring import score_pairs

    examples, _ = encode_pairs(as_pair_objects(rows or pair_rows(8)), tokenizer, max_length=MAX_LENGTH,
                               max_prompt_length=MAX_PROMPT, template="chat")
    reference = load_model(tiny_model_dir)
    rows = score_pairs(reference, examples, pad_token_id=tokenizer.pad_token_id, batch_size=4, precision=precision,
                       progress=False)
    attach_reference(examples, rows, reference_path="<memory>")
    return examples


def _train(tiny_model_dir, tokenizer, examples, objective, out, **overrides):
    from gsil.modeling import load_model
    from gsil.training.loop import StopAfter, train

    base = dict(lr=1e-3, optimizer="adamw", lr_scheduler="constant", warmup_ratio=0.0, global_batch_size=4,
                max_length=MAX_LENGTH, max_prompt_length=MAX_PROMPT, checkpoint_every=0, seed=1)
    stop = overrides.pop("stop_after_steps", None)
    settings = TrainSettings(**{**base, **overrides})
    result = train(model=load_model(tiny_model_dir), tokenizer=tokenizer, objective=objective, examples=examples,
                   settings=settings, output=out / "model", metrics_path=out / "metrics.jsonl", run_settings={},
                   hooks=None if stop is None else StopAfter(stop))
    return result


def _metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("loss_name", sorted(LOSS_INFO))
def test_each_registered_loss_trains_with_finite_metrics(loss_name, tiny_model_dir, tokenizer, tmp_path):
    from gsil.training.objectives import PairObjective

    examples = _pair_examples(tiny_model_dir, tokenizer)
    objective = PairObjective(loss_name, beta=0.1, gamma=1.0, pad_token_id=tokenizer.pad_token_id)
    _train(tiny_model_dir, tokenizer, examples, objective, tmp_path, epochs=2)
    rows = _metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    # the metric names follow the loss's pair kind: self-play (GSIL, SPIN) real/generated, DPO chosen/rejected
    kind = LOSS_INFO[loss_name].data
    keys, other = METRIC_KEYS[kind], METRIC_KEYS["preference" if kind == "selfplay" else "selfplay"]
    positive = "rewards/real" if kind == "selfplay" else "rewards/chosen"
    for row in rows:
        assert keys <= set(row)
        assert not (other - keys) & set(row)
        assert all(math.isfinite(row[k]) for k in keys)
    # the parameters moved, so the policy's rewards are no longer all zero
    assert any(abs(r[positive]) > 0 for r in rows[1:])


def test_pair_objective_names_its_metrics_by_the_pair_kind():
    from gsil.training.objectives import PairObjective

    assert PairObjective("dpo", beta=0.1, gamma=0.0, pad_token_id=0).progress_keys == (
        "loss", "rewards/chosen", "rewards/rejected")
    assert PairObjective("spin", beta=0.1, gamma=0.0, pad_token_id=0).progress_keys == (
        "loss", "rewards/real", "rewards/generated")
    # `gsil align` passes the kind of its pair file, which wins over the loss's registered kind
    spin_on_preferences = PairObjective("spin", beta=0.1, gamma=0.0, pad_token_id=0, kind="preference")
    assert spin_on_preferences.kind == "preference" and "rewards/chosen" in spin_on_preferences.progress_keys
    with pytest.raises(ValueError, match="not a pair kind"):
        PairObjective("logistic", beta=0.1, gamma=1.0, pad_token_id=0, kind="demonstration")


def test_the_loss_registry_holds_the_paper_family():
    # the parametrization above follows the registry; this pins what the registry must at least hold
    assert {"logistic", "hinge", "brier", "exponential", "kliep", "lsif", "spin", "dpo"} <= set(LOSS_INFO)


def test_sft_loss_decreases_on_a_tiny_overfit_set(tiny_model_dir, tokenizer, tmp_path):
    from gsil.training.examples import encode_demonstrations
    from gsil.training.objectives import SFTObjective

    examples, _ = encode_demonstrations(demonstration_rows(4), tokenizer, max_length=MAX_LENGTH,
                                        max_prompt_length=MAX_PROMPT, template="chat")
    _train(tiny_model_dir, tokenizer, examples, SFTObjective(pad_token_id=tokenizer.pad_token_id), tmp_path,
           lr=1e-2, epochs=12)
    losses = [r["loss"] for r in _metrics(tmp_path / "metrics.jsonl")]
    assert len(losses) == 12
    assert losses[-1] < 0.5 * losses[0], losses
    saved = tmp_path / "model"
    assert (saved / "training_config.json").is_file() and (saved / "run_info.json").is_file()
    assert json.loads((saved / "training_config.json").read_text())["total_steps"] == 12


def test_killed_run_resumes_to_the_uninterrupted_weights(tiny_model_dir, tokenizer, tmp_path):
    from gsil.training.checkpoint import checkpoint_dir_for
    from gsil.training.objectives import PairObjective

    examples = _pair_examples(tiny_model_dir, tokenizer)
    objective = PairObjective("logistic", beta=0.1, gamma=1.0, pad_token_id=tokenizer.pad_token_id)
    common = dict(epochs=3, checkpoint_every=2, optimizer="rmsprop", lr=1e-3, lr_scheduler="linear", warmup_ratio=0.2)
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    _train(tiny_model_dir, tokenizer, examples, objective, straight, **common)

    first = _train(tiny_model_dir, tokenizer, examples, objective, broken, stop_after_steps=3, **common)
    assert first.stopped_early and not (broken / "model").exists()
    assert checkpoint_dir_for(broken / "model").is_dir()  # saved at step 2; step 3 is lost as in a real kill
    second = _train(tiny_model_dir, tokenizer, examples, objective, broken, **common)
    assert second.resumed_from_step == 2 and second.steps == 6
    assert not checkpoint_dir_for(broken / "model").exists()

    a, b = _weights(straight / "model"), _weights(broken / "model")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-5, worst
    steps = [r["step"] for r in _metrics(broken / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6]
    straight_losses = [r["loss"] for r in _metrics(straight / "metrics.jsonl")]
    broken_losses = [r["loss"] for r in _metrics(broken / "metrics.jsonl")]
    assert broken_losses == pytest.approx(straight_losses, abs=1e-5)


def test_resume_refuses_a_checkpoint_of_other_settings(tiny_model_dir, tokenizer, tmp_path):
    from gsil.training.objectives import PairObjective

    examples = _pair_examples(tiny_model_dir, tokenizer)
    objective = PairObjective("logistic", beta=0.1, gamma=1.0, pad_token_id=tokenizer.pad_token_id)
    _train(tiny_model_dir, tokenizer, examples, objective, tmp_path, epochs=2, checkpoint_every=1,
           stop_after_steps=1)
    with pytest.raises(GsilError, match="other settings"):
        _train(tiny_model_dir, tokenizer, examples, objective, tmp_path, epochs=2, checkpoint_every=1, lr=2e-3)


def test_gradient_accumulation_matches_one_big_batch(tiny_model_dir, tokenizer, tmp_path):
    from gsil.training.objectives import PairObjective

    rows = pair_rows(4)
    rows[1]["generated"] = "A much longer wrong answer that pads the batch differently. " * 2
    examples = _pair_examples(tiny_model_dir, tokenizer, rows=rows, precision="fp32")
    objective = PairObjective("logistic", beta=0.5, gamma=0.5, pad_token_id=tokenizer.pad_token_id)
    common = dict(optimizer="sgd", lr=0.5, precision="fp32", max_grad_norm=0.0)
    _train(tiny_model_dir, tokenizer, examples, objective, tmp_path / "big", per_device_batch_size=4, **common)
    _train(tiny_model_dir, tokenizer, examples, objective, tmp_path / "acc", per_device_batch_size=1, **common)
    a, b = _weights(tmp_path / "big" / "model"), _weights(tmp_path / "acc" / "model")
    from gsil.modeling import load_model

    start = load_model(tiny_model_dir).state_dict()
    moved = max(float((a[k] - start[k]).abs().max()) for k in a)
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert moved > 1e-4  # the update is real
    assert worst < 1e-3 * moved, (worst, moved)
    big = _metrics(tmp_path / "big" / "metrics.jsonl")[0]
    acc = _metrics(tmp_path / "acc" / "metrics.jsonl")[0]
    assert acc["loss"] == pytest.approx(big["loss"], rel=1e-5)
    assert acc["grad_norm"] == pytest.approx(big["grad_norm"], rel=1e-4)


def test_shared_prompt_layout_trains_like_the_separate_layout(tiny_model_dir, tokenizer, tmp_path):
    """The packed layout (prompt run once per pair) gives the separate layout's losses, rewards and weights."""
    from gsil.training.objectives import PairObjective
    from gsil.training.reference import attach_reference
    from gsil.training.scoring import score_pairs

    from gsil.modeling import load_model

    examples = _pair_examples(tiny_model_dir, tokenizer, precision="fp32")
    packed_rows = score_pairs(load_model(tiny_model_dir), examples, pad_token_id=tokenizer.pad_token_id,
                              batch_size=4, precision="fp32", progress=False, layout="shared-prompt")
    separate_rows = [{"positive": ex.reference_positive, "negative": ex.reference_negative} for ex in examples]
    for packed, separate in zip(packed_rows, separate_rows):
        assert packed["positive"] == pytest.approx(separate["positive"], abs=1e-4)
        assert packed["negative"] == pytest.approx(separate["negative"], abs=1e-4)
    common = dict(optimizer="sgd", lr=0.5, precision="fp32", max_grad_norm=0.0)
    for layout in ("separate", "shared-prompt"):
        objective = PairObjective("logistic", beta=0.5, gamma=0.5, pad_token_id=tokenizer.pad_token_id,
                                  layout=layout)
        _train(tiny_model_dir, tokenizer, examples, objective, tmp_path / layout, **common)
    a, b = _weights(tmp_path / "separate" / "model"), _weights(tmp_path / "shared-prompt" / "model")
    start = load_model(tiny_model_dir).state_dict()
    moved = max(float((a[k] - start[k]).abs().max()) for k in a)
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert moved > 1e-4 and worst < 1e-3 * moved, (worst, moved)
    separate, packed = _metrics(tmp_path / "separate" / "metrics.jsonl"), _metrics(tmp_path / "shared-prompt" /
                                                                                     "metrics.jsonl")
    for x, y in zip(separate, packed):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
        assert y["rewards/real"] == pytest.approx(x["rewards/real"], abs=1e-4)
        assert y["tokens"] < x["tokens"]  # the shared prompt ran once


def test_nan_loss_stops_with_step_ids_and_values(tiny_model_dir, tokenizer, tmp_path):
    from gsil.training.objectives import PairObjective

    examples = _pair_examples(tiny_model_dir, tokenizer)
    for ex in examples:
        ex.reference_positive = float("nan")  # what a corrupt reference would feed the loss
    objective = PairObjective("logistic", beta=0.1, gamma=1.0, pad_token_id=tokenizer.pad_token_id)
    with pytest.raises(GsilError) as info:
        _train(tiny_model_dir, tokenizer, examples, objective, tmp_path)
    message = str(info.value)
    assert "optimizer step 1" in message and "non-finite" in message
    assert "reference_positive': nan" in message
    assert any(f"q{i}:" in message for i in range(8))


def test_identical_pairs_dropped_and_counted(tokenizer):
    from gsil.training.examples import encode_pairs

    rows = pair_rows(6)
    rows[2]["generated"] = "  " + rows[2]["real"].replace(" ", "\n ")  # equal up to whitespace
    rows[4]["generated"] = rows[4]["real"]
    kept, stats = encode_pairs(as_pair_objects(rows), tokenizer, max_length=MAX_LENGTH, max_prompt_length=MAX_PROMPT,
                               template="chat", drop_identical=True)
    assert stats.dropped_identical == 2 and [e.id for e in kept] == ["q0", "q1", "q3", "q5"]
    kept, stats = encode_pairs(as_pair_objects(rows), tokenizer, max_length=MAX_LENGTH, max_prompt_length=MAX_PROMPT,
                               template="chat")
    assert stats.dropped_identical == 0 and len(kept) == 6


def test_empty_response_names_the_pair_or_is_counted_when_allowed(tokenizer):
    from gsil.training.examples import encode_pairs

    rows = pair_rows(3)
    rows[1]["generated"] = "   "
    with pytest.raises(GsilError, match="'q1'.*negative response is empty"):
        encode_pairs(as_pair_objects(rows), tokenizer, max_length=MAX_LENGTH, max_prompt_length=MAX_PROMPT,
                     template="chat")
    kept, stats = encode_pairs(as_pair_objects(rows), tokenizer, max_length=MAX_LENGTH, max_prompt_length=MAX_PROMPT,
                               template="chat", skip_empty=True)
    assert stats.skipped_empty == 1 and stats.skipped_ids == ["q1"] and len(kept) == 2


def test_sft_cli_writes_model_config_and_metrics(tiny_model_dir, tmp_path):
    from gsil.cli import main
    from gsil.records import write_records

    data = tmp_path / "sft.jsonl"
    write_records(data, demonstration_rows(4), "demonstration")
    out = tmp_path / "sft"
    assert main(["sft", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(out), "--metrics",
                 str(tmp_path / "metrics.jsonl"), "--global-batch-size", "2", "--max-length", str(MAX_LENGTH),
                 "--max-prompt-length", str(MAX_PROMPT), "--lr", "1e-3"]) == 0
    rows = _metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert {"step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s"} <= set(rows[0])
    config = json.loads((out / "training_config.json").read_text())
    assert config["stage"] == "sft" and config["optimizer"] == "adamw" and config["global_batch_size"] == 2
    assert (out / "tokenizer.json").is_file()


@pytest.mark.parametrize("stage", ["sft", "align"])
@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_precision_auto_resolves_once_for_the_cpu(stage, native, expected, monkeypatch):
    """--precision auto is bf16 where the CPU computes it natively and fp32 where bf16 would be emulated; the stage's
    settings carry only the resolved value, with "auto" kept as the requested one. bf16 and fp32 stay as given."""
    import argparse
    import importlib

    from gsil.generation import settings as generation_settings
    from gsil.training.settings import settings_from_args

    monkeypatch.setattr(generation_settings, "cpu_prefers_bf16", lambda: native)
    parser = argparse.ArgumentParser()
    importlib.import_module(f"gsil.stages.{stage}").add_arguments(parser)
    required = ["--model", "m", "--output", "o", "--metrics", "x"] + (
        ["--data", "d"] if stage == "sft" else
        ["--pairs", "p", "--kind", "selfplay", "--reference", "r", "--loss", "logistic", "--beta", "0.1"])
    settings = settings_from_args(parser.parse_args(required + ["--precision", "auto"]), device="cpu")
    assert (settings.precision, settings.precision_requested) == (expected, "auto")
    for given in ("bf16", "fp32"):
        explicit = settings_from_args(parser.parse_args(required + ["--precision", given]), device="cpu")
        assert (explicit.precision, explicit.precision_requested) == (given, given)


def test_unresolved_precision_is_refused_by_the_accelerator():
    from gsil.training.loop import make_accelerator

    with pytest.raises(GsilError, match="not resolved"):
        make_accelerator(TrainSettings(precision="auto"))


def test_precision_auto_is_not_part_of_the_checkpoint_fingerprint():
    """auto that resolved to bf16 resumes a checkpoint of an explicit bf16 run (the same computation); another
    resolution does not."""
    from gsil.training.checkpoint import run_fingerprint

    bf16 = run_fingerprint(TrainSettings(precision="bf16"), ["a"], {})
    assert run_fingerprint(TrainSettings(precision="bf16", precision_requested="auto"), ["a"], {}) == bf16
    assert run_fingerprint(TrainSettings(precision="fp32", precision_requested="auto"), ["a"], {}) != bf16


def test_sft_with_precision_auto_records_the_resolved_and_the_requested_precision(tiny_model_dir, tmp_path,
                                                                                 monkeypatch, capsys):
    from gsil import cpu
    from gsil.cli import main
    from gsil.records import write_records

    # a CPU without a native bf16 flag: the decision and the reason it logs need no probe on any machine
    monkeypatch.setattr(cpu, "read_cpuinfo", lambda: "processor\t: 0\nflags\t\t: fpu avx2 fma\n")
    data = tmp_path / "sft.jsonl"
    write_records(data, demonstration_rows(2), "demonstration")
    out = tmp_path / "sft"
    assert main(["sft", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(out), "--metrics",
                 str(tmp_path / "metrics.jsonl"), "--global-batch-size", "2", "--max-length", str(MAX_LENGTH),
                 "--max-prompt-length", str(MAX_PROMPT), "--checkpoint-every", "0", "--precision", "auto"]) == 0
    config = json.loads((out / "training_config.json").read_text())
    assert (config["precision"], config["precision_requested"]) == ("fp32", "auto")
    assert config["numerics"] == {"engine": "single", "weights_dtype": "float32", "autocast_dtype": None}
    recorded = json.loads((out / "run_info.json").read_text())["settings"]
    assert (recorded["precision"], recorded["precision_requested"]) == ("fp32", "auto")
    assert "--precision auto -> fp32 on cpu: the CPU has no native bf16" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ paper-run defects


def test_retried_job_keeps_every_metrics_row(tiny_model_dir, tokenizer, tmp_path):
    """Snakemake deletes a failed job's outputs, metrics.jsonl among them, before the retry; the resumed run still
    logs every step, with the values of an uninterrupted run (the checkpoint carries the metrics so far)."""
    from gsil.training.objectives import PairObjective

    examples = _pair_examples(tiny_model_dir, tokenizer)
    objective = PairObjective("logistic", beta=0.1, gamma=1.0, pad_token_id=tokenizer.pad_token_id)
    common = dict(epochs=3, checkpoint_every=2, optimizer="rmsprop", lr=1e-3)
    straight, retried = tmp_path / "straight", tmp_path / "retried"
    _train(tiny_model_dir, tokenizer, examples, objective, straight, **common)
    _train(tiny_model_dir, tokenizer, examples, objective, retried, stop_after_steps=3, **common)
    (retried / "metrics.jsonl").unlink()  # what Snakemake does to a failed job's declared outputs
    second = _train(tiny_model_dir, tokenizer, examples, objective, retried, **common)
    assert second.resumed_from_step == 2
    rows = _metrics(retried / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in _metrics(straight / "metrics.jsonl")],
                                                      abs=1e-5)


def test_in_place_checkpoints_resume_and_keep_one_copy(tiny_model_dir, tokenizer, tmp_path, monkeypatch):
    """--checkpoint-save in-place deletes the previous checkpoint before writing the next (one on disk: ZeRO-3
    checkpoints of a 7B model are 70-100 GB); the run still resumes to the uninterrupted weights."""
    from gsil.training import checkpoint
    from gsil.training.objectives import PairObjective

    examples = _pair_examples(tiny_model_dir, tokenizer)
    objective = PairObjective("logistic", beta=0.1, gamma=1.0, pad_token_id=tokenizer.pad_token_id)
    common = dict(epochs=3, checkpoint_every=1, optimizer="rmsprop", lr=1e-3)
    _train(tiny_model_dir, tokenizer, examples, objective, tmp_path / "straight", **common)

    on_disk = []
    real_save = checkpoint.save_checkpoint

    def counting_save(accelerator, checkpoint_dir, state, **kwargs):
        real_save(accelerator, checkpoint_dir, state, **kwargs)
        on_disk.append(len(list(checkpoint_dir.parent.glob(checkpoint_dir.name + "*"))))

    monkeypatch.setattr(checkpoint, "save_checkpoint", counting_save)
    out = tmp_path / "in-place"
    _train(tiny_model_dir, tokenizer, examples, objective, out, stop_after_steps=3, checkpoint_save="in-place",
           **common)
    assert on_disk == [1, 1, 1]
    _train(tiny_model_dir, tokenizer, examples, objective, out, checkpoint_save="in-place", **common)
    a, b = _weights(tmp_path / "straight" / "model"), _weights(out / "model")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_fsdp_gets_model_and_optimizer_in_one_prepare_call(tiny_model_dir):
    """accelerate's FSDP2 path shards the model inside the same `prepare` call as its optimizer and raises on a
    model prepared alone; every engine gets the pair together."""
    from accelerate.utils import DistributedType

    from gsil.modeling import load_model
    from gsil.training.loop import prepare_model_and_optimizer

    calls = []

    class FakeAccelerator:
        distributed_type = DistributedType.FSDP

        def prepare(self, *objects):
            calls.append(objects)
            if len(objects) == 1 and isinstance(objects[0], torch.nn.Module):
                raise ValueError("FSDP2 requires the model and the optimizer to be prepared together")
            return objects

    model = load_model(tiny_model_dir)
    settings = TrainSettings(optimizer="adamw", lr=1e-3)
    prepared, wrapped, inner = prepare_model_and_optimizer(FakeAccelerator(), model, settings,
                                                           batch_layout(8, 0, 1))
    assert len(calls) == 1 and calls[0][0] is model and isinstance(calls[0][1], torch.optim.Optimizer)
    assert inner is calls[0][1] and prepared is model


def test_prepare_restores_float32_rotary_frequencies_after_an_engine_cast(tiny_model_dir):
    """DeepSpeed's engine casts the module, buffers included, to bf16 inside `prepare`; the reference keeps float32
    rotary frequencies, so training restores them or Δ starts off zero on long sequences."""
    from accelerate.utils import DistributedType

    from gsil.modeling import load_model
    from gsil.training.loop import prepare_model_and_optimizer

    class CastingAccelerator:
        distributed_type = DistributedType.NO

        def prepare(self, model, optimizer):
            return model.bfloat16(), optimizer

    model = load_model(tiny_model_dir)
    prepared, _, _ = prepare_model_and_optimizer(CastingAccelerator(), model, TrainSettings(optimizer="adamw"),
                                                 batch_layout(8, 0, 1))
    assert next(prepared.parameters()).dtype == torch.bfloat16
    assert prepared.model.rotary_emb.inv_freq.dtype == torch.float32
    assert torch.equal(prepared.model.rotary_emb.inv_freq, load_model(tiny_model_dir).model.rotary_emb.inv_freq)


def test_training_stages_make_the_accelerator_before_loading_the_model(tiny_model_dir, tmp_path, monkeypatch):
    """ZeRO-3's zero3_init_flag (each rank builds only its shard) and FSDP's cpu_ram_efficient_loading only work
    when the Accelerator exists before `from_pretrained`: a model loaded first is a full fp32 copy per rank."""
    from accelerate.state import AcceleratorState

    from gsil import modeling
    from gsil.cli import main
    from gsil.records import write_records

    seen = []
    real_load = modeling.load_model

    def recording_load(*args, **kwargs):
        seen.append(bool(AcceleratorState._shared_state))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(modeling, "load_model", recording_load)
    data = tmp_path / "sft.jsonl"
    write_records(data, demonstration_rows(2), "demonstration")
    AcceleratorState._reset_state(True)
    assert main(["sft", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(tmp_path / "m"),
                 "--metrics", str(tmp_path / "metrics.jsonl"), "--global-batch-size", "2", "--max-length",
                 str(MAX_LENGTH), "--max-prompt-length", str(MAX_PROMPT), "--checkpoint-every", "0"]) == 0
    assert seen == [True]
    config = json.loads((tmp_path / "m" / "training_config.json").read_text())
    assert config["numerics"] == {"engine": "single", "weights_dtype": "float32", "autocast_dtype": "bfloat16"}


def test_cpu_threads_are_shared_by_the_node_processes(monkeypatch):
    from gsil.modeling import set_cpu_threads

    set_threads = []
    monkeypatch.setattr(torch, "set_num_threads", set_threads.append)
    assert set_cpu_threads(8, {"LOCAL_WORLD_SIZE": "2"}) == 4
    assert set_cpu_threads(2, {"LOCAL_WORLD_SIZE": "4"}) == 1
    assert set_cpu_threads(0, {}) == 0
    assert set_threads == [4, 1]


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_retry_continues_without_a_hole(tiny_model_dir, tmp_path):
    """A cluster sends SIGTERM before it kills (preemption, time limit): the job finishes its step, saves a
    checkpoint with the metrics so far and exits 143; the retried job (its outputs deleted, as Snakemake does)
    continues from that step, and metrics.jsonl has every step once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from gsil.records import write_records
    from gsil.training.checkpoint import checkpoint_dir_for

    data = tmp_path / "sft.jsonl"
    write_records(data, demonstration_rows(4), "demonstration")
    out, metrics = tmp_path / "model", tmp_path / "metrics.jsonl"
    command = [sys.executable, "-m", "gsil", "sft", "--model", str(tiny_model_dir), "--data", str(data), "--output",
               str(out), "--metrics", str(metrics), "--global-batch-size", "1", "--epochs", "40", "--max-length",
               str(MAX_LENGTH), "--max-prompt-length", str(MAX_PROMPT), "--checkpoint-every", "0", "--lr", "1e-3",
               "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and job.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    assert job.poll() is None, "the run ended before the test could signal it"
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM after optimizer step" in err
    checkpoint = checkpoint_dir_for(out)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    stopped_at = state["step"]
    assert stopped_at >= 3 and not out.exists()
    assert [r["step"] for r in _metrics(checkpoint / "metrics.jsonl")] == list(range(1, stopped_at + 1))

    metrics.unlink()  # Snakemake removes a failed job's outputs before the retry
    retry = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert retry.returncode == 0, retry.stderr[-2000:]
    assert f"resuming from {checkpoint} at optimizer step {stopped_at}" in retry.stderr
    assert [r["step"] for r in _metrics(metrics)] == list(range(1, 161))
