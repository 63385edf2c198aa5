"""The paper's figures as PNGs (matplotlib, Agg backend), drawn from the tables and the training metrics.

Each function writes one file and returns what it drew (for tests); when a run has nothing to draw for a figure,
the PNG says so in words, so the workflow's declared outputs always exist. Every plotted score carries its CI as an
error bar, read from the table's `<column> CI low/high` detail columns (none drawn where a table has no CI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gsil.aggregate.tables import Table, ci_columns  # noqa: E402
from gsil.io import atomic_path  # noqa: E402
from gsil.losses import pair_metric_names  # noqa: E402


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def _empty(path: Path, title: str, reason: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, reason, ha="center", va="center", wrap=True)
    _save(fig, path)


def errors(rows: list[dict[str, Any]], value_column: str, ci_column: str | None = None) -> list[list[float]]:
    """matplotlib's yerr ([below], [above]) of each row's value in `value_column` from its CI columns (0 where the
    row has no CI)."""
    low_column, high_column, _ = ci_columns(ci_column or value_column)
    below, above = [], []
    for row in rows:
        value, low, high = row.get(value_column), row.get(low_column), row.get(high_column)
        ok = value is not None and low is not None and high is not None
        below.append(max(0.0, value - low) if ok else 0.0)
        above.append(max(0.0, high - value) if ok else 0.0)
    return [below, above]


def gsil_vs_dpo_figure(table: Table, path: Path) -> int:
    """Grouped bars per benchmark, GSIL beside DPO (Figure 6). Returns the number of benchmarks drawn."""
    rows = [r for r in table.rows if r.get("GSIL") is not None and r.get("DPO") is not None]
    if not rows:
        _empty(path, table.title, "no benchmark has both a GSIL and a DPO result")
        return 0
    fig, ax = plt.subplots(figsize=(1.8 * len(rows) + 2, 3.5))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["GSIL"] for r in rows], width=0.4, label="GSIL", color="#1f77b4",
           yerr=errors(rows, "GSIL"), capsize=3)
    ax.bar([x + 0.2 for x in xs], [r["DPO"] for r in rows], width=0.4, label="DPO", color="#ff7f0e",
           yerr=errors(rows, "DPO"), capsize=3)
    ax.set_xticks(list(xs), [r["Benchmark"] for r in rows])
    ax.set_ylabel("score (error bars: CI)")
    ax.set_title(table.title)
    ax.legend()
    _save(fig, path)
    return len(rows)


def ablation_figure(beta: Table, gamma: Table, benchmarks: list[str], path: Path) -> int:
    """Score against β and against γ, one line per benchmark and base method (Figure 7). Returns lines drawn."""
    tables = [(beta, "β"), (gamma, "γ")]
    if not any(t.rows for t, _ in tables):
        _empty(path, "Ablations over β and γ (Figure 7)", "the run configures no ablation grid")
        return 0
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    lines = 0
    for ax, (table, symbol) in zip(axes, tables):
        ax.set_title(f"varying {symbol}")
        ax.set_xlabel(symbol)
        ax.set_ylabel("score (error bars: CI)")
        for base in dict.fromkeys(r["Base"] for r in table.rows):
            group = [r for r in table.rows if r["Base"] == base]
            for bench in benchmarks:
                points = [r for r in group if r.get(bench) is not None]
                if points:
                    ax.errorbar([r[symbol] for r in points], [r[bench] for r in points], yerr=errors(points, bench),
                                marker="o", capsize=3, label=f"{base}: {bench}")
                    lines += 1
        if table.rows:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, f"no {symbol} ablation", ha="center", va="center", transform=ax.transAxes)
    _save(fig, path)
    return lines


# Legend words of each pair kind's two sides (the metric names come from gsil.losses.pair_metric_names).
_REWARD_SIDES = {
    "selfplay": ("demonstrations", "self-generated"),
    "preference": ("chosen responses", "rejected responses"),
}


def reward_kind(rows: list[dict[str, Any]]) -> str | None:
    """The pair kind whose reward metrics a run's rows log: selfplay (rewards/real, rewards/generated) or
    preference (rewards/chosen, rewards/rejected, DPO); None when neither."""
    for kind in _REWARD_SIDES:
        key = pair_metric_names(kind)["rewards/positive"]
        if any(key in r for r in rows):
            return kind
    return None


def rewards_figure(curves: dict[str, list[dict[str, Any]]], path: Path) -> int:
    """rewards/real and rewards/generated over training steps per method (Figure 2); rounds are concatenated, with
    a dotted line where a new round starts. `curves` maps a method label to its rows (with `round` added). A
    preference method (DPO) is drawn with its own words, rewards/chosen and rewards/rejected; a method whose rows
    log neither is left out."""
    kinds = {label: reward_kind(rows) for label, rows in curves.items()}
    drawable = {label: rows for label, rows in curves.items() if kinds[label] is not None}
    if not drawable:
        _empty(path, "Rewards over training (Figure 2)",
               "no training metrics with rewards/real or rewards/chosen in this run")
        return 0
    fig, axes = plt.subplots(1, len(drawable), figsize=(5 * len(drawable), 3.5), squeeze=False)
    for ax, (label, rows) in zip(axes[0], drawable.items()):
        names = pair_metric_names(kinds[label])
        positive_key, negative_key = names["rewards/positive"], names["rewards/negative"]
        offset, xs, positive, negative, boundaries = 0, [], [], [], []
        for round_index in sorted({r["round"] for r in rows}):
            part = [r for r in rows if r["round"] == round_index and positive_key in r]
            if offset:
                boundaries.append(offset + 0.5)
            for r in part:
                xs.append(offset + r["step"])
                positive.append(r[positive_key])
                negative.append(r.get(negative_key))
            offset += max((r["step"] for r in part), default=0)
        positive_words, negative_words = _REWARD_SIDES[kinds[label]]
        ax.plot(xs, positive, label=f"{positive_key} ({positive_words})", color="#2ca02c")
        ax.plot(xs, negative, label=f"{negative_key} ({negative_words})", color="#d62728")
        for b in boundaries:
            ax.axvline(b, color="grey", linestyle=":")
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_title(label)
        ax.set_xlabel("training step (rounds concatenated)")
        ax.set_ylabel("log πθ/π_ref (summed)")
        ax.legend(fontsize="small")
    _save(fig, path)
    return len(drawable)


def iterations_figure(table: Table, benchmarks: list[str], path: Path) -> int:
    """Score per round for each multi-round method, one panel per benchmark. Returns lines drawn."""
    if not table.rows:
        _empty(path, table.title, "no self-play method runs more than one iteration")
        return 0
    fig, axes = plt.subplots(1, len(benchmarks), figsize=(4.5 * len(benchmarks), 3.5), squeeze=False)
    lines = 0
    for ax, bench in zip(axes[0], benchmarks):
        methods = list(dict.fromkeys(r["Method"] for r in table.rows))
        for index, method in enumerate(methods):
            rows = [r for r in table.rows if r["Method"] == method]
            points = [(i, r) for i, r in enumerate(rows) if r.get(bench) is not None]
            dodge = (index - (len(methods) - 1) / 2) * 0.05  # side by side, so error bars do not hide each other
            if points:
                ax.errorbar([i + dodge for i, _ in points], [r[bench] for _, r in points],
                            yerr=errors([r for _, r in points], bench), marker="o", capsize=3, label=method)
                lines += 1
        names = [r["Iteration"] for r in table.rows if r["Method"] == table.rows[0]["Method"]]
        ax.set_xticks(range(len(names)), [n.replace(" (SFT)", "") for n in names])
        ax.set_title(bench)
        ax.set_ylabel("score (error bars: CI)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    _save(fig, path)
    return lines


def overview_figure(table: Table, benchmarks: list[str], path: Path, sft_model: str = "sft") -> int:
    """The first figure to look at: every main-table row (base, SFT, each method's final model) on every benchmark,
    one panel per benchmark, bars with their CI, SFT's score as a dashed line, † where the paired difference from
    SFT is significant (as in main.md). Returns the number of bars drawn."""
    if not any(r.get(b) is not None for r in table.rows for b in benchmarks):
        _empty(path, "Overview: methods x benchmarks", "no evaluation results in this run yet")
        return 0
    labels = [r["Method"] for r in table.rows]
    fig, axes = plt.subplots(1, len(benchmarks), figsize=(4.2 * len(benchmarks) + 1.5, 0.45 * len(labels) + 1.8),
                             squeeze=False, sharey=True)
    bars = 0
    for ax, bench in zip(axes[0], benchmarks):
        ys = list(range(len(labels)))
        values = [r.get(bench) if r.get(bench) is not None else 0.0 for r in table.rows]
        colors = ["#2ca02c" if r.get("Model") == sft_model else "#7f7f7f" if r.get("Model") == "base" else "#1f77b4"
                  for r in table.rows]
        ax.barh(ys, values, xerr=errors(table.rows, bench), color=colors, capsize=3)
        sft = next((r.get(bench) for r in table.rows if r.get("Model") == sft_model), None)
        if sft is not None:
            ax.axvline(sft, color="#2ca02c", linestyle="--", linewidth=1)
        for y, row in zip(ys, table.rows):
            if row.get(bench) is None:
                ax.text(0, y, " no result", va="center", fontsize="small", color="grey")
                continue
            bars += 1
            mark = " †" if row.get(f"{bench} vs SFT") == "significant" else ""
            ax.text(row.get(ci_columns(bench)[1]) or row[bench], y, f" {row[bench]:.1f}{mark}", va="center",
                    fontsize="small")
        ax.set_title(bench)
        ax.set_xlabel("score")
        ax.margins(x=0.25)
    axes[0][0].set_yticks(range(len(labels)), labels)
    axes[0][0].invert_yaxis()
    fig.suptitle("Overview: score per method and benchmark\n(error bars: CI; dashed: SFT; †: paired difference "
                 "from SFT significant)", fontsize="medium")
    fig.tight_layout()
    _save(fig, path)
    return bars
