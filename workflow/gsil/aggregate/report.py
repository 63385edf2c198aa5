"""Write every table and figure of a run from its result files (what `gsil aggregate` runs)."""

from __future__ import annotations

import logging
from pathlib import Path

from gsil.aggregate import claims, collect, compute, figures, tables
from gsil.aggregate.outputs import FIGURE_NAMES, TABLE_NAMES

__all__ = ["FIGURE_NAMES", "TABLE_NAMES", "build_all", "reward_curves"]

log = logging.getLogger("gsil.aggregate")


def reward_curves(run_dir: Path, plan: dict) -> dict[str, list[dict]]:
    """Training metrics of each method named in aggregate.rewards_methods, every round, tagged with its round."""
    wanted = (plan.get("aggregate") or {}).get("rewards_methods") or []
    curves = {}
    for method in plan["methods"]:
        if method["name"] not in wanted:
            continue
        rows = []
        for round_index, model in enumerate(method["models"]):
            rows += [dict(r, round=round_index) for r in collect.load_metrics(run_dir, model)]
        curves[method["label"]] = rows
    return curves


def build_all(run_dir: Path, plan: dict, reported_path: Path, tables_dir: Path, figures_dir: Path,
              benchmark_files: list[Path] | None = None) -> dict:
    """Write tables/*.md|csv and figures/*.png; returns {name: Table} plus a count of drawn items per figure."""
    results = collect.load_all_evals(run_dir, plan)
    expected = sum(len(b.get("models", plan["models"])) for b in plan["benchmarks"])
    log.info("%d of %d eval results found under %s", len(results), expected, run_dir / "eval")
    reported = collect.load_reported(reported_path)
    costs = compute.load_costs(run_dir / "benchmarks", benchmark_files)
    log.info("%d benchmark files found under %s", len(costs), run_dir / "benchmarks")
    items = collect.load_all_items(run_dir, results)
    log.info("%d of %d results have per-item samples", len(items), len(results))
    settings = claims.settings_from_plan(plan)
    metrics = {m: collect.load_metrics(run_dir, m) for m in claims.metrics_models(plan, settings)}
    intervals = claims.score_intervals(results, items, settings)
    comparisons = claims.all_comparisons(plan, results, items, settings)
    verdicts = claims.evaluate_claims(plan, results, items, metrics, settings)
    multi_seed = len(plan.get("seeds") or [0]) > 1

    main = tables.main_table(plan, results, reported, intervals, comparisons)
    built = {
        "main": main,
        "main_sources": tables.main_sources_table(plan, results, reported, main),
        "comparisons": tables.comparisons_table(comparisons, settings, multi_seed),
        "claims": tables.claims_table(verdicts, settings),
        "seeds": tables.seeds_table(plan, results),
        "scale": tables.scale_table(plan, {m["id"]: collect.load_training_config(run_dir, m["id"])
                                           for m in plan["models"]}),
        "gsil_vs_dpo": tables.gsil_vs_dpo_table(plan, results, intervals),
        "ablation_beta": tables.ablation_table(plan, results, "beta", intervals),
        "ablation_gamma": tables.ablation_table(plan, results, "gamma", intervals),
        "iterations": tables.iterations_table(plan, results, reported, intervals),
        "compute": tables.compute_table(compute.summarise_by_rule(costs)),
    }
    for verdict in verdicts:
        log.info("claim (%s): %s (%s)", verdict.claim, verdict.verdict, verdict.reason)
    for table in built.values():
        for path in tables.write_table(table, tables_dir):
            log.info("wrote %s (%d rows)", path, len(table.rows))

    bench_labels = [b["label"] for b in plan["benchmarks"]]
    drawn = {
        "overview": figures.overview_figure(built["main"], bench_labels, figures_dir / "overview.png",
                                            plan.get("sft_model", "sft")),
        "gsil_vs_dpo": figures.gsil_vs_dpo_figure(built["gsil_vs_dpo"], figures_dir / "gsil_vs_dpo.png"),
        "ablation": figures.ablation_figure(built["ablation_beta"], built["ablation_gamma"], bench_labels,
                                            figures_dir / "ablation.png"),
        "rewards": figures.rewards_figure(reward_curves(run_dir, plan), figures_dir / "rewards.png"),
        "iterations": figures.iterations_figure(built["iterations"], bench_labels, figures_dir / "iterations.png"),
    }
    for name, count in drawn.items():
        log.info("wrote %s (%d series)", figures_dir / f"{name}.png", count)
    return {"tables": built, "figures": drawn}
