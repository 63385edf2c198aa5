"""Scoring models: lm-eval benchmarks, HumanEval execution, MT-Bench and Anthropic-HH judging.

`evaluate_benchmarks` scores one model on several benchmarks in one process and writes one result JSON per benchmark
(schema below); `evaluate_model` is the one-benchmark case. The benchmark names and their default protocols are in
`gsil.evaluation.benchmarks`; results are cached by what they depend on (`gsil.evaluation.cache`).

Result JSON (`results/<run>/eval/<model>/<benchmark>.json`)::

    benchmark     registry name ("arith", "arc_challenge", ...)
    description   what the benchmark measures
    metric        headline metric name ("exact_match", "acc_norm", "pass@1", "mtbench_score", "win_rate")
    value         the headline number, or null when skipped
    scale         "fraction" (value in [0, 1]) or "score_1_10" (MT-Bench)
    stderr        standard error of value, or null
    n_samples     documents / problems / questions / conversations scored
    skipped       null, or why no score was produced (no judge configured, execution off, the benchmark's
                  `models` patterns in the workflow config do not select this model)
    protocol      every resolved protocol setting + runner, harness name/version, results key
    model         {path, source (source.json), revision, producer (run_info.json settings + git commit)}
    details       runner-specific (all metrics, per-turn scores, pass counts, judge stats, ...); for an lm-eval
                  group task (mmlu) `details.aggregation` says which mean `value` is (protocol key aggregation:
                  "subtask_mean" = unweighted over the subtasks, "harness" = lm-eval's group value, size-weighted
                  for mmlu) and keeps both means, the subtask count, missing subtasks and every subtask's score
    samples_file  name of the per-document JSONL beside the result (null when none)
    seconds       wall-clock seconds of the evaluation (of the original run when the result came from the cache)
    cache_key     the result-cache key (gsil.evaluation.cache), or null when computed without the cache
    run_info      gsil.runinfo record (settings, package versions, git commit, machine)
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gsil.evaluation.benchmarks import BENCHMARKS, Benchmark, get_benchmark, resolve_protocol
from gsil.evaluation.cache import ResultCache, cache_key, restore
from gsil.logutil import GsilError

log = logging.getLogger("gsil.evaluate")

RESULT_KEYS = ("benchmark", "description", "metric", "value", "scale", "stderr", "n_samples", "skipped",
               "protocol", "model", "details", "samples_file", "seconds", "cache_key", "run_info")


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


@dataclass(frozen=True)
class Request:
    """One benchmark to score: where its result goes and the protocol layers on top of the registry defaults (or
    `skip`: write a result that says why this model is not scored on it, without loading anything)."""
    benchmark: str
    output: Path
    overrides: tuple[dict[str, Any] | None, ...] = ()
    skip: str | None = None


def evaluate_model(model_dir: str | os.PathLike, benchmark: str, output: str | os.PathLike,
                   data_dir: str | os.PathLike | None = None,
                   overrides: list[dict[str, Any] | None] | None = None,
                   cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Score `model_dir` on `benchmark`; write the result JSON at `output` (+ samples JSONL); return the result."""
    request = Request(benchmark, Path(output), tuple(overrides or ()))
    return evaluate_benchmarks(model_dir, [request], data_dir=data_dir, cache_dir=cache_dir)[0]


def evaluate_benchmarks(model_dir: str | os.PathLike, requests: list[Request],
                        data_dir: str | os.PathLike | None = None,
                        cache_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Score one model on several benchmarks in this process: every protocol is resolved before the first model
    loads (a typo in the last benchmark's protocol fails in seconds), the weights load once (harness.ModelPool),
    and each result is written (and, with `cache_dir`, cached) as soon as it exists, so a failure later costs the
    earlier ones nothing on the next run."""
    from gsil.evaluation import harness

    model_path = Path(model_dir)
    check_model_dir(model_path)
    data_path = Path(data_dir).resolve() if data_dir is not None else None
    if data_path is not None and not data_path.is_dir():
        raise GsilError(f"data folder {data_path} does not exist")
    outputs = [r.output for r in requests]
    if len(set(outputs)) != len(outputs):
        raise GsilError(f"two benchmarks would write the same result file: {sorted(map(str, outputs))}")
    specs = [get_benchmark(r.benchmark) for r in requests]
    resolved = [(r, spec, resolve_protocol(spec, *r.overrides)) for r, spec in zip(requests, specs)]
    cache = ResultCache(cache_dir) if cache_dir is not None else None
    pool = harness.ModelPool()
    results = []
    try:
        for index, (request, spec, protocol) in enumerate(resolved, 1):
            log.info("benchmark %d/%d: %s on %s", index, len(resolved), spec.name, model_path)
            results.append(_score(model_path, request, spec, protocol, data_path, cache, pool))
    finally:
        pool.close()
    return results


def _score(model_path: Path, request: Request, spec: Benchmark, protocol: dict[str, Any], data_path: Path | None,
           cache: ResultCache | None, pool) -> dict[str, Any]:
    from gsil.evaluation import harness, runners
    from gsil.io import write_json, write_jsonl

    output_path = request.output
    output_path.parent.mkdir(parents=True, exist_ok=True)
    settings = {"model": str(model_path), "benchmark": spec.name, "output": str(output_path),
                "data_dir": str(data_path) if data_path else None, "protocol": protocol}
    if request.skip:
        log.info("%s not scored on this model: %s", spec.name, request.skip)
        skipped = runners.Outcome(metric=None, value=None, stderr=None, n_samples=0, skipped=request.skip)
        result = _result(spec, skipped, protocol, model_path, None, 0.0, None, settings)
        write_json(output_path, result)
        return result
    if protocol.get("dtype") == "native":
        # resolved here so that the result (and its cache key) names the dtype the scores were computed in
        protocol = {**protocol, "dtype": harness.concrete_dtype(protocol), "dtype_requested": "native"}
        log.info("%s: dtype native -> %s on this machine", spec.name, protocol["dtype"])
    key = cache_key(spec.name, protocol, model_path, data_path) if cache is not None else None
    if cache is not None:
        hit = cache.lookup(spec.name, key)
        if hit is not None:
            result, samples = hit
            restore(result, samples, output_path, samples_path(output_path))
            log.info("%s = %s: reused the cached result (key %s, computed %s)", spec.name, result.get("value"),
                     key[:12], (result.get("run_info") or {}).get("finished_at"))
            return result
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f".{output_path.stem}.work.", dir=output_path.parent) as work:
        work_dir = Path(work)
        if spec.runner == "lm_eval":
            outcome = runners.run_lm_eval(model_path, protocol, work_dir, data_path, pool)
        elif spec.runner == "humaneval":
            outcome = runners.run_humaneval(model_path, protocol, work_dir, data_path, pool)
        elif spec.runner == "mtbench":
            outcome = runners.run_mtbench(model_path, protocol, work_dir, data_path,
                                          output_path.with_name(output_path.stem + ".judge_cache.jsonl"), pool)
        elif spec.runner == "hh_safety":
            outcome = runners.run_hh_safety(model_path, protocol, work_dir, data_path,
                                            output_path.with_name(output_path.stem + ".judge_cache.jsonl"), pool)
        else:  # a registry entry with a runner nobody implemented is a programming error
            raise AssertionError(f"benchmark {spec.name!r} has unknown runner {spec.runner!r}")
    seconds = time.perf_counter() - started
    sample_file = None
    if outcome.samples:
        sample_file = samples_path(output_path)
        write_jsonl(sample_file, outcome.samples)
    if outcome.skipped:
        log.warning("%s skipped: %s", spec.name, outcome.skipped)
    else:
        log.info("%s = %s (stderr %s, n=%d) in %.1f s", spec.name, outcome.value, outcome.stderr,
                 outcome.n_samples, seconds)
    result = _result(spec, outcome, protocol, model_path, sample_file, seconds, key, settings)
    write_json(output_path, result)
    # A judged benchmark skipped for want of a judge is not cached: configuring the judge must score it.
    if cache is not None and not outcome.skipped:
        cache.store(spec.name, key, result, sample_file)
    return result


def _result(spec: Benchmark, outcome, protocol: dict[str, Any], model_path: Path, sample_file: Path | None,
            seconds: float, key: str | None, settings: dict[str, Any]) -> dict[str, Any]:
    """The result JSON (schema in the module docstring) of one benchmark's outcome."""
    from gsil.runinfo import run_info

    return {
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
        "cache_key": key,
        "run_info": run_info(settings),
    }


__all__ = ["BENCHMARKS", "RESULT_KEYS", "Request", "evaluate_benchmarks", "evaluate_model", "get_benchmark",
           "resolve_protocol"]
