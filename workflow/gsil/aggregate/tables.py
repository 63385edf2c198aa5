"""The paper's comparison tables, computed from loaded result files (collect.py) and the run plan.

Each builder is a pure function returning a `Table`; `write_table` renders it as Markdown (best value per column in
bold) and CSV (raw numbers, plus a `best_in` column naming the columns where the row is best). Cells with no result
stay empty, never zero.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gsil.aggregate.collect import EvalResult, Reported
from gsil.io import write_text

AVERAGE = "average"


@dataclass
class Table:
    name: str
    title: str
    columns: list[str]
    rows: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    # Columns in which the best value is marked, and whether higher is better there.
    ranked: dict[str, bool] = field(default_factory=dict)

    def best(self) -> dict[str, set[int]]:
        """Row indices holding the best value of each ranked column (ties all marked)."""
        marks: dict[str, set[int]] = {}
        for column, higher in self.ranked.items():
            values = [(i, row.get(column)) for i, row in enumerate(self.rows)]
            values = [(i, v) for i, v in values if isinstance(v, (int, float)) and not math.isnan(v)]
            if len(values) < 2 or len({round(v, 9) for _, v in values}) == 1:
                continue  # a single value, or all equal: nothing is best
            target = max(v for _, v in values) if higher else min(v for _, v in values)
            marks[column] = {i for i, v in values if math.isclose(v, target, rel_tol=1e-9, abs_tol=1e-9)}
        return marks


def format_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def to_markdown(table: Table) -> str:
    marks = table.best()
    lines = [f"# {table.title}", ""]
    if not table.rows:
        lines += ["No results for this table in this run.", ""]
    else:
        lines.append("| " + " | ".join(table.columns) + " |")
        lines.append("|" + "|".join("---" for _ in table.columns) + "|")
        for index, row in enumerate(table.rows):
            cells = []
            for column in table.columns:
                text = format_cell(row.get(column)).replace("|", "\\|")
                if text and index in marks.get(column, ()):
                    text = f"**{text}**"
                cells.append(text)
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if table.ranked and table.rows:
        lines.append("Bold: best value in its column.")
    lines += table.notes
    return "\n".join(lines).rstrip() + "\n"


def to_csv(table: Table) -> str:
    marks = table.best()
    buffer = io.StringIO()
    columns = table.columns + (["best_in"] if table.ranked else [])
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for index, row in enumerate(table.rows):
        out = {c: ("" if row.get(c) is None else row.get(c)) for c in table.columns}
        if table.ranked:
            out["best_in"] = ";".join(c for c in table.columns if index in marks.get(c, ()))
        writer.writerow(out)
    return buffer.getvalue()


def write_table(table: Table, out_dir: Path) -> list[Path]:
    md, csv_path = out_dir / f"{table.name}.md", out_dir / f"{table.name}.csv"
    write_text(md, to_markdown(table))
    write_text(csv_path, to_csv(table))
    return [md, csv_path]


# ------------------------------------------------------------------------------------------------ helpers


def mean_or_none(values: list[float | None]) -> float | None:
    """The average over benchmarks, only when every benchmark has a value (a partial mean would mislead)."""
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)


def bench_column(bench: dict) -> str:
    return bench["label"]


def paper_column(bench: dict) -> str:
    return f"{bench['label']} (paper)"


def find_reported(reported: list[Reported], method: str, iteration: int | None, benchmark: str) -> Reported | None:
    """A reported number for this row: same method and benchmark, and the same round. An entry without a round
    is a one-round result (SFT, or GSIL's single scripted round) and matches round 0 or a model without rounds."""
    for entry in reported:
        if entry.method != method or entry.benchmark != benchmark:
            continue
        if entry.iteration is None and iteration in (None, 0):
            return entry
        if entry.iteration is not None and entry.iteration == iteration:
            return entry
    return None


def _method(plan: dict, name: str) -> dict | None:
    return next((m for m in plan["methods"] if m["name"] == name), None)


def _value(results: dict[tuple[str, str], EvalResult], model: str, bench: str) -> float | None:
    result = results.get((model, bench))
    return None if result is None else result.value


def main_rows(plan: dict) -> list[dict]:
    """The main table's rows: base, SFT, then each configured (non-ablation) method at its final round."""
    rows = []
    for model in plan["models"]:
        if model["method"] in ("base", "sft"):
            rows.append({"method": model["method"], "label": model["label"], "model": model["id"],
                         "iteration": model["iteration"]})
    for method in plan["methods"]:
        if method.get("ablation_of"):
            continue
        final = method["models"][-1]
        iteration = None if method["kind"] == "preference" else method["iterations"] - 1
        label = method["label"] + (f" (iter{iteration})" if method["iterations"] > 1 else "")
        rows.append({"method": method["name"], "label": label, "model": final, "iteration": iteration})
    return rows


# ------------------------------------------------------------------------------------------------ tables


def main_table(plan: dict, results: dict[tuple[str, str], EvalResult], reported: list[Reported]) -> Table:
    benches = plan["benchmarks"]
    with_paper = [b for b in benches if any(r.benchmark == b["name"] for r in reported)]
    columns = ["Method", "Model"]
    for bench in benches:
        columns.append(bench_column(bench))
        if bench in with_paper:
            columns.append(paper_column(bench))
    columns.append("Average")
    rows = []
    for spec in main_rows(plan):
        row: dict[str, Any] = {"Method": spec["label"], "Model": spec["model"]}
        values = []
        for bench in benches:
            value = _value(results, spec["model"], bench["name"])
            values.append(value)
            row[bench_column(bench)] = value
            if bench in with_paper:
                entry = find_reported(reported, spec["method"], spec["iteration"], bench["name"])
                row[paper_column(bench)] = None if entry is None else entry.value
        row["Average"] = mean_or_none(values)
        rows.append(row)
    ranked = {bench_column(b): b["higher_is_better"] for b in benches}
    if all(b["higher_is_better"] for b in benches):
        ranked["Average"] = True
    notes = [
        "",
        f"Run `{plan['run']}`. Scores in percent for accuracy-type benchmarks. Average: mean over the benchmark "
        "columns of this run (empty unless every benchmark has a value).",
        "Columns marked (paper) hold numbers reported by the GSIL/SPIN papers or the Open LLM Leaderboard for "
        "zephyr-7b-sft-full under their own protocols (workflow/gsil/reported_numbers.yaml, with URLs); empty "
        "where nothing is reported. Every cell's source file is listed in main_sources.csv.",
    ]
    return Table("main", "Main results: methods x benchmarks", columns, rows, notes, ranked)


def main_sources_table(plan: dict, results: dict[tuple[str, str], EvalResult], reported: list[Reported]) -> Table:
    """One row per filled cell of the main table: where its number comes from."""
    columns = ["Method", "Model", "Benchmark", "Kind", "Value", "Metric", "N", "Source"]
    rows = []
    for spec in main_rows(plan):
        for bench in plan["benchmarks"]:
            result = results.get((spec["model"], bench["name"]))
            if result is not None:
                rows.append({"Method": spec["label"], "Model": spec["model"], "Benchmark": bench["label"],
                             "Kind": "ours", "Value": result.value, "Metric": result.metric,
                             "N": result.n_samples, "Source": result.path})
            entry = find_reported(reported, spec["method"], spec["iteration"], bench["name"])
            if entry is not None:
                rows.append({"Method": spec["label"], "Model": spec["model"], "Benchmark": bench["label"],
                             "Kind": entry.origin, "Value": entry.value, "Metric": entry.note, "N": None,
                             "Source": entry.source})
    notes = ["", "Source: for our numbers the eval JSON under results/<run>/; for reported ones the URL."]
    return Table("main_sources", "Where each number of the main table comes from", columns, rows, notes)


def gsil_vs_dpo_table(plan: dict, results: dict[tuple[str, str], EvalResult]) -> Table:
    settings = plan.get("aggregate", {}).get("gsil_vs_dpo", {}) or {}
    gsil, dpo = _method(plan, settings.get("gsil", "gsil-logistic")), _method(plan, settings.get("dpo", "dpo"))
    names = settings.get("benchmarks") or [b["name"] for b in plan["benchmarks"]]
    benches = [b for b in plan["benchmarks"] if b["name"] in names]
    columns = ["Benchmark", "GSIL", "DPO", "GSIL - DPO", "Better"]
    rows = []
    if gsil is not None and dpo is not None:
        for bench in benches:
            g = _value(results, gsil["models"][-1], bench["name"])
            d = _value(results, dpo["models"][-1], bench["name"])
            diff = None if g is None or d is None else g - d
            better = None
            if diff is not None:
                sign = diff if bench["higher_is_better"] else -diff
                better = "GSIL" if sign > 0 else "DPO" if sign < 0 else "tie"
            rows.append({"Benchmark": bench["label"], "GSIL": g, "DPO": d, "GSIL - DPO": diff, "Better": better})
    title = "GSIL against DPO (Figure 6)"
    notes = [""]
    if gsil is not None and dpo is not None:
        notes.append(f"GSIL = {gsil['label']} ({gsil['models'][-1]}), DPO = {dpo['label']} ({dpo['models'][-1]}).")
    else:
        notes.append("The run configures no GSIL/DPO pair (config aggregate.gsil_vs_dpo).")
    return Table("gsil_vs_dpo", title, columns, rows, notes)


def ablation_table(plan: dict, results: dict[tuple[str, str], EvalResult], axis: str) -> Table:
    """Rows: the base method and its ablation methods that vary `axis` (beta or gamma), compared at the ablation's
    round (the base at the same round, so every row trained for the same number of rounds)."""
    other = "gamma" if axis == "beta" else "beta"
    benches = plan["benchmarks"]
    symbol = {"beta": "β", "gamma": "γ"}
    columns = ["Method", "Base", symbol[axis], symbol[other], "Model"] + [bench_column(b) for b in benches] + ["Average"]
    rows = []
    ablations = [m for m in plan["methods"] if m.get("ablation_of") and m.get("ablation_axis") == axis]
    for base_name in dict.fromkeys(m["ablation_of"] for m in ablations):
        base = _method(plan, base_name)
        members = [m for m in ablations if m["ablation_of"] == base_name]
        group = [(base, len(members[0]["models"]) - 1)] + [(m, len(m["models"]) - 1) for m in members]
        group = sorted(group, key=lambda item: float(item[0]["hyperparameters"].get(axis, 0.0)))
        for method, round_index in group:
            if round_index >= len(method["models"]):
                continue
            model = method["models"][round_index]
            values = [_value(results, model, b["name"]) for b in benches]
            row = {"Method": method["label"], "Base": base["label"],
                   symbol[axis]: method["hyperparameters"].get(axis), symbol[other]: method["hyperparameters"].get(other),
                   "Model": model, "Average": mean_or_none(values)}
            row.update({bench_column(b): v for b, v in zip(benches, values)})
            rows.append(row)
    ranked = {bench_column(b): b["higher_is_better"] for b in benches}
    title = f"Ablation over {symbol[axis]} ({axis}) (Figure 7)"
    notes = ["", f"Each group varies {symbol[axis]} at its base method's {symbol[other]}."]
    return Table(f"ablation_{axis}", title, columns, rows, notes, ranked)


def iterations_table(plan: dict, results: dict[tuple[str, str], EvalResult], reported: list[Reported]) -> Table:
    """Every round of each self-play method run for more than one round, starting from the SFT model."""
    benches = plan["benchmarks"]
    paper_benches = [b for b in benches if any(r.benchmark == b["name"] and r.iteration is not None for r in reported)]
    columns = ["Method", "Iteration", "Model"]
    for bench in benches:
        columns.append(bench_column(bench))
        if bench in paper_benches:
            columns.append(paper_column(bench))
    columns.append("Average")
    rows = []
    sft_model = plan.get("sft_model", "sft")
    for method in plan["methods"]:
        if method["kind"] != "selfplay" or method["iterations"] < 2:
            continue
        chain = [("start (SFT)", sft_model, None)] + [
            (f"iter{k}", model, k) for k, model in enumerate(method["models"])
        ]
        for name, model, k in chain:
            values = [_value(results, model, b["name"]) for b in benches]
            row = {"Method": method["label"], "Iteration": name, "Model": model, "Average": mean_or_none(values)}
            for bench, value in zip(benches, values):
                row[bench_column(bench)] = value
                if bench in paper_benches:
                    entry = None if k is None else find_reported(reported, method["name"], k, bench["name"])
                    row[paper_column(bench)] = None if entry is None else entry.value
            rows.append(row)
    notes = ["", "iter<k>: the model after round k (round 0 starts from the SFT model), as SPIN numbers its rounds."]
    return Table("iterations", "Results per self-play iteration", columns, rows, notes)


def compute_table(summary: list[dict]) -> Table:
    columns = ["stage", "jobs", "wall_s_total", "wall_s_mean", "wall_s_max", "peak_rss_mb", "cpu_s_total"]
    notes = ["", "From the Snakemake benchmark files (results/<run>/benchmarks/<rule>/*.tsv) of the heavy stages: "
             "wall seconds and peak resident memory (MB) per stage; timings on a shared machine are rough."]
    return Table("compute", "Compute per stage", columns, summary, notes)
