"""Write every table and figure of a run from its result files (what `gsil aggregate` runs)."""

from __future__ import annotations

import logging
from pathlib import Path

from gsil.aggregate import collect, compute, figures, tables

log = logging.getLogger("gsil.aggregate")

TABLE_NAMES = ("main", "main_sources", "gsil_vs_dpo", "ablation_beta", "ablation_gamma", "iterations", "compute")
FIGURE_NAMES = ("gsil_vs_dpo", "ablation", "rewards", "iterations")


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
    expected = len(plan["models"]) * len(plan["benchmarks"])
    log.info("%d of %d eval results found under %s", len(results), expected, run_dir / "eval")
    reported = collect.load_reported(reported_path)
    costs = compute.load_costs(run_dir / "benchmarks", benchmark_files)
    log.info("%d benchmark files found under %s", len(costs), run_dir / "benchmarks")

    built = {
        "main": tables.main_table(plan, results, reported),
        "main_sources": tables.main_sources_table(plan, results, reported),
        "gsil_vs_dpo": tables.gsil_vs_dpo_table(plan, results),
        "ablation_beta": tables.ablation_table(plan, results, "beta"),
        "ablation_gamma": tables.ablation_table(plan, results, "gamma"),
        "iterations": tables.iterations_table(plan, results, reported),
        "compute": tables.compute_table(compute.summarise_by_rule(costs)),
    }
    for table in built.values():
        for path in tables.write_table(table, tables_dir):
            log.info("wrote %s (%d rows)", path, len(table.rows))

    bench_labels = [b["label"] for b in plan["benchmarks"]]
    drawn = {
        "gsil_vs_dpo": figures.gsil_vs_dpo_figure(built["gsil_vs_dpo"], figures_dir / "gsil_vs_dpo.png"),
        "ablation": figures.ablation_figure(built["ablation_beta"], built["ablation_gamma"], bench_labels,
                                            figures_dir / "ablation.png"),
        "rewards": figures.rewards_figure(reward_curves(run_dir, plan), figures_dir / "rewards.png"),
        "iterations": figures.iterations_figure(built["iterations"], bench_labels, figures_dir / "iterations.png"),
    }
    for name, count in drawn.items():
        log.info("wrote %s (%d series)", figures_dir / f"{name}.png", count)
    return {"tables": built, "figures": drawn}
