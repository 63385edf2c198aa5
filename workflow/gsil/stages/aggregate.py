"""`gsil aggregate`: the run's tables (Markdown + CSV) and figures (PNG) from its result files only.

Reads results/<run>/eval/**.json (and the per-item samples files beside them), train/**/metrics.jsonl,
benchmarks/**.tsv, the run plan the workflow wrote (plan.json: which models and benchmarks exist and what they are
called) and the papers' reported numbers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gsil.logutil import GsilError, setup_logging

DEFAULT_REPORTED = Path(__file__).resolve().parent.parent / "reported_numbers.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", required=True, help="results/<run>: the folder holding eval/, train/, benchmarks/")
    parser.add_argument("--config-json", required=True,
                        help="the run plan (results/<run>/plan.json, written by the workflow from the config)")
    parser.add_argument("--reported", default=str(DEFAULT_REPORTED),
                        help="the papers' numbers with sources (default: the suite's reported_numbers.yaml)")
    parser.add_argument("--output-tables", required=True, help="folder for the tables (*.md, *.csv)")
    parser.add_argument("--output-figures", required=True, help="folder for the figures (*.png)")
    parser.add_argument("--benchmark-files", nargs="*", default=None,
                        help="Snakemake benchmark TSVs for the compute table (default: every TSV under "
                             "<run-dir>/benchmarks)")


def run(args: argparse.Namespace) -> int:
    from gsil.aggregate.collect import load_plan
    from gsil.aggregate.report import build_all
    from gsil.runinfo import write_run_info

    setup_logging("aggregate")
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise GsilError(f"--run-dir {run_dir}: not a folder")
    plan = load_plan(args.config_json)
    tables_dir, figures_dir = Path(args.output_tables), Path(args.output_figures)
    files = None if args.benchmark_files is None else [Path(f) for f in args.benchmark_files]
    build_all(run_dir, plan, Path(args.reported), tables_dir, figures_dir, files)
    write_run_info(tables_dir / "run_info.json", {"run_dir": str(run_dir), "plan": args.config_json,
                                                  "reported": args.reported})
    return 0
