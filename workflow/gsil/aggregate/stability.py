"""Do the claims' verdicts survive a change that should not matter (another data seed, another machine)?

Reads the `tables/claims.csv` of several runs and puts each claim's verdicts side by side. A claim **flips** when
one run calls it supported and another contradicted; inconclusive and not run never flip anything (a smaller
effect may lose significance, it must not change sign). `gsil compare-claims` prints the table, writes it as
Markdown when asked, and exits 1 when a claim flips.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from gsil.aggregate.claims import CONTRADICTED, INCONCLUSIVE, NOT_RUN, SUPPORTED
from gsil.logutil import GsilError

VERDICTS = (SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_RUN)
REQUIRED_COLUMNS = ("Claim", "Statement", "Difference", "Interval", "Verdict")


@dataclass(frozen=True)
class RunClaims:
    name: str                              # how the run is called in the table (its folder, e.g. demo-data1)
    rows: dict[str, dict[str, str]]        # claim, e.g. "(a)", -> its claims.csv row


def read_claims(path: str | Path, name: str | None = None) -> RunClaims:
    """One run's claims.csv; errors name the file and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise GsilError(f"{path}: no claims table (written by the workflow's aggregate_results job)")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise GsilError(f"{path}: not a claims table, columns {missing} are missing")
        rows = {}
        for line, row in enumerate(reader, start=2):
            if row["Verdict"] not in VERDICTS:
                raise GsilError(f"{path}:{line}: verdict {row['Verdict']!r} is not one of {', '.join(VERDICTS)}")
            rows[row["Claim"]] = row
    if not rows:
        raise GsilError(f"{path}: the claims table has no rows")
    default = path.parent.parent.name if path.parent.name == "tables" else str(path)
    return RunClaims(name or default, rows)


def flips(verdicts: list[str]) -> bool:
    return SUPPORTED in verdicts and CONTRADICTED in verdicts


def compare(runs: list[RunClaims]) -> list[dict[str, str]]:
    """One row per claim (in the first run's order, then any only later runs have): each run's verdict with its
    difference and interval, and whether the claim flips."""
    if len(runs) < 2:
        raise GsilError("compare-claims needs the claims tables of at least two runs")
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise GsilError(f"two runs have the same name {names}; name them with --names")
    claims = list(dict.fromkeys(claim for run in runs for claim in run.rows))
    table = []
    for claim in claims:
        statement = next(run.rows[claim]["Statement"] for run in runs if claim in run.rows)
        row = {"Claim": claim, "Statement": statement}
        verdicts = []
        for run in runs:
            found = run.rows.get(claim)
            verdict = found["Verdict"] if found else NOT_RUN
            verdicts.append(verdict)
            detail = f" ({_shown(found['Difference'])} {found['Interval']})" if found and found["Difference"] else ""
            row[run.name] = verdict + detail
        row["Flips"] = "yes" if flips(verdicts) else "no"
        table.append(row)
    return table


def _shown(value: str) -> str:
    """A difference as the side-by-side table shows it: as written when 3 significant digits hold it, else rounded
    to them (claim (b)'s mean difference of log-ratios is written with every digit in the CSV)."""
    try:
        number = float(value)
    except ValueError:
        return value
    rounded = f"{number:.3g}"
    return value if float(rounded) == number else rounded


def to_markdown(table: list[dict[str, str]]) -> str:
    columns = list(table[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]).replace("|", "\\|") for c in columns) + " |" for row in table]
    flipped = [row["Claim"] for row in table if row["Flips"] == "yes"]
    verdict = (f"Flipped between supported and contradicted: {', '.join(flipped)}." if flipped
               else "No claim flips between supported and contradicted.")
    return "\n".join(lines) + "\n\n" + verdict + "\n"
