"""Read a run's result files into plain Python data: eval JSONs, training metrics, reported numbers.

Nothing here computes a number; tables.py and figures.py do, from what these functions return. Every loaded value
keeps the path it came from, so each table cell can name its source file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gsil.io import iter_jsonl
from gsil.logutil import GsilError

# Scales of benchmark values: fractions are shown as percentages (as the papers print them), scores as they are.
FRACTION = "fraction"


@dataclass(frozen=True)
class EvalResult:
    model: str
    benchmark: str
    value: float          # as shown in tables: percent for fraction-scale benchmarks
    raw_value: float      # as written by `gsil evaluate`
    stderr: float | None  # same unit as `value`
    metric: str
    n_samples: int | None
    path: str             # relative to the run folder


@dataclass(frozen=True)
class Reported:
    method: str
    iteration: int | None
    benchmark: str
    value: float
    origin: str
    paper: str
    source: str
    note: str


def load_plan(path: str | Path) -> dict[str, Any]:
    try:
        plan = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GsilError(f"{path}: run plan not found (written by the workflow's write_plan job)") from None
    except json.JSONDecodeError as err:
        raise GsilError(f"{path}: not valid JSON ({err})") from None
    for key in ("run", "models", "methods", "benchmarks"):
        if key not in plan:
            raise GsilError(f"{path}: run plan has no {key!r} key")
    return plan


def eval_path(run_dir: Path, model: str, benchmark: str) -> Path:
    return run_dir / "eval" / model / f"{benchmark}.json"


def load_eval(run_dir: Path, model: str, benchmark: str) -> EvalResult | None:
    """One model's score on one benchmark, or None if the file does not exist (a table leaves the cell empty)."""
    path = eval_path(run_dir, model, benchmark)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise GsilError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(record, dict):
        raise GsilError(f"{path}: expected a JSON object, got {type(record).__name__}")
    for key in ("value", "metric"):
        if key not in record:
            raise GsilError(f"{path}: missing key {key!r}")
    if record.get("skipped"):
        return None  # e.g. a judged benchmark without a judge: the cell stays empty
    raw = record["value"]
    if raw is None or not isinstance(raw, (int, float)) or math.isnan(float(raw)):
        raise GsilError(f"{path}: 'value' must be a number, got {raw!r}")
    factor = 100.0 if record.get("scale", FRACTION) == FRACTION else 1.0
    stderr = record.get("stderr")
    return EvalResult(
        model=model, benchmark=benchmark, value=float(raw) * factor, raw_value=float(raw),
        stderr=None if stderr is None else float(stderr) * factor, metric=str(record["metric"]),
        n_samples=record.get("n_samples"), path=str(path.relative_to(run_dir)),
    )


def load_all_evals(run_dir: Path, plan: dict[str, Any]) -> dict[tuple[str, str], EvalResult]:
    results = {}
    for model in plan["models"]:
        for bench in plan["benchmarks"]:
            result = load_eval(run_dir, model["id"], bench["name"])
            if result is not None:
                results[(model["id"], bench["name"])] = result
    return results


def metrics_path(run_dir: Path, model: str) -> Path:
    return run_dir / "train" / model / "metrics.jsonl"


def load_metrics(run_dir: Path, model: str) -> list[dict[str, Any]]:
    """Per-step training metrics of the run that produced `model` ([] when the file does not exist)."""
    path = metrics_path(run_dir, model)
    if not path.exists():
        return []
    rows = []
    for where, row in iter_jsonl(path):
        if not isinstance(row, dict) or "step" not in row:
            raise GsilError(f"{where}: a metrics row needs a 'step' field")
        rows.append(row)
    return rows


def load_reported(path: str | Path) -> list[Reported]:
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise GsilError(f"{path}: reported-numbers file not found") from None
    entries = data.get("reported")
    if not isinstance(entries, list):
        raise GsilError(f"{path}: expected a top-level 'reported' list")
    out = []
    for index, entry in enumerate(entries):
        for key in ("method", "benchmark", "value", "source"):
            if key not in entry:
                raise GsilError(f"{path}: reported[{index}] has no {key!r}")
        if not str(entry["source"]).startswith("http"):
            raise GsilError(f"{path}: reported[{index}].source must be a URL, got {entry['source']!r}")
        out.append(Reported(
            method=str(entry["method"]), iteration=entry.get("iteration"), benchmark=str(entry["benchmark"]),
            value=float(entry["value"]), origin=str(entry.get("origin", "paper")), paper=str(entry.get("paper", "")),
            source=str(entry["source"]), note=str(entry.get("note", "")),
        ))
    return out
