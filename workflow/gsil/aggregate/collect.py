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

from gsil.io import iter_jsonl, read_json
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
    scale_factor: float = 1.0  # value = raw_value * scale_factor (100 for fraction-scale benchmarks)


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


def _read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise GsilError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(record, dict):
        raise GsilError(f"{path}: expected a JSON object, got {type(record).__name__}")
    return record


def load_eval(run_dir: Path, model: str, benchmark: str) -> EvalResult | None:
    """One model's score on one benchmark, or None if the file does not exist (a table leaves the cell empty)."""
    path = eval_path(run_dir, model, benchmark)
    if not path.exists():
        return None
    record = _read_record(path)
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
        n_samples=record.get("n_samples"), path=str(path.relative_to(run_dir)), scale_factor=factor,
    )


def load_all_evals(run_dir: Path, plan: dict[str, Any]) -> dict[tuple[str, str], EvalResult]:
    results = {}
    for model in plan["models"]:
        for bench in plan["benchmarks"]:
            result = load_eval(run_dir, model["id"], bench["name"])
            if result is not None:
                results[(model["id"], bench["name"])] = result
    return results


def samples_file(run_dir: Path, model: str, benchmark: str) -> Path | None:
    """The per-item samples file a result names (`samples_file`, beside the result JSON), or None when there is
    no result, the result was skipped, or it names none."""
    path = eval_path(run_dir, model, benchmark)
    if not path.exists():
        return None
    record = _read_record(path)
    if record.get("skipped") or not record.get("samples_file"):
        return None
    return path.with_name(str(record["samples_file"]))


def item_scores(run_dir: Path, model_id: str, bench: str) -> dict[str, float]:
    """Per-item scores of one model on one benchmark, {item id: score} in the result's own scale (a fraction for
    accuracy-type benchmarks), read from the samples file beside the result; {} when there is none.

    Item ids and scores per kind of samples row (see gsil.evaluation.runners):
      lm-eval     `<task>/<doc_id>` (the leaf task, so a group's subtasks do not collide); the result's metric
                  key (e.g. `exact_match`, `acc`), rows of other filters than the result's `protocol.filter` skipped
      HumanEval   `task_id`; the share of its completions that `passed` (pass@1 of that problem)
      MT-Bench    `<question_id>/turn<k>`; the judge's `rating` (unrated turns left out)
      HH safety   `id`; the conversation's `score` (unscored ones left out)
    A paired comparison uses the ids both models have (and says how many).
    """
    path = samples_file(run_dir, model_id, bench)
    if path is None:
        return {}
    if not path.is_file():
        raise GsilError(f"{path}: samples file named by {eval_path(run_dir, model_id, bench)} not found")
    record = _read_record(eval_path(run_dir, model_id, bench))
    protocol = record.get("protocol") if isinstance(record.get("protocol"), dict) else {}
    grouped: dict[str, list[float]] = {}
    for where, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise GsilError(f"{where}: a samples row must be a JSON object")
        item = _item_score(row, str(record["metric"]), protocol.get("filter"), where)
        if item is not None:
            if item[0] in grouped and "task_id" not in row:
                raise GsilError(f"{where}: item {item[0]!r} appears twice")
            grouped.setdefault(item[0], []).append(item[1])
    return {item: sum(values) / len(values) for item, values in grouped.items()}


def _item_score(row: dict[str, Any], metric: str, filter_name: str | None, where: str) -> tuple[str, float] | None:
    """(item id, score) of one samples row, or None for a row that does not count (other filter, unrated)."""
    if "doc_id" in row:
        if filter_name is not None and row.get("filter", filter_name) != filter_name:
            return None
        item, value = f"{row.get('task', '')}/{row['doc_id']}", row.get(metric)
    elif "task_id" in row and "passed" in row:
        item, value = str(row["task_id"]), row["passed"]
    elif "question_id" in row and "rating" in row:
        item, value = f"{row['question_id']}/turn{row.get('turn', 1)}", row["rating"]
    elif "id" in row and "score" in row:
        item, value = str(row["id"]), row["score"]
    else:
        raise GsilError(f"{where}: not a samples row this suite writes (keys: {sorted(row)[:8]})")
    if value is None and ("rating" in row or "score" in row):
        return None
    if isinstance(value, bool):
        value = float(value)
    if not isinstance(value, (int, float)) or math.isnan(float(value)):
        raise GsilError(f"{where}: score {metric if 'doc_id' in row else 'value'} must be a number, got {value!r}")
    return item, float(value)


def load_all_items(run_dir: Path, results: dict[tuple[str, str], EvalResult]) -> dict[tuple[str, str], dict]:
    """item_scores of every (model, benchmark) that has a result; only those with a samples file are kept."""
    items = {}
    for model, bench in results:
        scores = item_scores(run_dir, model, bench)
        if scores:
            items[(model, bench)] = scores
    return items


def metrics_path(run_dir: Path, model: str) -> Path:
    return run_dir / "train" / model / "metrics.jsonl"


def load_training_config(run_dir: Path, model: str) -> tuple[dict[str, Any] | None, Path]:
    """The training_config.json a training stage wrote into the model folder (None when absent: base, not run)."""
    path = run_dir / "models" / model / "training_config.json"
    if not path.is_file():
        return None, path
    record = read_json(path)
    if not isinstance(record, dict):
        raise GsilError(f"{path}: expected a JSON object")
    return record, path


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
