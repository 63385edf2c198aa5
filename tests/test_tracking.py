"""Experiment tracking (`--tracking`): TensorBoard curves equal metrics.jsonl, survive a resume, change no output;
unavailable trackers fail clearly; `track-scores` writes every evaluation score as a readable scalar."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tensorboard")

from gsil.logutil import GsilError  # noqa: E402
from helpers import MAX_LENGTH, MAX_PROMPT, as_pair_objects, demonstration_rows, pair_rows  # noqa: E402


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value), ...] as TensorBoard shows them (purged steps dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def metrics_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_curve_matches(curve, rows, key):
    assert [step for step, _ in curve] == [row["step"] for row in rows], key  # every step once, in order
    for (step, value), row in zip(curve, rows):
        assert value == pytest.approx(row[key], rel=1e-6, abs=1e-7), (key, step)  # TensorBoard keeps float32


# ------------------------------------------------------------------------------------------------ pure pieces


def test_tracker_names_parse_and_flatten():
    from gsil.training.tracking import flatten_config, parse_trackers, tracked_values

    assert parse_trackers("tensorboard, wandb,tensorboard") == ["tensorboard", "wandb"]
    assert parse_trackers("") == parse_trackers("none") == parse_trackers(None) == []
    with pytest.raises(GsilError, match="--tracking: unknown tracker 'neptune'"):
        parse_trackers("tensorboard,neptune")
    flat = flatten_config({"lr": 1e-3, "lora_targets": ["q_proj", "v_proj"], "layout": {"global_batch_size": 4},
                           "reference": None, "gradient_checkpointing": False})
    assert flat == {"lr": 1e-3, "lora_targets": "q_proj,v_proj", "layout.global_batch_size": 4, "reference": "None",
                    "gradient_checkpointing": False}
    assert tracked_values({"step": 3, "loss": 0.5, "grad_norm": None, "tokens": 7}) == {"loss": 0.5, "tokens": 7}


def test_fresh_run_clears_only_tensorboard_files(tmp_path):
    from gsil.training.tracking import clear_tensorboard_folder

    (tmp_path / "events.out.tfevents.1.host").write_bytes(b"x")
    (tmp_path / "1718000000.25").mkdir()
    (tmp_path / "1718000000.25" / "hparams.yml").write_text("lr: 1\n")
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "plots").mkdir()
    assert clear_tensorboard_folder(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "plots"]
    assert clear_tensorboard_folder(tmp_path / "missing") == 0


# ------------------------------------------------------------------------------------------------ flags


def sft_args(model, data, out, *extra):
    return ["sft", "--model", str(model), "--data", str(data), "--output", str(out / "model"), "--metrics",
            str(out / "metrics.jsonl"), "--global-batch-size", "2", "--max-length", str(MAX_LENGTH),
            "--max-prompt-length", str(MAX_PROMPT), "--lr", "1e-3", *extra]


@pytest.fixture
def sft_data(tmp_path):
    from gsil.records import write_records

    data = tmp_path / "sft.jsonl"
    write_records(data, demonstration_rows(4), "demonstration")
    return data


@pytest.mark.parametrize("extra, message", [
    (["--tracking", "tensorboard,wandb", "--tracking-dir", "T"], "--tracking wandb: the `wandb` package is not "
                                                                 "installed"),
    (["--tracking", "mlflow"], "pip install mlflow"),
    (["--tracking", "tensorboard,neptune", "--tracking-dir", "T"], "unknown tracker 'neptune'"),
    (["--tracking", "tensorboard"], "--tracking tensorboard needs --tracking-dir"),
    (["--tracking", "tensorboard", "--tracking-dir", "T", "--tracking-project", "a/b"], "--tracking-project"),
])
def test_unavailable_or_misconfigured_tracker_fails_before_training(extra, message, monkeypatch, sft_data, tmp_path,
                                                                      capsys):
    from gsil.cli import main
    from gsil.training import tracking

    # wandb and mlflow count as missing whatever this environment has
    monkeypatch.setattr(tracking, "tracker_available", lambda name: name == "tensorboard")
    assert main(sft_args("no-such-model", sft_data, tmp_path, *extra)) == 1  # fails before the model is read
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "metrics.jsonl").exists()


def test_accelerate_availability_is_what_decides():
    from gsil.training.tracking import tracker_available

    assert tracker_available("tensorboard") is True  # importorskip above: the package is here


# ------------------------------------------------------------------------------------------------ training


def test_sft_cli_tracks_every_step_to_tensorboard(tiny_model_dir, sft_data, tmp_path):
    from gsil.cli import main

    tracking = tmp_path / "tracking" / "sft"
    assert main(sft_args(tiny_model_dir, sft_data, tmp_path, "--epochs", "2", "--tracking", "tensorboard",
                         "--tracking-dir", str(tracking), "--tracking-run", "sft")) == 0
    rows = metrics_rows(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    curves = scalars(tracking / "gsil")
    for key in ("loss", "lr", "grad_norm", "epoch", "tokens"):
        assert_curve_matches(curves[key], rows, key)
    assert "step" not in curves
    # the hyperparameters went in as TensorBoard hparams (accelerate: a timestamped folder with hparams.yml)
    hparams = [p for p in (tracking / "gsil").iterdir() if p.is_dir()]
    assert hparams and any((p / "hparams.yml").is_file() for p in hparams)
    assert "optimizer: adamw" in next(p / "hparams.yml" for p in hparams if (p / "hparams.yml").is_file()).read_text()
    # nothing about tracking in what the model carries as its training settings
    config = json.loads((tmp_path / "model" / "training_config.json").read_text())
    assert not {"tracking", "tracking_dir", "tracking_project", "tracking_run"} & set(config)


@pytest.fixture(scope="module")
def pair_examples(tiny_model_dir):
    from gsil.modeling import load_model, load_tokenizer
    from gsil.training.examples import encode_pairs
    from gsil.training.reference import attach_reference
    from gsil.training.scoring import score_pairs

    tokenizer = load_tokenizer(tiny_model_dir)
    examples, _ = encode_pairs(as_pair_objects(pair_rows(8)), tokenizer, max_length=MAX_LENGTH,
                               max_prompt_length=MAX_PROMPT, template="chat")
    rows = score_pairs(load_model(tiny_model_dir), examples, pad_token_id=tokenizer.pad_token_id, batch_size=4,
                       precision="bf16", progress=False)
    attach_reference(examples, rows, reference_path="<memory>")
    return tokenizer, examples


def _align(tiny_model_dir, pair_examples, out, **overrides):
    from gsil.modeling import load_model
    from gsil.training.loop import StopAfter, train
    from gsil.training.objectives import PairObjective
    from gsil.training.settings import TrainSettings

    tokenizer, examples = pair_examples
    stop = overrides.pop("stop_after_steps", None)
    settings = TrainSettings(**{**dict(lr=1e-3, optimizer="rmsprop", lr_scheduler="linear", warmup_ratio=0.2,
                                       global_batch_size=4, max_length=MAX_LENGTH, max_prompt_length=MAX_PROMPT,
                                       epochs=2, checkpoint_every=2, seed=1), **overrides})
    objective = PairObjective("logistic", beta=0.1, gamma=1.0, pad_token_id=tokenizer.pad_token_id)
    return train(model=load_model(tiny_model_dir), tokenizer=tokenizer, objective=objective, examples=examples,
                 settings=settings, output=out / "model", metrics_path=out / "metrics.jsonl",
                 run_settings={"loss": "logistic"}, hooks=None if stop is None else StopAfter(stop))


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_tracking_changes_no_output_and_survives_a_resume(tiny_model_dir, pair_examples, tmp_path):
    plain, tracked, resumed = tmp_path / "plain", tmp_path / "tracked", tmp_path / "resumed"
    track = dict(tracking=["tensorboard"], tracking_project="p")
    _align(tiny_model_dir, pair_examples, plain)
    _align(tiny_model_dir, pair_examples, tracked, tracking_dir=str(tmp_path / "tb-tracked"), **track)

    # the same weights, metrics (but timings) and training_config.json with and without tracking
    a, b = _weights(plain / "model"), _weights(tracked / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    timing = {"elapsed_s", "step_s", "tokens_per_s"}
    strip = [{k: v for k, v in row.items() if k not in timing} for row in metrics_rows(plain / "metrics.jsonl")]
    assert strip == [{k: v for k, v in row.items() if k not in timing}
                     for row in metrics_rows(tracked / "metrics.jsonl")]
    config = [json.loads((d / "model" / "training_config.json").read_text()) for d in (plain, tracked)]
    assert config[0] == config[1]

    # killed after step 3 (checkpoint at 2), rerun: steps 3.. are recomputed and TensorBoard shows each step once
    board = tmp_path / "tb-resumed"
    first = _align(tiny_model_dir, pair_examples, resumed, tracking_dir=str(board), stop_after_steps=3, **track)
    assert first.stopped_early
    assert [s for s, _ in scalars(board / "p")["loss"]] == [1, 2, 3]
    second = _align(tiny_model_dir, pair_examples, resumed, tracking_dir=str(board), **track)
    assert second.resumed_from_step == 2 and second.steps == 4
    rows = metrics_rows(resumed / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    curves = scalars(board / "p")
    for key in ("loss", "rewards/real", "rewards/generated", "lr"):
        assert_curve_matches(curves[key], rows, key)
    assert len(list((board / "p").glob("events.out.tfevents.*"))) == 1  # rewritten: the checkpoint's rows replayed

    # a fresh run (--resume never) starts the curves over instead of mixing in the earlier run's
    _align(tiny_model_dir, pair_examples, resumed, tracking_dir=str(board), resume="never", max_steps=2, **track)
    rows = metrics_rows(resumed / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert_curve_matches(scalars(board / "p")["loss"], rows, "loss")
    assert len(list((board / "p").glob("events.out.tfevents.*"))) == 1


# ------------------------------------------------------------------------------------------------ scores


def _result(folder, model, benchmark, value, scale="fraction", skipped=None):
    path = folder / model / f"{benchmark}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": benchmark, "metric": "acc", "value": value, "scale": scale,
                                "stderr": 0.01, "skipped": skipped}))


def test_track_scores_writes_one_scalar_per_model_and_benchmark(tmp_path, capsys):
    from gsil.tracking_scores import MANIFEST, main

    evals = tmp_path / "eval"
    _result(evals, "sft", "arith", 0.25)
    _result(evals, "sft", "mt_bench", 6.5, scale="score")
    _result(evals, "spin/iter0", "arith", 0.30)
    _result(evals, "spin/iter1", "arith", 0.35)
    _result(evals, "dpo", "mt_bench", None, skipped="no judge configured")
    (evals / "sft" / "arith.samples.jsonl").write_text("{}\n")
    (evals / "sft" / ".arith.work.x").mkdir()
    (evals / "sft" / ".arith.work.x" / "partial.json").write_text("{\"value\": 1, \"metric\": \"acc\"}")
    board = tmp_path / "tracking" / "eval"
    for _ in range(2):  # a rerun replaces the scalars, it does not add to them
        assert main(["--eval-dir", str(evals), "--tracking-dir", str(board)]) == 0
        assert scalars(board / "sft") == {"eval/arith": [(0, pytest.approx(25.0))],
                                          "eval/mt_bench": [(0, pytest.approx(6.5))]}
        assert scalars(board / "spin") == {"eval/arith": [(0, pytest.approx(30.0)), (1, pytest.approx(35.0))]}
        assert not (board / "dpo").exists()
    manifest = json.loads((board / MANIFEST).read_text())
    assert sorted((s["model"], s["benchmark"]) for s in manifest["scores"]) == [
        ("sft", "arith"), ("sft", "mt_bench"), ("spin/iter0", "arith"), ("spin/iter1", "arith")]

    foreign = tmp_path / "tracking"  # holds eval/ and would be replaced whole: refused
    assert main(["--eval-dir", str(evals), "--tracking-dir", str(foreign)]) == 1
    assert "was not written by track-scores" in capsys.readouterr().err and board.is_dir()

    _result(evals, "dpo", "arith", "n/a")
    assert main(["--eval-dir", str(evals), "--tracking-dir", str(board)]) == 1
    assert "dpo/arith.json: 'value' must be a finite number" in capsys.readouterr().err


def test_track_scores_is_a_gsil_stage_when_registered(tmp_path):
    from gsil import cli

    if "track-scores" not in cli.STAGES:
        pytest.skip("gsil.cli.STAGES has no track-scores entry yet")
    _result(tmp_path / "eval", "sft", "arith", 0.5)
    assert cli.main(["track-scores", "--eval-dir", str(tmp_path / "eval"), "--tracking-dir",
                     str(tmp_path / "tb")]) == 0
    assert scalars(tmp_path / "tb" / "sft") == {"eval/arith": [(0, pytest.approx(50.0))]}
