"""The paper's comparison tables, computed from loaded result files (collect.py) and the run plan.

Each builder is a pure function returning a `Table`; `write_table` renders it as Markdown (best value per column in
bold, a cell's annotation such as its CI after it) and CSV (raw numbers, plus a `best_in` column naming the columns
where the row is best, then the detail columns: CI bounds, per-seed values, source files). Cells with no result
stay empty, never zero.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gsil.aggregate import stats
from gsil.aggregate.claims import ClaimResult, Comparison, Interval, Settings, is_seed_copy, replicas, verdict_rules
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
    # CSV-only columns (after best_in): exact numbers behind a Markdown annotation, source files.
    detail_columns: list[str] = field(default_factory=list)
    # Markdown only: text after a cell's value, keyed by (row index, column), e.g. " [41.2, 46.3]†".
    suffixes: dict[tuple[int, str], str] = field(default_factory=dict)
    # Markdown only: a format spec per column for float cells (default ".2f"), e.g. {"McNemar p": ".3g"}.
    formats: dict[str, str] = field(default_factory=dict)

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


def format_cell(value: Any, spec: str = ".2f") -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:{spec}}"
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
                text = format_cell(row.get(column), table.formats.get(column, ".2f")).replace("|", "\\|")
                if text and index in marks.get(column, ()):
                    text = f"**{text}**"
                text += table.suffixes.get((index, column), "").replace("|", "\\|")
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
    columns = table.columns + (["best_in"] if table.ranked else []) + table.detail_columns
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for index, row in enumerate(table.rows):
        out = {c: ("" if row.get(c) is None else row.get(c)) for c in table.columns + table.detail_columns}
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


def ci_columns(label: str) -> list[str]:
    """CSV detail columns holding the CI of the score in column `label` (and how it was computed)."""
    return [f"{label} CI low", f"{label} CI high", f"{label} CI method"]


def add_intervals(row: dict, model: str, benches: list[dict], intervals: dict[tuple[str, str], Interval] | None,
                  column=None) -> None:
    """Fill the CI detail columns of `row` (score of `model` per benchmark); empty where no interval exists."""
    for bench in benches:
        interval = (intervals or {}).get((model, bench["name"]))
        names = ci_columns(column or bench_column(bench))
        row.update(dict(zip(names, (None, None, None) if interval is None else
                            (interval.low, interval.high, interval.method))))


def format_interval(low: float | None, high: float | None) -> str:
    return "" if low is None or high is None else f"[{low:.2f}, {high:.2f}]"


def main_rows(plan: dict) -> list[dict]:
    """The main table's rows: base, SFT, then each configured (non-ablation) method at its final round (first-seed
    models only: seeded copies are summarised in the seeds and comparisons tables)."""
    rows = []
    for model in plan["models"]:
        if model["method"] in ("base", "sft") and not is_seed_copy(model):
            rows.append({"method": model["method"], "label": model["label"], "model": model["id"],
                         "iteration": model["iteration"]})
    for method in plan["methods"]:
        if method.get("ablation_of") or is_seed_copy(method):
            continue
        final = method["models"][-1]
        iteration = None if method["kind"] == "preference" else method["iterations"] - 1
        label = method["label"] + (f" (iter{iteration})" if method["iterations"] > 1 else "")
        rows.append({"method": method["name"], "label": label, "model": final, "iteration": iteration})
    return rows


# ------------------------------------------------------------------------------------------------ tables


def main_table(plan: dict, results: dict[tuple[str, str], EvalResult], reported: list[Reported],
               intervals: dict[tuple[str, str], Interval] | None = None,
               comparisons: list[Comparison] | None = None) -> Table:
    """Scores of the main rows; Markdown cells carry the score's CI and a † where the paired difference from the SFT
    model is significant (comparisons.md); the CSV carries the same in detail columns."""
    benches = plan["benchmarks"]
    sft = plan.get("sft_model", "sft")
    vs_sft = {(c.spec.a, c.bench["name"]): c for c in comparisons or [] if c.spec.b == sft}
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
        add_intervals(row, spec["model"], benches, intervals)
        for bench in benches:
            comparison = vs_sft.get((spec["model"], bench["name"]))
            significant = None if comparison is None else comparison.significant()
            row[f"{bench_column(bench)} vs SFT"] = {True: "significant", False: "not significant"}.get(significant)
        rows.append(row)
    ranked = {bench_column(b): b["higher_is_better"] for b in benches}
    if all(b["higher_is_better"] for b in benches):
        ranked["Average"] = True
    suffixes = _score_suffixes(rows, benches)
    notes = [
        "",
        f"Run `{plan['run']}`. Scores in percent for accuracy-type benchmarks. Average: mean over the benchmark "
        "columns of this run (empty unless every benchmark has a value).",
        "Columns marked (paper) hold numbers reported by the GSIL/SPIN papers or the Open LLM Leaderboard for "
        "zephyr-7b-sft-full under their own protocols (workflow/gsil/reported_numbers.yaml, with URLs); empty "
        "where nothing is reported. Every cell's source file is listed in main_sources.csv.",
        "[low, high]: CI of the score at aggregate.claims.confidence (default 95 %): Wilson interval for 0/1 items, "
        "percentile bootstrap over items for other per-item scores, value ± z·stderr where the result has no "
        "per-item samples (the bounds and method of each cell: main_sources.csv).",
        "†: the paired difference from SFT on this benchmark is significant: its CI excludes 0 (comparisons.md; "
        "pooled over seeds when the run has several). The numbers are the first seed's models.",
    ]
    # The rows also hold each cell's CI and vs-SFT test (the overview figure reads them); the CSV keeps to the
    # scores, and main_sources.csv lists those numbers per cell.
    return Table("main", "Main results: methods x benchmarks", columns, rows, notes, ranked, suffixes=suffixes)


def _score_suffixes(rows: list[dict], benches: list[dict]) -> dict[tuple[int, str], str]:
    suffixes = {}
    for index, row in enumerate(rows):
        for bench in benches:
            column = bench_column(bench)
            low, high, _ = (row.get(c) for c in ci_columns(column))
            text = (" " + format_interval(low, high)) if low is not None else ""
            text += "†" if row.get(f"{column} vs SFT") == "significant" else ""
            if text and row.get(column) is not None:
                suffixes[(index, column)] = text
    return suffixes


def main_sources_table(plan: dict, results: dict[tuple[str, str], EvalResult], reported: list[Reported],
                       main: Table | None = None) -> Table:
    """One row per filled cell of the main table: where its number comes from; for ours (CSV) also the cell's CI
    and its paired test against SFT, copied from the main table's rows."""
    columns = ["Method", "Model", "Benchmark", "Kind", "Value", "Metric", "N", "Source"]
    main_by_model = {row["Model"]: row for row in (main.rows if main is not None else [])}
    rows = []
    for spec in main_rows(plan):
        for bench in plan["benchmarks"]:
            result = results.get((spec["model"], bench["name"]))
            if result is not None:
                cell = main_by_model.get(spec["model"], {})
                names = ci_columns(bench_column(bench)) + [f"{bench_column(bench)} vs SFT"]
                rows.append({"Method": spec["label"], "Model": spec["model"], "Benchmark": bench["label"],
                             "Kind": "ours", "Value": result.value, "Metric": result.metric,
                             "N": result.n_samples, "Source": result.path,
                             **dict(zip(["CI low", "CI high", "CI method", "vs SFT"], (cell.get(n) for n in names)))})
            entry = find_reported(reported, spec["method"], spec["iteration"], bench["name"])
            if entry is not None:
                rows.append({"Method": spec["label"], "Model": spec["model"], "Benchmark": bench["label"],
                             "Kind": entry.origin, "Value": entry.value, "Metric": entry.note, "N": None,
                             "Source": entry.source})
    notes = ["", "Source: for our numbers the eval JSON under results/<run>/ (its per-item samples file beside it); "
             "for reported ones the URL. CSV: the CI of our numbers (CI low/high/method) and whether the paired "
             "difference from SFT is significant (vs SFT; comparisons.md has the test)."]
    return Table("main_sources", "Where each number of the main table comes from", columns, rows, notes,
                 detail_columns=["CI low", "CI high", "CI method", "vs SFT"])


def gsil_vs_dpo_table(plan: dict, results: dict[tuple[str, str], EvalResult],
                      intervals: dict[tuple[str, str], Interval] | None = None) -> Table:
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
            row = {"Benchmark": bench["label"], "GSIL": g, "DPO": d, "GSIL - DPO": diff, "Better": better}
            add_intervals(row, gsil["models"][-1], [bench], intervals, "GSIL")
            add_intervals(row, dpo["models"][-1], [bench], intervals, "DPO")
            rows.append(row)
    title = "GSIL against DPO (Figure 6)"
    notes = [""]
    if gsil is not None and dpo is not None:
        notes.append(f"GSIL = {gsil['label']} ({gsil['models'][-1]}), DPO = {dpo['label']} ({dpo['models'][-1]}).")
    else:
        notes.append("The run configures no GSIL/DPO pair (config aggregate.gsil_vs_dpo).")
    notes.append("CSV: each score's CI in `GSIL CI low/high`, `DPO CI low/high`; the paired GSIL - DPO difference "
                 "with its CI and McNemar p is in comparisons.md.")
    return Table("gsil_vs_dpo", title, columns, rows, notes, detail_columns=ci_columns("GSIL") + ci_columns("DPO"))


def ablation_table(plan: dict, results: dict[tuple[str, str], EvalResult], axis: str,
                   intervals: dict[tuple[str, str], Interval] | None = None) -> Table:
    """Rows: the base method and its ablation methods that vary `axis` (beta or gamma), compared at the ablation's
    round (the base at the same round, so every row trained for the same number of rounds)."""
    other = "gamma" if axis == "beta" else "beta"
    benches = plan["benchmarks"]
    symbol = {"beta": "β", "gamma": "γ"}
    columns = ["Method", "Base", symbol[axis], symbol[other], "Model"] + [bench_column(b) for b in benches] + ["Average"]
    rows = []
    ablations = [m for m in plan["methods"]
                 if m.get("ablation_of") and m.get("ablation_axis") == axis and not is_seed_copy(m)]
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
            add_intervals(row, model, benches, intervals)
            rows.append(row)
    ranked = {bench_column(b): b["higher_is_better"] for b in benches}
    title = f"Ablation over {symbol[axis]} ({axis}) (Figure 7)"
    notes = ["", f"Each group varies {symbol[axis]} at its base method's {symbol[other]}. CSV: each score's CI in "
             "`<benchmark> CI low/high/method`."]
    detail = [c for b in benches for c in ci_columns(bench_column(b))]
    return Table(f"ablation_{axis}", title, columns, rows, notes, ranked, detail)


def iterations_table(plan: dict, results: dict[tuple[str, str], EvalResult], reported: list[Reported],
                     intervals: dict[tuple[str, str], Interval] | None = None) -> Table:
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
        if method["kind"] != "selfplay" or method["iterations"] < 2 or is_seed_copy(method):
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
            add_intervals(row, model, benches, intervals)
            rows.append(row)
    notes = ["", "iter<k>: the model after round k (round 0 starts from the SFT model), as SPIN numbers its rounds. "
             "CSV: each score's CI in `<benchmark> CI low/high/method`."]
    detail = [c for b in benches for c in ci_columns(bench_column(b))]
    return Table("iterations", "Results per self-play iteration", columns, rows, notes, detail_columns=detail)


SCALE_SETTINGS = ("optimizer", "lr", "beta", "gamma", "seed")


def scale_table(plan: dict, training: dict[str, tuple[dict | None, Path]]) -> Table:
    """At which scale each trained model ran: the examples (pairs kept after dropping identical or empty ones) and
    optimizer steps of its round, read from the training_config.json its training stage wrote."""
    columns = ["Model", "Method", "Round", "Examples", "Steps", "Batch", *SCALE_SETTINGS, "Source"]
    rows = []
    for model in plan["models"]:
        record, path = training.get(model["id"], (None, None))
        if record is None:
            continue
        layout = record.get("layout") or {}
        rows.append({
            "Model": model["id"], "Method": model["label"],
            "Round": model["iteration"] if model["iteration"] is not None else "",
            "Examples": record.get("examples"), "Steps": record.get("total_steps"),
            "Batch": layout.get("global_batch_size", record.get("global_batch_size")),
            **{key: record.get(key) for key in SCALE_SETTINGS},
            "Source": str(path),
        })
    notes = ["", "Examples: SFT demonstrations, or the pairs a round trained on (self-play pairs after identical and "
             "empty generations were dropped, or DPO preference pairs); Steps: optimizer steps of that round; "
             "Batch: examples per step. From each model folder's training_config.json."]
    return Table("scale", "Training scale per model", columns, rows, notes, formats={"lr": ".3g", "beta": ".3g",
                                                                                      "gamma": ".3g"})


def compute_table(summary: list[dict]) -> Table:
    columns = ["stage", "jobs", "wall_s_total", "wall_s_mean", "wall_s_max", "peak_rss_mb", "cpu_s_total"]
    notes = ["", "From the Snakemake benchmark files (results/<run>/benchmarks/<rule>/*.tsv) of the heavy stages: "
             "wall seconds and peak resident memory (MB) per stage; timings on a shared machine are rough."]
    return Table("compute", "Compute per stage", columns, summary, notes)


# ------------------------------------------------------------------------------------------------ statistics


def ci_label(settings: Settings) -> str:
    return f"{settings.confidence * 100:g}% CI"


def _signed(values: list[float]) -> str:
    return "; ".join(f"{v:+.2f}" for v in values)


def comparison_row(comparison: Comparison, settings: Settings, multi_seed: bool) -> dict[str, Any]:
    """One row of comparisons.md: the first seed's paired numbers, with >1 seed the seed summary and pooled CI."""
    spec, first = comparison.spec, comparison.first
    row: dict[str, Any] = {"Comparison": spec.name, "Benchmark": comparison.bench["label"], "Model A": spec.a,
                           "Model B": spec.b, "Note": "; ".join(dict.fromkeys(comparison.missing)) or None,
                           "Sources": ";".join(dict.fromkeys(comparison.sources)) or None}
    if first is None:
        return row
    paired, ci = first.paired, ci_label(settings)
    row.update({"Model A": first.a, "Model B": first.b, "n": paired.n, "Score A": paired.mean_a,
                "Score B": paired.mean_b, "Difference": paired.difference, ci: format_interval(paired.low, paired.high),
                "McNemar p": paired.p_value, "CI low": paired.low, "CI high": paired.high,
                "A better": paired.a_better, "B better": paired.b_better, "CI method": paired.method})
    significant = comparison.significant()
    row["Significant"] = None if significant is None else ("yes" if significant else "no")
    if multi_seed:
        diffs = comparison.seed_differences()
        mean, sd = stats.mean_sd(diffs)
        row.update({"Seeds": f"{len(diffs)} of {comparison.planned_seeds}", "Difference (seeds)":
                    f"{mean:+.2f} ± {sd:.2f}" if sd is not None else f"{mean:+.2f}",
                    "Difference mean (seeds)": mean, "Difference sd (seeds)": sd,
                    "Per-seed differences": _signed(diffs)})
        if comparison.pooled is not None:
            pooled = comparison.pooled
            row.update({"Pooled n": pooled.n, f"Pooled {ci}": format_interval(pooled.low, pooled.high),
                        "Pooled difference": pooled.difference, "Pooled CI low": pooled.low,
                        "Pooled CI high": pooled.high, "Pooled CI method": pooled.method,
                        "Pooled design effect": pooled.design_effect})
    return row


POOLED_NOTE = (" (the pooled CI, over the items every seed has: for right/wrong items Tango's interval on all "
               "seeds' discordant counts divided by the design effect of the item clusters, Pooled design effect in "
               "the CSV; else the bootstrap of the per-item means over seeds; Difference (seeds): mean ± sample sd "
               "of the per-seed differences)")


def comparisons_table(comparisons: list[Comparison], settings: Settings, multi_seed: bool) -> Table:
    """Every paired comparison on every benchmark (claims.all_comparisons), one row each."""
    ci = ci_label(settings)
    columns = ["Comparison", "Benchmark", "Model A", "Model B", "n", "Score A", "Score B", "Difference", ci,
               "McNemar p"]
    if multi_seed:
        columns += ["Seeds", "Difference (seeds)", "Pooled n", f"Pooled {ci}"]
    columns += ["Significant", "Note"]
    detail = ["CI low", "CI high", "CI method", "A better", "B better"]
    if multi_seed:
        detail += ["Difference mean (seeds)", "Difference sd (seeds)", "Per-seed differences", "Pooled difference",
                   "Pooled CI low", "Pooled CI high", "Pooled CI method", "Pooled design effect"]
    rows = [comparison_row(c, settings, multi_seed) for c in comparisons]
    notes = [
        "",
        "Paired over the items both models were scored on (n; ids from the samples file beside each result, "
        "`<benchmark>.samples.jsonl`). Score A / Score B: mean over those items (percent for accuracy-type "
        "benchmarks; for a group benchmark averaged over subtasks this item mean can differ from the headline). "
        f"Difference: A - B in points. {ci}: for right/wrong items Tango's score interval of the difference of "
        "paired proportions (it stays wide enough when few items differ); for other scores the percentile bootstrap "
        f"over items ({settings.bootstrap_samples} resamples, seed {settings.seed}); CI method in the CSV. "
        "McNemar p: exact two-sided test on the items where one model beats the other (A better / B better in the "
        "CSV; the sign test for scores that are not 0/1).",
        "Significant: the CI excludes 0" + (POOLED_NOTE if multi_seed else "") + ". Model A / Model B and the "
        "numbers before the seed columns are the first seed's. Sources (CSV): the result JSONs, each naming its samples file.",
    ]
    return Table("comparisons", "Paired comparisons between models", columns, rows, notes,
                 detail_columns=detail + ["Sources"], formats={"McNemar p": ".3g"})


def claims_table(results: list[ClaimResult], settings: Settings) -> Table:
    """One row per claim of the paper, with its numbers and verdict; the verdict rules printed below."""
    columns = ["Claim", "Statement", "Model A", "Model B", "Benchmark", "n", "Difference", "Interval", "McNemar p",
               "Per-seed differences", "Verdict", "Reason"]
    rows = [{"Claim": f"({r.claim})", "Statement": r.statement, "Model A": r.model_a, "Model B": r.model_b,
             "Benchmark": r.benchmark, "n": r.n, "Difference": r.difference, "Interval": r.interval,
             "McNemar p": r.p_value, "Per-seed differences": _signed(r.per_seed) or None, "Verdict": r.verdict,
             "Reason": r.reason, "CI low": r.low, "CI high": r.high,
             "Sources": ";".join(dict.fromkeys(r.sources)) or None} for r in results]
    margin = "not set" if settings.margin is None else f"{settings.margin:g} (benchmark scale)"
    notes = ["", f"Settings (aggregate.claims): benchmark {settings.benchmark}, confidence {settings.confidence:g}, "
             f"{settings.bootstrap_samples} bootstrap resamples, seed {settings.seed}, "
             f"non-inferiority margin {margin}; "
             "methods " + (", ".join(f"{k} = {v}" for k, v in settings.names.items()) or "not set") + ".",
             "Difference and Interval: model A - model B in points (claim (b): the mean rewards/real of GSIL minus "
             "SPIN's over the windows, and each curve's range). Sources (CSV): the files each row is computed from.",
             "", "## Verdict rules", "", "```text", verdict_rules(), "```"]
    return Table("claims", "The paper's claims, checked against this run", columns, rows, notes,
                 detail_columns=["CI low", "CI high", "Sources"], formats={"McNemar p": ".3g", "Difference": ".3g"})


def seeds_table(plan: dict, results: dict[tuple[str, str], EvalResult]) -> Table:
    """Per main-table row (SFT and each method's final model) and benchmark: mean and sample sd of the score over
    the training seeds that have a result."""
    benches = plan["benchmarks"]
    columns = ["Method", "Model", "Seeds"]
    for bench in benches:
        columns += [f"{bench_column(bench)} mean", f"{bench_column(bench)} sd"]
    detail = [f"{bench_column(b)} per seed" for b in benches]
    rows = []
    for spec in main_rows(plan):
        copies = replicas(plan, spec["model"])
        if spec["method"] == "base" or not copies:
            continue
        row: dict[str, Any] = {"Method": spec["label"], "Model": spec["model"], "Seeds": len(copies)}
        for bench in benches:
            scores = {seed: _value(results, model, bench["name"]) for seed, model in copies.items()}
            scores = {seed: v for seed, v in scores.items() if v is not None}
            if scores:
                mean, sd = stats.mean_sd(list(scores.values()))
                row.update({f"{bench_column(bench)} mean": mean, f"{bench_column(bench)} sd": sd,
                            f"{bench_column(bench)} per seed": "; ".join(f"{s}: {v:.2f}" for s, v in scores.items())})
        rows.append(row)
    seeds = ", ".join(str(s) for s in plan.get("seeds") or []) or "one (config seeds not set)"
    notes = ["", f"Seeds: {seeds} (the first trains the unsuffixed "
             "models, seed s the copies `<method>-s<s>` and `sft-s<s>`). sd: sample standard deviation over the "
             "seeds with a result (empty for one seed). CSV: each seed's score (`<benchmark> per seed`); the "
             "results are eval/<model>/<benchmark>.json of each seed's model."]
    return Table("seeds", "Scores over training seeds", columns, rows, notes, detail_columns=detail)
