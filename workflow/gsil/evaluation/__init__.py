"""Scoring models: lm-eval benchmarks, HumanEval execution, MT-Bench and Anthropic-HH judging.

`evaluate_model` runs one benchmark on one model and writes one result JSON (schema below); the benchmark names
and their default protocols are in `gsil.evaluation.benchmarks`.

Result JSON (`results/<run>/eval/<model>/<benchmark>.json`)::

    benchmark     registry name ("arith", "arc_challenge", ...)
    description   what the benchmark measures
    metric        headline metric name ("exact_match", "acc_norm", "pass@1", "mtbench_score", "win_rate")
    value         the headline number, or null when skipped
    scale         "fraction" (value in [0, 1]) or "score_1_10" (MT-Bench)
    stderr        standard error of value, or null
    n_samples     documents / problems / questions / conversations scored
    skipped       null, or why no score was produced (no judge configured, execution off)
    protocol      every resolved protocol setting + runner, harness name/version, results key
    model         {path, source (source.json), revision, producer (run_info.json settings + git commit)}
    details       runner-specific (all metrics, per-turn scores, pass counts, judge stats, ...); for an lm-eval
                  group task (mmlu) `details.aggregation` says which mean `value` is (protocol key aggregation:
                  "subtask_mean" = unweighted over the subtasks, "harness" = lm-eval's group value, size-weighted
                  for mmlu) and keeps both means, the subtask count, missing subtasks and every subtask's score
    samples_file  name of the per-document JSONL beside the result (null when none)
    seconds       wall-clock seconds of the evaluation
    run_info      gsil.runinfo record (settings, package versions, git commit, machine)
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from gsil.evaluation.benchmarks import BENCHMARKS, get_benchmark, resolve_protocol
from gsil.logutil import GsilError

log = logging.getLogger("gsil.evaluate")

RESULT_KEYS = ("benchmark", "description", "metric", "value", "scale", "stderr", "n_samples", "skipped",
               "protocol", "model", "details", "samples_file", "seconds", "run_info")


def model_provenance(model_dir: Path) -> dict[str, Any]:
    """Where the model came from: its source.json (prepare-model) and the run_info.json of the stage that made it."""
    from gsil.io import read_json

    info: dict[str, Any] = {"path": str(model_dir.resolve()), "source": None, "revision": None, "producer": None}
    source = model_dir / "source.json"
    if source.is_file():
        info["source"] = read_json(source)
        if isinstance(info["source"], dict):
            info["revision"] = info["source"].get("revision")
    producer = model_dir / "run_info.json"
    if producer.is_file():
        record = read_json(producer)
        if isinstance(record, dict):
            info["producer"] = {k: record.get(k) for k in ("settings", "git_commit", "finished_at", "argv")}
    return info


def check_model_dir(model_dir: Path) -> None:
    if not model_dir.exists():
        raise GsilError(f"model folder {model_dir} does not exist")
    if not (model_dir / "config.json").is_file():
        raise GsilError(f"model folder {model_dir} is not a Hugging Face checkpoint (no config.json)")


def samples_path(output: Path) -> Path:
    return output.with_name(output.stem + ".samples.jsonl")


def evaluate_model(model_dir: str | os.PathLike, benchmark: str, output: str | os.PathLike,
                   data_dir: str | os.PathLike | None = None,
                   overrides: list[dict[str, Any] | None] | None = None) -> dict[str, Any]:
    """Score `model_dir` on `benchmark`; write the result JSON at `output` (+ samples JSONL); return the result."""
    from gsil.evaluation import runners
    from gsil.io import write_json, write_jsonl
    from gsil.runinfo import run_info

    spec = get_benchmark(benchmark)
    protocol = resolve_protocol(spec, *(overrides or []))
    model_path, output_path = Path(model_dir), Path(output)
    check_model_dir(model_path)
    data_path = Path(data_dir).resolve() if data_dir is not None else None
    if data_path is not None and not data_path.is_dir():
        raise GsilError(f"data folder {data_path} does not exist")
    output_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f".{output_path.stem}.work.", dir=output_path.parent) as work:
        work_dir = Path(work)
        if spec.runner == "lm_eval":
            outcome = runners.run_lm_eval(model_path, protocol, work_dir, data_path)
        elif spec.runner == "humaneval":
            outcome = runners.run_humaneval(model_path, protocol, work_dir, data_path)
        elif spec.runner == "mtbench":
            outcome = runners.run_mtbench(model_path, protocol, work_dir, data_path,
                                          output_path.with_name(output_path.stem + ".judge_cache.jsonl"))
        elif spec.runner == "hh_safety":
            outcome = runners.run_hh_safety(model_path, protocol, work_dir, data_path,
                                            output_path.with_name(output_path.stem + ".judge_cache.jsonl"))
        else:  # a registry entry with a runner nobody implemented is a programming error
            raise AssertionError(f"benchmark {benchmark!r} has unknown runner {spec.runner!r}")
    seconds = time.perf_counter() - started
    sample_file = None
    if outcome.samples:
        sample_file = samples_path(output_path)
        write_jsonl(sample_file, outcome.samples)
    if outcome.skipped:
        log.warning("%s skipped: %s", benchmark, outcome.skipped)
    else:
        log.info("%s = %s (stderr %s, n=%d) in %.1f s", benchmark, outcome.value, outcome.stderr,
                 outcome.n_samples, seconds)
    result = {
        "benchmark": spec.name,
        "description": spec.description,
        "metric": outcome.metric,
        "value": outcome.value,
        "scale": spec.scale,
        "stderr": outcome.stderr,
        "n_samples": outcome.n_samples,
        "skipped": outcome.skipped,
        "protocol": {**protocol, "runner": spec.runner, **outcome.protocol_extra},
        "model": model_provenance(model_path),
        "details": outcome.details,
        "samples_file": sample_file.name if sample_file else None,
        "seconds": round(seconds, 2),
    }
    result["run_info"] = run_info({"model": str(model_path), "benchmark": benchmark, "output": str(output_path),
                                   "data_dir": str(data_path) if data_path else None, "protocol": protocol})
    write_json(output_path, result)
    return result


__all__ = ["BENCHMARKS", "RESULT_KEYS", "evaluate_model", "get_benchmark", "resolve_protocol"]
