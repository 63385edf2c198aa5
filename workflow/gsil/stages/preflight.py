"""`gsil preflight`: the fail-fast checks of a run (gsil.preflight), in seconds, before any job.

    gsil preflight --config-json merged.json --results results/paper [--executor local] \\
        [--gpu-resources '{"global": 8, "rules": {"align_selfplay": 8}}'] [--benchmarks arc_challenge,gsm8k] \\
        [--skip-network]

Prints every problem and exits 1 when there is any; warnings alone exit 0. The Snakefile's `onstart` handler runs
it with the merged config, the executor and the GPU counts of the jobs about to run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gsil.logutil import GsilError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-json", required=True, help="the merged, validated workflow config as JSON")
    parser.add_argument("--results", default=None,
                        help="the run's results folder (default: results/<run> of the config)")
    parser.add_argument("--executor", default="local",
                        help="Snakemake executor name (local, slurm, ...); GPUs are checked for local runs only")
    parser.add_argument("--gpu-resources", default=None,
                        help='JSON {"global": <gpu resource or null>, "rules": {<rule>: <gpu per job>}}; '
                             "without it the GPU check is skipped")
    parser.add_argument("--benchmarks", default=None,
                        help="comma-separated benchmarks whose evaluations will run (default: every enabled one)")
    parser.add_argument("--skip-network", action="store_true",
                        help="do not probe the Hub or the judge endpoint (offline switches and keys still count)")


def run(args: argparse.Namespace) -> int:
    from gsil import preflight

    try:
        config = json.loads(Path(args.config_json).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise GsilError(f"--config-json {args.config_json}: {err}") from None
    try:
        resources = json.loads(args.gpu_resources) if args.gpu_resources else None
    except ValueError as err:
        raise GsilError(f"--gpu-resources is not JSON: {err}") from None
    benchmarks = None if args.benchmarks is None else [n for n in args.benchmarks.split(",") if n.strip()]
    results = Path(args.results) if args.results else Path("results") / str(config.get("run", "demo"))
    outcome = preflight.run_checks(config, results_dir=results, executor=args.executor, gpu_resources=resources,
                                   benchmarks=benchmarks, network=not args.skip_network)
    for warning in outcome.warnings:
        print(f"gsil preflight: warning: {warning}")
    if outcome.problems:
        count = len(outcome.problems)
        print(f"gsil preflight: {count} problem{'s' if count > 1 else ''} found before any job ran; nothing was "
              f"started. Fix {'them' if count > 1 else 'it'} and run again (or set {preflight.SKIP_VARIABLE}=1 to "
              "skip these checks):")
        for problem in outcome.problems:
            print(f"  - {problem}")
        return 1
    print(f"gsil preflight: ok ({', '.join(outcome.checked)})")
    return 0
