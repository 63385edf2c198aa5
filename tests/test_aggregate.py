"""The aggregate on small synthetic result folders: rows, columns, best-value marking, sources, figures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from gsil.aggregate import collect, compute, figures, tables
from gsil.aggregate.plan import PlanError, build_methods, build_plan
from gsil.aggregate.report import FIGURE_NAMES, TABLE_NAMES, build_all
from gsil.logutil import GsilError

REPO = Path(__file__).resolve().parents[1]
REPORTED = REPO / "workflow" / "gsil" / "reported_numbers.yaml"


def small_config(**overrides) -> dict:
    config = {
        "run": "synthetic",
        "data": {"profile": "demo"},
        "sft": {"train": True, "label": "SFT"},
        "align_defaults": {"beta": 0.1, "gamma": 2.0, "max_length": 64, "max_prompt_length": 32},
        "generation": {"greedy": {"max_new_tokens": 8}},
        "methods": [
            {"name": "dpo", "label": "DPO", "loss": "dpo"},
            {"name": "spin", "label": "SPIN", "loss": "spin", "iterations": 2},
            {"name": "gsil-logistic", "label": "GSIL (logistic)", "loss": "logistic", "iterations": 2},
            {"name": "gsil-hinge", "label": "GSIL (hinge)", "loss": "hinge"},
        ],
        "ablations": [{"base": "gsil-logistic", "beta": [0.05], "gamma": [0.0], "iterations": 1}],
        "benchmarks": [
            {"name": "arith", "label": "Arith"},
            {"name": "humaneval", "label": "HumanEval"},
        ],
        "aggregate": {"gsil_vs_dpo": {"gsil": "gsil-logistic", "dpo": "dpo", "benchmarks": ["arith", "humaneval"]},
                      "rewards_methods": ["spin", "gsil-logistic"]},
    }
    config.update(overrides)
    return config


# Scores (fractions, as `gsil evaluate` writes them) of each model; chosen so that the best per column is known.
SCORES = {
    "base": {"arith": 0.10, "humaneval": 0.05},
    "sft": {"arith": 0.40, "humaneval": 0.10},
    "dpo": {"arith": 0.42, "humaneval": 0.20},
    "spin/iter0": {"arith": 0.41, "humaneval": 0.10},
    "spin/iter1": {"arith": 0.43, "humaneval": 0.10},
    "gsil-logistic/iter0": {"arith": 0.45, "humaneval": 0.15},
    "gsil-logistic/iter1": {"arith": 0.50, "humaneval": 0.15},
    "gsil-hinge/iter0": {"arith": 0.44, "humaneval": 0.10},
    "gsil-logistic-b0.05-g2/iter0": {"arith": 0.30, "humaneval": 0.05},
    "gsil-logistic-b0.1-g0/iter0": {"arith": 0.35, "humaneval": 0.10},
}


def write_run(run_dir: Path, plan: dict, skip: set[tuple[str, str]] = frozenset()) -> None:
    for model, scores in SCORES.items():
        for bench, value in scores.items():
            if (model, bench) in skip:
                continue
            path = run_dir / "eval" / model / f"{bench}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"benchmark": bench, "metric": "acc", "value": value, "stderr": 0.01,
                                        "n_samples": 20, "protocol": {}, "model": model}))
    for method in ("spin", "gsil-logistic"):
        for k in range(2):
            path = run_dir / "train" / method / f"iter{k}" / "metrics.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            real_sign = -1 if method == "spin" else 1
            rows = [{"step": s, "loss": 0.5, "rewards/real": real_sign * 0.1 * s, "rewards/generated": -0.3 * s}
                    for s in range(1, 6)]
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench_dir = run_dir / "benchmarks" / "align_selfplay" / "spin"
    bench_dir.mkdir(parents=True, exist_ok=True)
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    (bench_dir / "iter0.tsv").write_text(header + "10.5\t0:00:10\t900.0\t1\t1\t1\t0\t0\t50\t20.0\n")
    (bench_dir / "iter1.tsv").write_text(header + "12.5\t0:00:12\t1100.0\t1\t1\t1\t0\t0\t50\t22.0\n")
    eval_dir = run_dir / "benchmarks" / "evaluate_model" / "sft"
    eval_dir.mkdir(parents=True, exist_ok=True)
    (eval_dir / "arith.tsv").write_text(header + "3.0\t0:00:03\t500.0\t1\t1\t1\t0\t0\t50\t5.0\n")
    (run_dir / "plan.json").write_text(json.dumps(plan))


@pytest.fixture
def run(tmp_path):
    plan = build_plan(small_config())
    run_dir = tmp_path / "results" / "synthetic"
    write_run(run_dir, plan, skip={("gsil-hinge/iter0", "humaneval")})
    out = build_all(run_dir, plan, REPORTED, run_dir / "tables", run_dir / "figures")
    return run_dir, plan, out


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_plan_expands_methods_and_ablations():
    methods = {m.name: m for m in build_methods(small_config())}
    assert list(methods) == ["dpo", "spin", "gsil-logistic", "gsil-hinge", "gsil-logistic-b0.05-g2",
                             "gsil-logistic-b0.1-g0"]
    assert methods["gsil-logistic-b0.05-g2"].hyperparameters["beta"] == 0.05
    assert methods["gsil-logistic-b0.05-g2"].ablation_axis == "beta"
    assert methods["gsil-logistic-b0.1-g0"].hyperparameters["gamma"] == 0.0
    assert "gamma" not in methods["spin"].hyperparameters  # SPIN has no shift
    assert methods["spin"].model_ids() == ["spin/iter0", "spin/iter1"]
    assert methods["dpo"].model_ids() == ["dpo"]


def test_plan_product_grid_and_errors():
    config = small_config(ablations=[{"base": "gsil-hinge", "beta": [0.05, 0.2], "gamma": [1.0], "grid": "product"}])
    names = [m.name for m in build_methods(config) if m.ablation_of]
    assert names == ["gsil-hinge-b0.05-g1", "gsil-hinge-b0.2-g1"]
    with pytest.raises(PlanError, match="ablations\\[0\\].base"):
        build_methods(small_config(ablations=[{"base": "nope", "beta": [0.2]}]))
    with pytest.raises(PlanError, match="one round"):
        build_methods(small_config(methods=[{"name": "dpo", "loss": "dpo", "iterations": 2}]))
    with pytest.raises(PlanError, match="generation 'sampled'"):
        build_methods(small_config(methods=[{"name": "spin", "loss": "spin", "generation": "sampled"}]))


def test_main_table_rows_columns_and_best(run):
    run_dir, plan, out = run
    rows = read_csv(run_dir / "tables" / "main.csv")
    assert [r["Method"] for r in rows] == ["Base", "SFT", "DPO", "SPIN (iter1)", "GSIL (logistic) (iter1)",
                                           "GSIL (hinge)"]
    assert list(rows[0]) == ["Method", "Model", "Arith", "HumanEval", "HumanEval (paper)", "Average", "best_in"]
    by_method = {r["Method"]: r for r in rows}
    assert float(by_method["GSIL (logistic) (iter1)"]["Arith"]) == pytest.approx(50.0)
    # the missing HumanEval result of gsil-hinge stays empty, and so does its average
    assert by_method["GSIL (hinge)"]["HumanEval"] == "" and by_method["GSIL (hinge)"]["Average"] == ""
    # reported values beside ours, only where the papers report one
    assert float(by_method["SFT"]["HumanEval (paper)"]) == pytest.approx(26.82)
    assert by_method["SPIN (iter1)"]["HumanEval (paper)"] == ""
    assert by_method["GSIL (logistic) (iter1)"]["HumanEval (paper)"] == ""  # the paper's is one round, ours is iter1
    assert by_method["GSIL (logistic) (iter1)"]["best_in"] == "Arith;Average"
    assert by_method["DPO"]["best_in"] == "HumanEval"  # average (42+20)/2 = 31 < GSIL's (50+15)/2 = 32.5
    md = (run_dir / "tables" / "main.md").read_text()
    assert "| GSIL (logistic) (iter1) | gsil-logistic/iter1 | **50.00** [48.04, 51.96] |" in md
    assert "**20.00** [18.04, 21.96]" in md
    assert "| GSIL (hinge) | gsil-hinge/iter0 | 44.00 [42.04, 45.96] |  |" in md  # a missing result: no CI


def test_main_sources_name_every_cell(run):
    run_dir, _, _ = run
    rows = read_csv(run_dir / "tables" / "main_sources.csv")
    ours = [r for r in rows if r["Kind"] == "ours"]
    assert len(ours) == 6 * 2 - 1  # six rows, two benchmarks, one result missing
    for row in ours:
        assert (run_dir / row["Source"]).exists()
    paper = [r for r in rows if r["Kind"] != "ours"]
    assert paper and all(r["Source"].startswith("https://") for r in paper)
    # our cells' CIs: without per-item samples from the result's stderr (0.01 -> 1 point), 50 -/+ 1.96
    gsil = next(r for r in ours if r["Model"] == "gsil-logistic/iter1" and r["Benchmark"] == "Arith")
    assert float(gsil["CI low"]) == pytest.approx(48.04, abs=0.01)
    assert float(gsil["CI high"]) == pytest.approx(51.96, abs=0.01)
    assert gsil["CI method"] == "stderr" and gsil["vs SFT"] == ""  # no items: no paired test
    assert all(r["CI low"] == "" for r in paper)


def test_gsil_vs_dpo_ablation_iteration_compute_tables(run):
    run_dir, _, _ = run
    gvd = read_csv(run_dir / "tables" / "gsil_vs_dpo.csv")
    assert [r["Benchmark"] for r in gvd] == ["Arith", "HumanEval"]
    assert [r["Better"] for r in gvd] == ["GSIL", "DPO"]
    assert float(gvd[0]["GSIL - DPO"]) == pytest.approx(8.0)

    beta = read_csv(run_dir / "tables" / "ablation_beta.csv")
    assert [(r["β"], r["Model"]) for r in beta] == [("0.05", "gsil-logistic-b0.05-g2/iter0"),
                                                   ("0.1", "gsil-logistic/iter0")]
    gamma = read_csv(run_dir / "tables" / "ablation_gamma.csv")
    assert [(r["γ"], r["Model"]) for r in gamma] == [("0.0", "gsil-logistic-b0.1-g0/iter0"),
                                                    ("2.0", "gsil-logistic/iter0")]
    assert gamma[1]["best_in"] == "Arith;HumanEval"

    iters = read_csv(run_dir / "tables" / "iterations.csv")
    assert [(r["Method"], r["Iteration"]) for r in iters] == [
        ("SPIN", "start (SFT)"), ("SPIN", "iter0"), ("SPIN", "iter1"),
        ("GSIL (logistic)", "start (SFT)"), ("GSIL (logistic)", "iter0"), ("GSIL (logistic)", "iter1")]

    comp = read_csv(run_dir / "tables" / "compute.csv")
    assert [r["stage"] for r in comp] == ["align_selfplay", "evaluate_model", "total"]
    assert float(comp[0]["wall_s_total"]) == pytest.approx(23.0)
    assert float(comp[0]["peak_rss_mb"]) == pytest.approx(1100.0)
    assert int(comp[-1]["jobs"]) == 3


def test_figures_are_pngs_with_content(run):
    run_dir, _, out = run
    for name in FIGURE_NAMES:
        data = (run_dir / "figures" / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
    # overview: 6 main rows x 2 benchmarks, one result missing
    assert out["figures"] == {"overview": 11, "gsil_vs_dpo": 2, "ablation": 4, "rewards": 2, "iterations": 4}
    assert set(out["tables"]) == set(TABLE_NAMES)
    for name in TABLE_NAMES:
        assert (run_dir / "tables" / f"{name}.md").exists() and (run_dir / "tables" / f"{name}.csv").exists()


def test_rewards_figure_draws_dpo_with_its_own_words_and_leaves_out_runs_without_rewards(tmp_path):
    selfplay = [{"step": s, "round": 0, "rewards/real": 0.1 * s, "rewards/generated": -0.1 * s} for s in (1, 2)]
    preference = [{"step": s, "round": 0, "rewards/chosen": 0.2 * s, "rewards/rejected": -0.2 * s,
                   "rewards/margin": 0.4 * s} for s in (1, 2)]
    no_rewards = [{"step": 1, "round": 0, "loss": 1.0}]
    assert figures.reward_kind(selfplay) == "selfplay" and figures.reward_kind(preference) == "preference"
    assert figures.reward_kind(no_rewards) is None and figures.reward_kind([]) is None
    path = tmp_path / "rewards.png"
    assert figures.rewards_figure({"SPIN": selfplay, "DPO": preference, "SFT": no_rewards}, path) == 2
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert figures.rewards_figure({"SFT": no_rewards}, tmp_path / "none.png") == 0


def test_a_dpo_method_in_rewards_methods_is_drawn_from_rewards_chosen(tmp_path):
    config = small_config()
    config["aggregate"]["rewards_methods"] = ["dpo", "spin", "gsil-logistic"]
    plan = build_plan(config)
    run_dir = tmp_path / "results" / "synthetic"
    write_run(run_dir, plan)
    path = run_dir / "train" / "dpo" / "metrics.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"step": s, "loss": 0.6, "rewards/chosen": 0.1 * s, "rewards/rejected": -0.1 * s} for s in range(1, 4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = build_all(run_dir, plan, REPORTED, run_dir / "tables", run_dir / "figures")
    assert out["figures"]["rewards"] == 3


def test_error_bars_follow_the_tables_ci_columns():
    rows = [{"GSIL": 50.0, "GSIL CI low": 45.0, "GSIL CI high": 56.0}, {"GSIL": 10.0}, {"GSIL": None}]
    assert figures.errors(rows, "GSIL") == [[5.0, 0.0, 0.0], [6.0, 0.0, 0.0]]


def test_empty_run_still_writes_every_output(tmp_path):
    plan = build_plan(small_config(ablations=[]))
    run_dir = tmp_path / "empty"
    run_dir.mkdir()
    out = build_all(run_dir, plan, REPORTED, run_dir / "tables", run_dir / "figures")
    assert "No results for this table" in (run_dir / "tables" / "ablation_beta.md").read_text()
    assert (run_dir / "figures" / "ablation.png").exists()
    assert out["figures"]["rewards"] == 0
    rows = read_csv(run_dir / "tables" / "main.csv")
    assert len(rows) == 6 and all(r["Arith"] == "" for r in rows)
    assert out["figures"]["overview"] == 0
    claims = read_csv(run_dir / "tables" / "claims.csv")
    assert [r["Verdict"] for r in claims] == ["not run"] * 4  # no aggregate.claims settings
    assert all(r["Reason"] for r in claims)
    comparisons = read_csv(run_dir / "tables" / "comparisons.csv")
    assert comparisons and all(r["Note"].startswith("no result eval/") for r in comparisons)


def test_bad_result_files_name_the_file(tmp_path):
    path = tmp_path / "eval" / "sft" / "arith.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"metric": "acc"}))
    with pytest.raises(GsilError, match="arith.json: missing key 'value'"):
        collect.load_eval(tmp_path, "sft", "arith")
    metrics = tmp_path / "train" / "sft" / "metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    metrics.write_text('{"step": 1}\n{"loss": 2}\n')
    with pytest.raises(GsilError, match="metrics.jsonl:2"):
        collect.load_metrics(tmp_path, "sft")
    tsv = tmp_path / "benchmarks" / "sft_train" / "sft.tsv"
    tsv.parent.mkdir(parents=True)
    tsv.write_text("h:m:s\tmax_rss\n0:00:01\t10\n")
    with pytest.raises(GsilError, match="no 's' column"):
        compute.load_costs(tmp_path / "benchmarks")


def test_reported_numbers_file_has_a_url_for_every_number():
    entries = collect.load_reported(REPORTED)
    assert len(entries) == 14
    data = yaml.safe_load(REPORTED.read_text())
    assert all(e["source"].startswith("https://") for e in data["reported"])
    assert tables.find_reported(entries, "spin", 1, "mtbench").value == pytest.approx(6.65)
    assert tables.find_reported(entries, "gsil-logistic", 0, "humaneval").value == pytest.approx(36.58)
    assert tables.find_reported(entries, "gsil-logistic", 1, "humaneval") is None


def test_best_marking_skips_all_equal_columns_and_marks_ties():
    table = tables.Table("t", "T", ["A", "B", "C"], [{"A": 1.0, "B": 2.0, "C": 3.0}, {"A": 1.0, "B": 2.0, "C": 1.0},
                                                     {"A": 1.0, "B": 1.0, "C": None}],
                         ranked={"A": True, "B": True, "C": False})
    assert table.best() == {"B": {0, 1}, "C": {1}}
    md = tables.to_markdown(table)
    assert "| 1.00 | **2.00** | 3.00 |" in md and "| 1.00 | **2.00** | **1.00** |" in md
    assert tables.to_csv(table).splitlines()[1:] == ["1.0,2.0,3.0,B", "1.0,2.0,1.0,B;C", "1.0,1.0,,"]


def write_result(run_dir: Path, model: str, bench: str, value: float | None, rows: list[dict],
                 **extra) -> Path:
    folder = run_dir / "eval" / model
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{bench}.samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    record = {"benchmark": bench, "metric": "exact_match", "value": value, "stderr": None, "n_samples": len(rows),
              "samples_file": f"{bench}.samples.jsonl", "protocol": {"filter": "strict-match"}, **extra}
    (folder / f"{bench}.json").write_text(json.dumps(record))
    return folder / f"{bench}.samples.jsonl"


def test_item_scores_of_each_samples_kind(tmp_path):
    lm_eval = [{"task": "arith", "doc_id": i, "filter": "strict-match", "exact_match": float(i < 2)} for i in range(3)]
    lm_eval.append({"task": "arith", "doc_id": 0, "filter": "flexible-extract", "exact_match": 0.0})  # other filter
    write_result(tmp_path, "sft", "arith", 2 / 3, lm_eval)
    assert collect.item_scores(tmp_path, "sft", "arith") == {"arith/0": 1.0, "arith/1": 1.0, "arith/2": 0.0}
    # HumanEval: rows per completion, the item is the problem, its score the share of passing completions
    humaneval = [{"task_id": "HumanEval/0", "completion_id": k, "passed": k == 0} for k in range(2)]
    humaneval.append({"task_id": "HumanEval/1", "completion_id": 0, "passed": True})
    write_result(tmp_path, "sft", "humaneval", 0.75, humaneval, metric="pass@1")
    assert collect.item_scores(tmp_path, "sft", "humaneval") == {"HumanEval/0": 0.5, "HumanEval/1": 1.0}
    mtbench = [{"question_id": "81", "turn": 1, "rating": 7}, {"question_id": "81", "turn": 2, "rating": None}]
    write_result(tmp_path, "sft", "mtbench", 7.0, mtbench, metric="mtbench_score", scale="score_1_10")
    assert collect.item_scores(tmp_path, "sft", "mtbench") == {"81/turn1": 7.0}
    write_result(tmp_path, "sft", "hh", 0.5, [{"id": "a", "score": 0.5}, {"id": "b", "score": None}], metric="win_rate")
    assert collect.item_scores(tmp_path, "sft", "hh") == {"a": 0.5}
    # no result, a skipped result, a result without samples: no items
    assert collect.item_scores(tmp_path, "dpo", "arith") == {}
    write_result(tmp_path, "dpo", "arith", None, [], skipped="no judge")
    assert collect.item_scores(tmp_path, "dpo", "arith") == {}


def test_item_scores_errors_name_the_file(tmp_path):
    path = write_result(tmp_path, "sft", "arith", 1.0, [{"task": "arith", "doc_id": 0, "acc": 1.0}])
    with pytest.raises(GsilError, match="arith.samples.jsonl:1: score exact_match must be a number, got None"):
        collect.item_scores(tmp_path, "sft", "arith")
    path.write_text(json.dumps({"task": "arith", "doc_id": 0, "exact_match": 1}) + "\n" +
                    json.dumps({"task": "arith", "doc_id": 0, "exact_match": 0}) + "\n")
    with pytest.raises(GsilError, match="samples.jsonl:2: item 'arith/0' appears twice"):
        collect.item_scores(tmp_path, "sft", "arith")
    path.unlink()
    with pytest.raises(GsilError, match="samples file named by .*arith.json not found"):
        collect.item_scores(tmp_path, "sft", "arith")
