"""Shared plumbing of the benchmark scripts: repeat statistics, a printed table, a JSON under results/benchmarks/."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

from gsil.io import write_json
from gsil.runinfo import run_info

DEFAULT_OUTPUT_DIR = Path("results/benchmarks")


def summarise(samples: list[float]) -> dict[str, float]:
    """Median and spread of repeated measurements (spread = max - min, also as a fraction of the median)."""
    if not samples:
        raise ValueError("no samples to summarise")
    median = statistics.median(samples)
    spread = max(samples) - min(samples)
    return {
        "median": median,
        "min": min(samples),
        "max": max(samples),
        "spread": spread,
        "relative_spread": spread / median if median else float("nan"),
        "n": len(samples),
        "samples": list(samples),
    }


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[_fmt(value) for value in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda values: "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths)))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def write_result(name: str, result: dict[str, Any], output_dir: str | os.PathLike | None = None) -> Path:
    """Write `<output_dir>/<name>.json` with the figures plus the machine and package versions."""
    path = Path(output_dir or DEFAULT_OUTPUT_DIR) / f"{name}.json"
    write_json(path, {**result, "run_info": run_info(result.get("settings", {}))})
    return path
