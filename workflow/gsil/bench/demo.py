"""Wall time of the whole demo workflow from an empty results folder, per stage.

Runs the README's main command (`snakemake --cores N`) with the overlay `config/bench-demo.yaml`, a fixed copy of
the demo's sizes of 2026-11-29 (the demo itself has grown since: the figure stays comparable across code changes
only if the work stays the same), into its own run folder so the user's `results/demo/` is left alone, then reads
every rule's Snakemake benchmark file (`results/<run>/benchmarks/<rule>/*.tsv`).
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from gsil.bench.report import format_table, summarise


def read_benchmark_tsvs(benchmark_dir: Path) -> dict[str, dict[str, float]]:
    """Per rule: job count, summed wall seconds and the largest max_rss (MB) over its benchmark files."""
    per_rule: dict[str, dict[str, float]] = defaultdict(lambda: {"jobs": 0, "wall_s": 0.0, "max_rss_mb": 0.0})
    for tsv in sorted(benchmark_dir.rglob("*.tsv")):
        rule = tsv.relative_to(benchmark_dir).parts[0]
        with open(tsv, newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                stats = per_rule[rule]
                stats["jobs"] += 1
                stats["wall_s"] += float(row["s"])
                rss = row.get("max_rss", "NA")
                if rss not in ("NA", "", None):
                    stats["max_rss_mb"] = max(stats["max_rss_mb"], float(rss))
    return dict(per_rule)


FIXED_SIZES = "config/bench-demo.yaml"


def run(*, cores: int = 2, run_name: str = "bench-demo", repeats: int = 1, snakemake: str | None = None,
        extra_args: list[str] | None = None, configfile: str = FIXED_SIZES) -> dict:
    snakemake = snakemake or str(Path(sys.executable).with_name("snakemake"))
    run_dir = Path("results") / run_name
    walls, per_rule = [], {}
    for _ in range(repeats):
        shutil.rmtree(run_dir, ignore_errors=True)
        cmd = [snakemake, "--cores", str(cores), "--configfile", configfile, "--config", f"run={run_name}",
               *(extra_args or [])]
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        walls.append(time.perf_counter() - start)
        per_rule = read_benchmark_tsvs(run_dir / "benchmarks")
    rows = [[rule, int(s["jobs"]), s["wall_s"], s["max_rss_mb"]] for rule, s in sorted(per_rule.items())]
    print(format_table(["rule", "jobs", "wall s (sum)", "peak RSS MB"], rows))
    wall = summarise(walls)
    print(f"whole demo: {wall['median']:.0f} s median over {len(walls)} run(s)")
    return {"whole_demo_wall_s": wall, "per_rule": per_rule,
            "settings": {"cores": cores, "run": run_name, "configfile": configfile}}
