"""The compute table: wall time and peak memory per workflow stage, from Snakemake's `benchmark:` TSV files.

Snakemake writes one TSV per benchmarked job (columns s, h:m:s, max_rss, max_vms, max_uss, max_pss, io_in, io_out,
mean_load, cpu_time; memory in MB) under results/<run>/benchmarks/<rule>/<wildcards>.tsv.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from gsil.logutil import GsilError


@dataclass(frozen=True)
class JobCost:
    rule: str
    job: str            # the wildcards part of the path, e.g. "spin/iter0"
    seconds: float
    max_rss_mb: float | None
    cpu_seconds: float | None
    path: str


def _number(value: str | None) -> float | None:
    if value is None or value.strip() in ("", "NA", "-"):
        return None
    return float(value)


def read_benchmark_tsv(path: Path, benchmarks_dir: Path) -> list[JobCost]:
    relative = path.relative_to(benchmarks_dir)
    rule, job = relative.parts[0], str(Path(*relative.parts[1:]).with_suffix(""))
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    if not rows:
        raise GsilError(f"{path}: benchmark file has no data row")
    costs = []
    for line_number, row in enumerate(rows, 2):
        if "s" not in row:
            raise GsilError(f"{path}:{line_number}: no 's' column (columns: {sorted(row)})")
        try:
            costs.append(JobCost(rule=rule, job=job, seconds=float(row["s"]), max_rss_mb=_number(row.get("max_rss")),
                                 cpu_seconds=_number(row.get("cpu_time")), path=str(path)))
        except ValueError as err:
            raise GsilError(f"{path}:{line_number}: {err}") from None
    return costs


def load_costs(benchmarks_dir: Path, files: list[Path] | None = None) -> list[JobCost]:
    """Costs of the given benchmark files (the workflow passes exactly its jobs' files), or of every TSV under
    `benchmarks_dir` when `files` is None (by hand; may include files of jobs no longer in the run)."""
    if files is None:
        files = sorted(benchmarks_dir.rglob("*.tsv")) if benchmarks_dir.exists() else []
    costs = []
    for path in files:
        path = Path(path)
        if not path.is_file():
            raise GsilError(f"{path}: benchmark file not found")
        costs.extend(read_benchmark_tsv(path.resolve(), benchmarks_dir.resolve()))
    return costs


def summarise_by_rule(costs: list[JobCost]) -> list[dict]:
    """One row per rule: jobs, total/mean/max wall seconds, peak RSS (MB), total CPU seconds; then a total row."""
    by_rule: dict[str, list[JobCost]] = {}
    for cost in costs:
        by_rule.setdefault(cost.rule, []).append(cost)
    rows = []
    for rule in sorted(by_rule, key=lambda r: -sum(c.seconds for c in by_rule[r])):
        jobs = by_rule[rule]
        rss = [c.max_rss_mb for c in jobs if c.max_rss_mb is not None]
        cpu = [c.cpu_seconds for c in jobs if c.cpu_seconds is not None]
        total = sum(c.seconds for c in jobs)
        rows.append({
            "stage": rule, "jobs": len(jobs), "wall_s_total": round(total, 1),
            "wall_s_mean": round(total / len(jobs), 1), "wall_s_max": round(max(c.seconds for c in jobs), 1),
            "peak_rss_mb": round(max(rss), 1) if rss else None, "cpu_s_total": round(sum(cpu), 1) if cpu else None,
        })
    if rows:
        rss_all = [r["peak_rss_mb"] for r in rows if r["peak_rss_mb"] is not None]
        cpu_all = [r["cpu_s_total"] for r in rows if r["cpu_s_total"] is not None]
        total = sum(r["wall_s_total"] for r in rows)
        rows.append({
            "stage": "total", "jobs": sum(r["jobs"] for r in rows), "wall_s_total": round(total, 1),
            "wall_s_mean": None, "wall_s_max": max(r["wall_s_max"] for r in rows),
            "peak_rss_mb": max(rss_all) if rss_all else None, "cpu_s_total": round(sum(cpu_all), 1) if cpu_all else None,
        })
    return rows
