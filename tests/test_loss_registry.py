"""The loss registry is the only place that knows a loss: a throwaway loss registered with one decorator is
planned (its facts reach the planner), trained by the trainer and shown in the tables, with no other edit."""

from __future__ import annotations

import json

import pytest

from helpers import MAX_LENGTH, MAX_PROMPT, as_pair_objects, merged_config, pair_rows


@pytest.fixture
def throwaway_loss():
    from gsil.losses import LOSS_INFO, register, unregister

    @register("throwaway", shifted=True, label="GSIL (throwaway)")
    def throwaway_loss(policy_positive, policy_negative, reference_positive, reference_negative, *, beta, gamma=0.0):
        # a squared pull of f = beta*Δ + gamma towards +1 (demonstration) and -1 (generation)
        from gsil.losses import _pointwise

        return _pointwise(lambda f: (f - 1.0).square(), lambda f: (f + 1.0).square(), policy_positive,
                          policy_negative, reference_positive, reference_negative, beta, gamma)

    yield LOSS_INFO["throwaway"]
    unregister("throwaway")


def test_register_refuses_a_second_registration_and_bad_facts():
    from gsil.losses import register

    with pytest.raises(ValueError, match="already registered"):
        register("logistic", shifted=True)(lambda *a, **k: None)
    with pytest.raises(ValueError, match="data must be"):
        register("other", shifted=True, data="pairs")


def throwaway_config() -> dict:
    config = merged_config()
    config["methods"] = [{"name": "gsil-throwaway", "loss": "throwaway", "iterations": 2},
                         {"name": "spin", "loss": "spin"}]
    config["ablations"] = []
    config["seeds"] = {"values": [0], "methods": []}
    return config


def test_a_registered_loss_is_planned_from_its_facts(throwaway_loss):
    from gsil.aggregate.plan import build_plan

    config = throwaway_config()
    plan = build_plan(config)
    method = next(m for m in plan["methods"] if m["name"] == "gsil-throwaway")
    assert method["kind"] == "selfplay" and method["label"] == "GSIL (throwaway)"
    assert method["hyperparameters"]["gamma"] == config["align_defaults"]["gamma"]  # shifted: keeps γ
    spin = next(m for m in plan["methods"] if m["name"] == "spin")
    assert "gamma" not in spin["hyperparameters"]  # SPIN's facts say: no shift
    assert [m["id"] for m in plan["models"] if m["method"] == "gsil-throwaway"] == ["gsil-throwaway/iter0",
                                                                                   "gsil-throwaway/iter1"]


def test_an_unregistered_loss_is_a_plan_error():
    from gsil.aggregate.plan import PlanError, build_plan

    config = merged_config()
    config["methods"] = [{"name": "gsil-nope", "loss": "nope"}]
    with pytest.raises(PlanError, match="unknown loss 'nope'"):
        build_plan(config)


def test_a_registered_loss_trains_and_is_tabled(throwaway_loss, tiny_model_dir, tmp_path):
    from gsil.aggregate.plan import build_plan
    from gsil.aggregate.tables import main_table
    from gsil.modeling import load_model, load_tokenizer
    from gsil.training.examples import encode_pairs
    from gsil.training.loop import train
    from gsil.training.objectives import PairObjective
    from gsil.training.reference import attach_reference
    from gsil.training.scoring import score_pairs
    from gsil.training.settings import TrainSettings

    tokenizer = load_tokenizer(tiny_model_dir)
    examples, _ = encode_pairs(as_pair_objects(pair_rows(4)), tokenizer, max_length=MAX_LENGTH,
                               max_prompt_length=MAX_PROMPT, template="chat")
    rows = score_pairs(load_model(tiny_model_dir), examples, pad_token_id=tokenizer.pad_token_id, batch_size=4,
                       precision="fp32", progress=False)
    attach_reference(examples, rows, reference_path="<memory>")
    objective = PairObjective("throwaway", beta=0.1, gamma=1.0, pad_token_id=tokenizer.pad_token_id)
    settings = TrainSettings(lr=1e-3, optimizer="adamw", lr_scheduler="constant", warmup_ratio=0.0,
                             global_batch_size=4, max_length=MAX_LENGTH, max_prompt_length=MAX_PROMPT,
                             checkpoint_every=0, seed=1, precision="fp32")
    train(model=load_model(tiny_model_dir), tokenizer=tokenizer, objective=objective, examples=examples,
          settings=settings, output=tmp_path / "model", metrics_path=tmp_path / "metrics.jsonl", run_settings={})
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert metrics and all(row["loss"] == row["loss"] for row in metrics)  # trained, finite

    plan = build_plan(throwaway_config())
    table = main_table(plan, {}, [])
    assert any(throwaway_loss.label in str(value) for row in table.rows for value in row.values())
