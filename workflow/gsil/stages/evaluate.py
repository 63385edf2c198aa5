"""`gsil evaluate`: score one model on one or more benchmarks, one result JSON per benchmark, in one process.

The protocol (shots, limit, metric, chat template, batch size, model type, judge, ...) comes from the benchmark
registry's defaults, then `--protocol-json` (one benchmark) or that benchmark's entry of `--protocols-json`
(several; the workflow passes the config's entries), then the individual flags below, which apply to every
benchmark. `gsil evaluate --list` prints the benchmarks and their default protocols.

    gsil evaluate --model M --benchmark arith --output eval/M/arith.json
    gsil evaluate --model M --benchmark arith,arith_mc,humaneval --output-dir eval/M --cache-dir cache/eval/M
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from gsil.logutil import GsilError, setup_logging

# flag dest -> protocol key; only flags the user actually gave become overrides
FLAG_KEYS = {
    "limit": "limit", "num_fewshot": "num_fewshot", "batch_size": "batch_size", "model_type": "model_type",
    "device": "device", "dtype": "dtype", "apply_chat_template": "apply_chat_template", "seed": "seed",
    "num_problems": "num_problems", "execute": "execute", "offline": "offline", "threads": "threads",
}


def _batch_size(text: str) -> int | str:
    if text == "auto" or text.startswith("auto:"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch size must be an integer or 'auto', got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model folder (an HF checkpoint)")
    parser.add_argument("--benchmark", action="append",
                        help="benchmark name (see --list); repeat it or separate names by commas for several")
    parser.add_argument("--output", help="result JSON path of a single benchmark")
    parser.add_argument("--output-dir", help="folder of the result JSONs, one <benchmark>.json each "
                                             "(results/<run>/eval/<model>)")
    parser.add_argument("--data-dir", help="prepared data folder holding eval/ (demo tasks)")
    parser.add_argument("--protocol-json", metavar="JSON",
                        help="protocol overrides of a single benchmark: a JSON object, or a JSON file holding one")
    parser.add_argument("--protocols-json", metavar="JSON",
                        help="protocol overrides per benchmark: {benchmark: {key: value}} (or a JSON file)")
    parser.add_argument("--skip-json", metavar="JSON",
                        help="{benchmark: reason}: write a result saying why this model is not scored on it")
    parser.add_argument("--cache-dir", help="result cache folder: a benchmark whose inputs, protocol and scoring "
                                            "code are unchanged is copied from here instead of scored again")
    parser.add_argument("--list", action="store_true", help="print the benchmarks and default protocols, exit")
    group = parser.add_argument_group("protocol overrides (win over --protocol-json)")
    group.add_argument("--limit", type=int, help="evaluate only the first N documents")
    group.add_argument("--num-fewshot", type=int)
    group.add_argument("--batch-size", type=_batch_size)
    group.add_argument("--model-type", choices=["hf", "vllm"])
    group.add_argument("--device", help="hf backend device: cpu, cuda, cuda:0")
    group.add_argument("--dtype", help="weights dtype: auto, float32, bfloat16, float16, or native (bfloat16 where "
                       "the device computes it natively and faster, else float32)")
    group.add_argument("--apply-chat-template", action=argparse.BooleanOptionalAction, default=None)
    group.add_argument("--seed", type=int)
    group.add_argument("--threads", type=int, help="torch CPU threads (the workflow passes the job's threads)")
    group.add_argument("--num-problems", type=int, help="humaneval: size of the problem subset")
    group.add_argument("--execute", action=argparse.BooleanOptionalAction, default=None,
                       help="humaneval: run the generated code (off: write completions only)")
    group.add_argument("--offline", action=argparse.BooleanOptionalAction, default=None,
                       help="set HF_HUB_OFFLINE / HF_DATASETS_OFFLINE")


def parse_protocol_json(text: str | None, flag: str = "--protocol-json") -> dict[str, Any]:
    if not text:
        return {}
    stripped = text.strip()
    source = flag
    if not stripped.startswith("{"):
        path = Path(stripped)
        if not path.is_file():
            raise GsilError(f"{flag}: {text!r} is neither a JSON object nor an existing file")
        stripped, source = path.read_text(encoding="utf-8"), str(path)
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError as err:
        raise GsilError(f"{source}: invalid JSON ({err})") from err
    if not isinstance(value, dict):
        raise GsilError(f"{source}: expected a JSON object, got {type(value).__name__}")
    return value


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, dest) for dest, key in FLAG_KEYS.items() if getattr(args, dest, None) is not None}


def benchmark_names(values: list[str] | None) -> list[str]:
    names = [name.strip() for value in values or [] for name in value.split(",") if name.strip()]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise GsilError(f"--benchmark names {', '.join(repeated)} more than once")
    return names


def build_requests(args: argparse.Namespace) -> list[Any]:
    """One Request per benchmark named on the command line, with its output path and protocol layers."""
    from gsil.evaluation import Request, get_benchmark

    names = benchmark_names(args.benchmark)
    missing = [flag for flag, value in (("--model", args.model), ("--benchmark", names),
                                        ("--output or --output-dir", args.output or args.output_dir)) if not value]
    if missing:
        raise GsilError(f"missing required flag(s): {', '.join(missing)}")
    if args.output and args.output_dir:
        raise GsilError("give --output (one benchmark) or --output-dir, not both")
    if args.output and len(names) > 1:
        raise GsilError(f"--output names one result file but {len(names)} benchmarks were given; use --output-dir")
    if args.protocol_json and len(names) > 1:
        raise GsilError("--protocol-json is for one benchmark; use --protocols-json {benchmark: protocol}")
    for name in names:
        get_benchmark(name)  # unknown names fail here, before anything loads
    per_benchmark = parse_protocol_json(args.protocols_json, "--protocols-json")
    skips = parse_protocol_json(args.skip_json, "--skip-json")
    for flag, mapping in (("--protocols-json", per_benchmark), ("--skip-json", skips)):
        stray = sorted(set(mapping) - set(names))
        if stray:
            raise GsilError(f"{flag} names benchmark(s) {', '.join(stray)} not given to --benchmark "
                            f"({', '.join(names)})")
    for name, protocol in per_benchmark.items():
        if not isinstance(protocol, dict):
            raise GsilError(f"--protocols-json: the entry of {name!r} must be a JSON object, "
                            f"got {type(protocol).__name__}")
    for name, reason in skips.items():
        if not isinstance(reason, str) or not reason.strip():
            raise GsilError(f"--skip-json: the reason for {name!r} must be a non-empty string, got {reason!r}")
    flags = flag_overrides(args)
    requests = []
    for name in names:
        output = Path(args.output) if args.output else Path(args.output_dir) / f"{name}.json"
        layers = (parse_protocol_json(args.protocol_json), per_benchmark.get(name), flags)
        requests.append(Request(name, output, layers, skips.get(name)))
    return requests


def run(args: argparse.Namespace) -> int:
    from gsil.evaluation import BENCHMARKS, evaluate_benchmarks

    if args.list:
        for name, spec in sorted(BENCHMARKS.items()):
            print(f"{name:16s} {spec.runner:10s} {spec.description}")
            print(f"{'':16s} defaults: {json.dumps(spec.defaults, sort_keys=True)}")
        return 0
    requests = build_requests(args)
    log = setup_logging("evaluate")
    started = time.perf_counter()
    evaluate_benchmarks(args.model, requests, data_dir=args.data_dir, cache_dir=args.cache_dir)
    log.info("wrote %s in %.1f s", ", ".join(str(r.output) for r in requests), time.perf_counter() - started)
    return 0
