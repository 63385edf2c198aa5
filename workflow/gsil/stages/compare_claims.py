"""`gsil compare-claims`: the claims' verdicts of several runs side by side; exit 1 when a claim flips.

    snakemake --cores 2 --configfile config/data-seed-1.yaml          # the demo again, another data seed
    gsil compare-claims results/demo/tables/claims.csv results/demo-data1/tables/claims.csv \\
        --output results/demo/tables/claims_data_seeds.md
"""

from __future__ import annotations

import argparse

from gsil.logutil import GsilError, setup_logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("claims", nargs="+", help="tables/claims.csv of each run")
    parser.add_argument("--names", help="comma-separated run names for the columns (default: each run's folder)")
    parser.add_argument("--output", help="also write the comparison as Markdown here")


def run(args: argparse.Namespace) -> int:
    from gsil.aggregate.stability import compare, read_claims, to_markdown
    from gsil.io import write_text

    log = setup_logging("compare-claims")
    names = [n.strip() for n in args.names.split(",")] if args.names else [None] * len(args.claims)
    if len(names) != len(args.claims):
        raise GsilError(f"--names gives {len(names)} names for {len(args.claims)} claims tables")
    table = compare([read_claims(path, name) for path, name in zip(args.claims, names)])
    text = to_markdown(table)
    print(text, end="")
    if args.output:
        write_text(args.output, text)
        log.info("wrote %s", args.output)
    return 1 if any(row["Flips"] == "yes" for row in table) else 0
