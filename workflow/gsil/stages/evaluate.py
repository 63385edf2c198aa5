"""`gsil evaluate`: score one model on one benchmark and write one result JSON.

The protocol (shots, limit, metric, chat template, batch size, model type, judge, ...) comes from the benchmark
registry's defaults, then `--protocol-json` (the workflow passes the config's entry for the benchmark), then the
individual flags below. `gsil evaluate --list` prints the benchmarks and their default protocols.
"""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--benchmark", help="benchmark name (see --list)")
    parser.add_argument("--output", help="result JSON path (results/<run>/eval/<model>/<benchmark>.json)")
    parser.add_argument("--data-dir", help="prepared data folder holding eval/ (demo tasks)")
    parser.add_argument("--protocol-json", metavar="JSON",
                        help="protocol overrides: a JSON object, or the path of a JSON file holding one")
    parser.add_argument("--list", action="store_true", help="print the benchmarks and default protocols, exit")
    group = parser.add_argument_group("protocol overrides (win over --protocol-json)")
    group.add_argument("--limit", type=int, help="evaluate only the first N documents")
    group.add_argument("--num-fewshot", type=int)
    group.add_argument("--batch-size", type=_batch_size)
    group.add_argument("--model-type", choices=["hf", "vllm"])
    group.add_argument("--device", help="hf backend device: cpu, cuda, cuda:0")
    group.add_argument("--dtype", help="weights dtype: auto, float32, bfloat16, float16")
    group.add_argument("--apply-chat-template", action=argparse.BooleanOptionalAction, default=None)
    group.add_argument("--seed", type=int)
    group.add_argument("--threads", type=int, help="torch CPU threads (the workflow passes the job's threads)")
    group.add_argument("--num-problems", type=int, help="humaneval: size of the problem subset")
    group.add_argument("--execute", action=argparse.BooleanOptionalAction, default=None,
                       help="humaneval: run the generated code (off: write completions only)")
    group.add_argument("--offline", action=argparse.BooleanOptionalAction, default=None,
                       help="set HF_HUB_OFFLINE / HF_DATASETS_OFFLINE")


def parse_protocol_json(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    stripped = text.strip()
    source = "--protocol-json"
    if not stripped.startswith("{"):
        path = Path(stripped)
        if not path.is_file():
            raise GsilError(f"--protocol-json: {text!r} is neither a JSON object nor an existing file")
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


def run(args: argparse.Namespace) -> int:
    from gsil.evaluation import BENCHMARKS, evaluate_model

    if args.list:
        for name, spec in sorted(BENCHMARKS.items()):
            print(f"{name:16s} {spec.runner:10s} {spec.description}")
            print(f"{'':16s} defaults: {json.dumps(spec.defaults, sort_keys=True)}")
        return 0
    missing = [flag for flag, value in (("--model", args.model), ("--benchmark", args.benchmark),
                                        ("--output", args.output)) if not value]
    if missing:
        raise GsilError(f"missing required flag(s): {', '.join(missing)}")
    log = setup_logging("evaluate")
    evaluate_model(args.model, args.benchmark, args.output, data_dir=args.data_dir,
                            overrides=[parse_protocol_json(args.protocol_json), flag_overrides(args)])
    log.info("wrote %s", args.output)
    return 0
