"""The claims verdicts and the paired comparisons, on constructed numbers and on small synthetic result folders."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest

from gsil.aggregate import claims
from gsil.aggregate.claims import CONTRADICTED, INCONCLUSIVE, NOT_RUN, SUPPORTED
from gsil.aggregate.plan import build_plan
from gsil.aggregate.report import build_all

REPO = Path(__file__).resolve().parents[1]
REPORTED = REPO / "workflow" / "gsil" / "reported_numbers.yaml"
N = 80  # items of the synthetic benchmark

CLAIMS = {"benchmark": "arith", "sft": "sft", "gsil": "gsil-logistic", "gsil_no_shift": "gsil-logistic-b0.1-g0",
          "spin": "spin", "dpo": "dpo", "non_inferiority_margin": 0.03, "confidence": 0.95,
          "bootstrap_samples": 2000, "seed": 0}


# ------------------------------------------------------------------------------------------------ verdict rules


def test_superiority_verdict_reaches_each_verdict():
    assert claims.superiority_verdict(0.5, 4.0, [])[0] == SUPPORTED
    assert claims.superiority_verdict(-4.0, -0.5, [])[0] == CONTRADICTED
    assert claims.superiority_verdict(-1.0, 3.0, [])[0] == INCONCLUSIVE
    assert claims.superiority_verdict(0.0, 3.0, [])[0] == INCONCLUSIVE  # touching 0 is not above it
    # with two or more seeds every seed must agree in sign
    assert claims.superiority_verdict(0.5, 4.0, [2.0, 1.0, 0.5])[0] == SUPPORTED
    verdict, reason = claims.superiority_verdict(0.5, 4.0, [2.0, -1.0])
    assert verdict == INCONCLUSIVE and "1 of 2 seeds" in reason
    assert claims.superiority_verdict(-4.0, -0.5, [-2.0, 0.5])[0] == INCONCLUSIVE
    assert claims.superiority_verdict(-4.0, -0.5, [-2.0, -0.5])[0] == CONTRADICTED


def test_non_inferiority_verdict_never_supports_significantly_worse():
    margin = 3.0
    assert claims.non_inferiority_verdict(-2.0, 1.0, [], margin)[0] == SUPPORTED    # tie within the margin
    assert claims.non_inferiority_verdict(0.5, 4.0, [], margin)[0] == SUPPORTED     # GSIL better
    assert claims.non_inferiority_verdict(-9.0, -4.0, [], margin)[0] == CONTRADICTED  # worse beyond the margin
    assert claims.non_inferiority_verdict(-5.0, 1.0, [], margin)[0] == INCONCLUSIVE  # CI reaches below -m
    # significantly worse, by less than the margin: not supported
    verdict, reason = claims.non_inferiority_verdict(-2.5, -0.5, [], margin)
    assert verdict == INCONCLUSIVE and "significantly worse" in reason and "less than the margin" in reason
    assert claims.non_inferiority_verdict(-5.0, -0.5, [], margin)[0] == INCONCLUSIVE
    # seeds: every seed's difference must clear -m
    assert claims.non_inferiority_verdict(-2.0, 1.0, [0.5, -1.0], margin)[0] == SUPPORTED
    assert claims.non_inferiority_verdict(-2.0, 1.0, [0.5, -3.5], margin)[0] == INCONCLUSIVE
    assert claims.non_inferiority_verdict(-9.0, -4.0, [-5.0, -2.0], margin)[0] == INCONCLUSIVE


def test_rewards_verdict_and_window():
    assert claims.rewards_verdict((0.0, 0.4), (-0.5, -0.1))[0] == SUPPORTED
    assert claims.rewards_verdict((-0.2, -0.1), (-0.5, -0.1))[0] == CONTRADICTED  # GSIL's below 0 throughout
    assert claims.rewards_verdict((0.1, 0.2), (0.0, 0.3))[0] == CONTRADICTED      # SPIN's never below 0
    assert claims.rewards_verdict((-0.1, 0.2), (-0.5, -0.1))[0] == INCONCLUSIVE   # GSIL's crosses 0
    rows = [{"step": s, "rewards/real": float(s)} for s in range(1, 10)] + [{"step": 10, "loss": 1.0}]
    assert claims.last_quarter(rows) == [7.0, 8.0, 9.0]  # ceil(9 / 4) = 3 of the 9 steps logging rewards/real
    assert claims.last_quarter(rows[:1]) == [1.0]
    assert claims.last_quarter([{"step": 1, "rewards/real": 1.0}, {"step": 1, "rewards/real": 2.0}]) == [2.0]
    assert claims.last_quarter([]) == []
    # claim (b) compares two self-play runs, logged in the paper's words; a DPO run's rows (rewards/chosen) have none
    assert claims.REWARD_KEY == "rewards/real"
    assert claims.last_quarter([{"step": s, "rewards/chosen": 0.5, "rewards/rejected": -0.5} for s in (1, 2)]) == []


def test_rules_are_written_once_and_printed():
    rules = claims.verdict_rules()
    assert rules in claims.__doc__
    for part in ("(a)", "(b)", "(c)", "(d)", "Not run", "significantly worse", "range [min, max]"):
        assert part in rules


# ------------------------------------------------------------------------------------------------ seeds in the plan


def config(**overrides) -> dict:
    base = {
        "run": "claims",
        "data": {"profile": "demo"},
        "sft": {"train": True, "label": "SFT"},
        "align_defaults": {"beta": 0.1, "gamma": 2.0, "max_length": 64, "max_prompt_length": 32},
        "generation": {"greedy": {"max_new_tokens": 8}},
        "methods": [
            {"name": "dpo", "label": "DPO", "loss": "dpo"},
            {"name": "spin", "label": "SPIN", "loss": "spin", "iterations": 2},
            {"name": "gsil-logistic", "label": "GSIL", "loss": "logistic", "iterations": 2},
        ],
        "ablations": [{"base": "gsil-logistic", "gamma": [0.0], "iterations": 2}],
        "benchmarks": [{"name": "arith", "label": "Arith"}],
        "aggregate": {"claims": dict(CLAIMS), "rewards_methods": ["spin", "gsil-logistic"]},
    }
    base.update(overrides)
    return base


def add_seed(plan: dict, seed: int) -> dict:
    """The plan with seeded copies `<method>-s<seed>` and `sft-s<seed>`, as the plan contract describes them."""
    plan = copy.deepcopy(plan)
    first = (plan.get("seeds") or [0])[0]
    plan["seeds"] = [first] + [s for s in plan.get("seeds") or [] if s != first] + [seed]
    for model in plan["models"]:
        model.setdefault("seed", first)
        model.setdefault("seed_group", model["id"])
        if model.get("seed") is None:
            model["seed"] = first
    copies = [{"id": f"sft-s{seed}", "method": "sft", "label": f"SFT (seed {seed})", "iteration": None,
               "seed": seed, "seed_group": "sft"}]
    methods = []
    for method in plan["methods"]:
        if method.get("seed_of"):
            continue
        name = f"{method['name']}-s{seed}"
        ids = [m.replace(method["name"], name, 1) for m in method["models"]]
        methods.append({**method, "name": name, "label": f"{method['label']} (seed {seed})", "models": ids,
                        "seed": seed, "seed_of": method["name"]})
        copies += [{"id": new, "method": name, "label": method["label"], "iteration": None, "seed": seed,
                    "seed_group": old} for new, old in zip(ids, method["models"])]
    plan["methods"] += methods
    plan["models"] += copies
    return plan


def test_replicas_and_seed_pairs():
    plan = add_seed(build_plan(config()), 1)
    assert claims.replicas(plan, "gsil-logistic/iter1") == {0: "gsil-logistic/iter1", 1: "gsil-logistic-s1/iter1"}
    assert claims.replicas(plan, "sft") == {0: "sft", 1: "sft-s1"}
    assert claims.replicas(plan, "nope") == {}
    # the base model has no seeded copy: it stands in for every seed
    assert claims.seed_pairs(plan, "sft", "base") == [(0, "sft", "base"), (1, "sft-s1", "base")]
    assert claims.is_seed_copy(next(m for m in plan["methods"] if m["name"] == "spin-s1"))
    assert not claims.is_seed_copy(next(m for m in plan["methods"] if m["name"] == "spin"))
    assert claims.resolve(plan, "sft") == ("sft", "SFT")
    assert claims.resolve(plan, "gsil-logistic") == ("gsil-logistic/iter1", "GSIL (iter1)")
    specs = claims.comparison_specs(plan, claims.settings_from_plan(plan))
    assert [s.name for s in specs] == [
        "DPO vs SFT", "SPIN (iter1) vs SFT", "GSIL (iter1) vs SFT", "GSIL β=0.1 γ=0 (iter1) vs SFT",
        "GSIL (iter1) vs SPIN (iter1)", "GSIL (iter1) vs DPO", "GSIL (iter1) vs GSIL β=0.1 γ=0 (iter1)"]


# ------------------------------------------------------------------------------------------------ from result files


def correct(k: int) -> list[int]:
    """The first k of the N items right (nested patterns: the model with more right also has the other's right)."""
    return [1 if i < k else 0 for i in range(N)]


# Seed 0: GSIL 48/80 vs SFT 32/80 (+20 points, 16 discordant items all GSIL's: McNemar p = 2 / 2^16);
# γ = 0: 47/80 (GSIL +1.25 points: inconclusive); DPO the same items as GSIL (difference 0, but with no
# discordant item among 80 the score interval is -/+ 100 z²/(80 + z²) = -/+ 4.58 points, wider than the 3-point
# margin: inconclusive, where a bootstrap interval would have collapsed to [0, 0] and said "supported").
SEED0 = {"sft": 32, "gsil-logistic/iter0": 40, "gsil-logistic/iter1": 48, "gsil-logistic-b0.1-g0/iter0": 40,
         "gsil-logistic-b0.1-g0/iter1": 47, "spin/iter0": 33, "spin/iter1": 34, "dpo": 48, "base": 8}
# Seed 1: GSIL is 2 items worse than its SFT model.
SEED1 = {"sft-s1": 32, "gsil-logistic-s1/iter1": 30, "gsil-logistic-b0.1-g0-s1/iter1": 30, "spin-s1/iter1": 31,
         "dpo-s1": 30}


def write_items(run_dir: Path, model: str, right: int) -> None:
    folder = run_dir / "eval" / model
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"task": "arith", "doc_id": i, "filter": "strict-match", "exact_match": float(c)}
            for i, c in enumerate(correct(right))]
    (folder / "arith.samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    record = {"benchmark": "arith", "metric": "exact_match", "value": right / N, "scale": "fraction",
              "stderr": 0.05, "n_samples": N, "samples_file": "arith.samples.jsonl",
              "protocol": {"filter": "strict-match"}}
    (folder / "arith.json").write_text(json.dumps(record))


def write_metrics(run_dir: Path, model: str, sign: float) -> None:
    path = run_dir / "train" / model / "metrics.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"step": s, "loss": 0.5, "rewards/real": sign * 0.1 * s, "rewards/generated": -0.3 * s}
            for s in range(1, 9)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def build(tmp_path: Path, plan: dict, scores: dict[str, int]) -> tuple[Path, dict]:
    run_dir = tmp_path / "results" / "claims"
    for model, right in scores.items():
        write_items(run_dir, model, right)
    for model in claims.metrics_models(plan, claims.settings_from_plan(plan)):
        write_metrics(run_dir, model, -1.0 if model.startswith("spin") else 1.0)
    out = build_all(run_dir, plan, REPORTED, run_dir / "tables", run_dir / "figures")
    return run_dir, out


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_claims_table_from_files_one_seed(tmp_path):
    plan = build_plan(config())
    run_dir, _ = build(tmp_path, plan, SEED0)
    rows = {r["Claim"]: r for r in read_csv(run_dir / "tables" / "claims.csv")}
    assert [rows[c]["Verdict"] for c in ("(a)", "(b)", "(c)", "(d)")] == [
        SUPPORTED, SUPPORTED, INCONCLUSIVE, INCONCLUSIVE]
    a = rows["(a)"]
    assert (a["Model A"], a["Model B"], a["n"]) == ("gsil-logistic/iter1", "sft", str(N))
    assert float(a["Difference"]) == pytest.approx(20.0)
    assert float(a["McNemar p"]) == pytest.approx(2 / 2 ** 16)
    assert 0 < float(a["CI low"]) < 20 < float(a["CI high"])
    assert a["Sources"] == "eval/gsil-logistic/iter1/arith.json;eval/sft/arith.json"
    assert float(rows["(c)"]["Difference"]) == pytest.approx(1.25)
    d = rows["(d)"]
    assert float(d["Difference"]) == 0.0
    assert float(d["CI low"]) == pytest.approx(-4.5817, abs=1e-3)
    assert float(d["CI high"]) == pytest.approx(4.5817, abs=1e-3)
    assert "margin 0.03 = 3 points" in d["Reason"]
    b = rows["(b)"]
    assert b["Model A"] == "gsil-logistic/iter1" and b["Model B"] == "spin/iter1"
    assert "GSIL range [0.7, 0.8]" in b["Interval"] and "SPIN range [-0.8, -0.7]" in b["Interval"]
    assert b["Sources"] == "train/gsil-logistic/iter1/metrics.jsonl;train/spin/iter1/metrics.jsonl"
    md = (run_dir / "tables" / "claims.md").read_text()
    assert claims.verdict_rules() in md and "## Verdict rules" in md

    comparisons = {(r["Model A"], r["Model B"]): r for r in read_csv(run_dir / "tables" / "comparisons.csv")}
    gsil_sft = comparisons[("gsil-logistic/iter1", "sft")]
    assert (gsil_sft["Score A"], gsil_sft["Score B"], gsil_sft["Significant"]) == ("60.0", "40.0", "yes")
    assert (gsil_sft["A better"], gsil_sft["B better"], gsil_sft["CI method"]) == ("16", "0", "tango")
    assert comparisons[("spin/iter1", "sft")]["Significant"] == "no"  # 2 items of 80
    assert ("gsil-logistic/iter1", "spin/iter1") in comparisons and ("gsil-logistic/iter1", "dpo") in comparisons
    assert "Pooled 95% CI" not in gsil_sft  # one seed: no seed columns

    cells = {r["Model"]: r for r in read_csv(run_dir / "tables" / "main_sources.csv") if r["Kind"] == "ours"}
    assert cells["gsil-logistic/iter1"]["vs SFT"] == "significant"
    assert cells["gsil-logistic/iter1"]["CI method"] == "wilson"
    assert cells["spin/iter1"]["vs SFT"] == "not significant"
    assert cells["sft"]["vs SFT"] == ""
    main_md = (run_dir / "tables" / "main.md").read_text()
    assert "| GSIL (iter1) | gsil-logistic/iter1 | **60.00** [49.05, 70.04]†" in main_md
    assert "| SPIN (iter1) | spin/iter1 | 42.50 [32.26, 53.43] |" in main_md


def test_claims_with_two_seeds_need_every_seed(tmp_path):
    plan = add_seed(build_plan(config()), 1)
    run_dir, _ = build(tmp_path, plan, SEED0 | SEED1)
    rows = {r["Claim"]: r for r in read_csv(run_dir / "tables" / "claims.csv")}
    a = rows["(a)"]
    # pooled per item: items 30, 31 average -0.5, items 32..47 +0.5 -> (16 - 2) / 2 / 80 = 8.75 points, CI above 0,
    # but seed 1's own difference is -2.5 points: inconclusive
    assert float(a["Difference"]) == pytest.approx(8.75)
    assert float(a["CI low"]) > 0
    assert a["Per-seed differences"] == "+20.00; -2.50"
    assert a["Verdict"] == INCONCLUSIVE and "1 of 2 seeds" in a["Reason"]
    assert rows["(b)"]["Verdict"] == SUPPORTED and "over 2 seeds" in rows["(b)"]["Reason"]

    comparisons = {(r["Model A"], r["Model B"]): r for r in read_csv(run_dir / "tables" / "comparisons.csv")}
    row = comparisons[("gsil-logistic/iter1", "sft")]
    assert row["Seeds"] == "2 of 2" and row["Pooled n"] == str(N)
    assert row["Pooled CI method"] == "tango-clustered" and 1.0 <= float(row["Pooled design effect"]) <= 2.0
    assert float(row["Difference mean (seeds)"]) == pytest.approx(8.75)
    assert float(row["Difference sd (seeds)"]) == pytest.approx(((20 - 8.75) ** 2 * 2) ** 0.5)  # sd of 20, -2.5
    assert row["Difference (seeds)"] == "+8.75 ± 15.91"
    seeds = {r["Model"]: r for r in read_csv(run_dir / "tables" / "seeds.csv")}
    assert float(seeds["gsil-logistic/iter1"]["Arith mean"]) == pytest.approx((60.0 + 37.5) / 2)
    assert seeds["gsil-logistic/iter1"]["Arith per seed"] == "0: 60.00; 1: 37.50"
    # seeded copies stay out of the main table
    assert [r["Model"] for r in read_csv(run_dir / "tables" / "main.csv")] == [
        "base", "sft", "dpo", "spin/iter1", "gsil-logistic/iter1"]


def test_a_run_whose_reference_was_off_its_start_makes_b_inconclusive(tmp_path):
    plan = build_plan(config())
    run_dir, _ = build(tmp_path, plan, SEED0)
    path = run_dir / "train" / "spin" / "iter1" / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0].update(start_gap=0.02, start_gap_se=0.01)  # rounding: no effect
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_all(run_dir, plan, REPORTED, run_dir / "tables", run_dir / "figures")
    assert {r["Claim"]: r for r in read_csv(run_dir / "tables" / "claims.csv")}["(b)"]["Verdict"] == SUPPORTED
    rows[0].update(start_gap=-2.1, start_gap_se=0.05)  # the H200's ZeRO-3 offset
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_all(run_dir, plan, REPORTED, run_dir / "tables", run_dir / "figures")
    b = {r["Claim"]: r for r in read_csv(run_dir / "tables" / "claims.csv")}["(b)"]
    assert b["Verdict"] == INCONCLUSIVE
    assert "train/spin/iter1/metrics.jsonl (-2.1 nats)" in b["Reason"] and "was: GSIL's rewards/real" in b["Reason"]


def test_missing_settings_and_files_are_not_run(tmp_path):
    settings = dict(CLAIMS)
    del settings["dpo"]
    plan = build_plan(config(aggregate={"claims": settings}))
    scores = {k: v for k, v in SEED0.items() if k != "gsil-logistic-b0.1-g0/iter1"}
    run_dir, _ = build(tmp_path, plan, scores)
    (run_dir / "train" / "spin" / "iter1" / "metrics.jsonl").unlink()
    build_all(run_dir, plan, REPORTED, run_dir / "tables", run_dir / "figures")
    rows = {r["Claim"]: r for r in read_csv(run_dir / "tables" / "claims.csv")}
    assert rows["(a)"]["Verdict"] == SUPPORTED
    assert rows["(b)"]["Verdict"] == NOT_RUN and "train/spin/iter1/metrics.jsonl" in rows["(b)"]["Reason"]
    assert rows["(c)"]["Verdict"] == NOT_RUN
    assert rows["(c)"]["Reason"] == "no result eval/gsil-logistic-b0.1-g0/iter1/arith.json"
    assert rows["(d)"]["Verdict"] == NOT_RUN and rows["(d)"]["Reason"] == "aggregate.claims.dpo is not set"
    other = build_plan(config(aggregate={"claims": dict(CLAIMS, benchmark="gsm8k")}))
    results = claims.evaluate_claims(other, {}, {}, {}, claims.settings_from_plan(other))
    assert results[0].verdict == NOT_RUN and "'gsm8k' is not evaluated" in results[0].reason
