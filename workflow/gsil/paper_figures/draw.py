"""The two PNGs (matplotlib, Agg backend), drawn from what `loss_shapes` and `toy` computed; no numbers made here."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

from gsil.io import atomic_path  # noqa: E402
from gsil.paper_figures.loss_shapes import OTHER, POINTWISE, LossShape, curve_label  # noqa: E402
from gsil.paper_figures.toy import Mixture  # noqa: E402

# Figure 10's common y-range: the exponential, KLIEP and LSIF terms leave it (drawn clipped, as in the paper).
LOSS_Y_RANGE = (-3.0, 5.0)
REAL_COLOR, GENERATED_COLOR, PAIR_COLOR = "#1f77b4", "#d62728", "#2f2f2f"


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)  # laid out by tight_layout already (a tight bbox redraws)
    plt.close(fig)


def _grid(panels: int, ncols: int, width: float, height: float):
    ncols = max(1, min(ncols, panels))
    nrows = math.ceil(panels / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[panels:]:
        ax.axis("off")
    return fig, flat[:panels]


def figure10(shapes: list[LossShape], beta: float, gamma: float, path: Path) -> int:
    """One panel per registered loss; returns the number of losses drawn."""
    fig, axes = _grid(len(shapes), 4, 3.6, 3.0)
    drawn = 0
    legend: dict[str, object] = {}
    gammas = [0.0] if gamma == 0 else [0.0, gamma]
    for ax, shape in zip(axes, shapes):
        ax.set_title(shape.name + ("" if shape.kind == POINTWISE else f" ({shape.kind})"))
        if shape.kind == OTHER:
            ax.axis("off")
            ax.text(0.5, 0.5, shape.note, ha="center", va="center", wrap=True, transform=ax.transAxes)
            continue
        x = np.asarray(shape.x)
        for g in gammas:
            style = "-" if g == 0 else "--"
            if shape.kind == POINTWISE:
                ax.plot(x, shape.curves[curve_label("real", g)], style, color=REAL_COLOR,
                        label=f"ℓ₊ real (demonstration), γ={g:g}")
                ax.plot(x, shape.curves[curve_label("generated", g)], style, color=GENERATED_COLOR,
                        label=f"ℓ₋ generated, γ={g:g}")
            else:
                ax.plot(x, shape.curves[curve_label("loss", g)], style, color=PAIR_COLOR if g == 0 else "#9f9f9f",
                        label=f"pairwise loss, γ={g:g}")
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.axvline(0.0, color="grey", linewidth=0.6, linestyle=":")
        ax.set_ylim(*LOSS_Y_RANGE)
        ax.set_xlim(x[0], x[-1])
        ax.set_xlabel("log-ratio Δ = log πθ/π_ref" if shape.kind == POINTWISE else "margin Δ⁺ − Δ⁻")
        if shape.kind != POINTWISE:
            ax.text(0.03, 0.04, shape.note.split(": ", 1)[-1], transform=ax.transAxes, fontsize="x-small")
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
        drawn += 1
    if legend:
        fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=min(len(legend), 6),
                   fontsize="small", bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(f"Figure 10: each registered loss against the log-ratio, f = βΔ + γ with β = {beta:g} "
                 f"(solid: γ = 0{'' if gamma == 0 else f'; dashed: γ = {gamma:g}'}); y clipped to {LOSS_Y_RANGE}",
                 fontsize="medium")
    fig.tight_layout(rect=(0.0, 0.07, 1.0, 1.0))
    _save(fig, path)
    return drawn


def _normal_pdf(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    return np.exp(-0.5 * ((x - mean) / std) ** 2) / (std * math.sqrt(2.0 * math.pi))


def _mixture_pdf(x: np.ndarray, mixture: dict) -> np.ndarray:
    return sum(w * _normal_pdf(x, m, s) for w, m, s in zip(mixture["weights"], mixture["means"], mixture["stds"]))


_RUN_COLORS = ["#1f77b4", "#9467bd", "#8c564b", "#e377c2"]


def figure1(toy: dict, path: Path) -> int:
    """(a) data and every fit, (b..) each GSIL run's model over rounds, (last) both KLs per round. Returns the number
    of GSIL runs drawn."""
    mixture = toy["data"]["mixture"]
    Mixture(tuple(mixture["weights"]), tuple(mixture["means"]), tuple(mixture["stds"]))  # validates the record
    lo = min(m - 4 * s for m, s in zip(mixture["means"], mixture["stds"])) - 2.0
    hi = max(m + 4 * s for m, s in zip(mixture["means"], mixture["stds"])) + 2.0
    x = np.linspace(lo, hi, 1201)
    data_pdf = _mixture_pdf(x, mixture)
    fits = {row["fit"]: row for row in toy["fits"]}
    peaks = [1.0 / (row["std"] * math.sqrt(2.0 * math.pi)) for row in fits.values() if row["std"] > 0]
    top = min(max([1.6 * float(data_pdf.max())] + [1.1 * p for p in peaks]), 4.0 * float(data_pdf.max()))
    runs = toy["runs"]
    fig, axes = _grid(2 + len(runs), 2, 6.0, 3.8)

    def data_curve(ax):
        ax.fill_between(x, data_pdf, color="#d9d9d9")
        ax.plot(x, data_pdf, color="black", linewidth=1.8, label="data (mixture)")
        ax.set_xlim(lo, hi)
        ax.set_ylim(0, top)
        ax.set_xlabel("x")
        ax.set_ylabel("density")

    ax = axes[0]
    data_curve(ax)
    styles = {"base model (start of every fit)": ("#aaaaaa", ":"), "SFT (maximum likelihood)": ("#2ca02c", "--"),
              "reverse-KL optimum (reference)": ("#ff7f0e", ":")}
    for index, run in enumerate(runs):
        styles[run["label"]] = (_RUN_COLORS[index % len(_RUN_COLORS)], "-.")
    for name, row in fits.items():
        color, style = styles.get(name, ("#7f7f7f", "-"))
        ax.plot(x, _normal_pdf(x, row["mean"], row["std"]), style, color=color, linewidth=1.6,
                label=f"{name}: KL(d‖m) {row['kl_data_model']:.2f}, KL(m‖d) {row['kl_model_data']:.2f}")
    ax.set_title("(a) one Gaussian fitted to the data (final models)")
    ax.legend(fontsize="x-small", loc="upper right")

    cmap = plt.get_cmap("viridis")
    for index, run in enumerate(runs):
        ax = axes[1 + index]
        data_curve(ax)
        rounds = run["rounds"]
        last = max(r["round"] for r in rounds) or 1
        for record in rounds:
            shade = cmap(0.9 * (1.0 - record["round"] / last))
            ax.plot(x, _normal_pdf(x, record["mean"], record["std"]), color=shade,
                    linewidth=2.2 if record is rounds[-1] else 0.9,
                    label=f"round {record['round']}" if record["round"] in (0, last) else None)
        mle = fits["SFT (maximum likelihood)"]
        ax.plot(x, _normal_pdf(x, mle["mean"], mle["std"]), "--", color="#2ca02c", label="SFT (MLE)")
        title = f"({chr(ord('b') + index)}) {run['label']}: model by round (light → dark)"
        if run.get("stopped"):
            title += f"\n{run['stopped']}"
        ax.set_title(title, fontsize="medium")
        ax.legend(fontsize="x-small", loc="upper right")

    ax = axes[1 + len(runs)]
    for index, run in enumerate(runs):
        color = _RUN_COLORS[index % len(_RUN_COLORS)]
        rounds = [r["round"] for r in run["rounds"]]
        ax.plot(rounds, [r["kl_model_data"] for r in run["rounds"]], "-o", markersize=3, color=color,
                label=f"{run['label']}: KL(model‖data)")
        ax.plot(rounds, [r["kl_data_model"] for r in run["rounds"]], "--s", markersize=3, color=color,
                alpha=0.7, label=f"{run['label']}: KL(data‖model)")
    mle = fits["SFT (maximum likelihood)"]
    reference = fits["reverse-KL optimum (reference)"]
    ax.axhline(mle["kl_model_data"], color="#2ca02c", linestyle="-", linewidth=0.9, label="SFT: KL(model‖data)")
    ax.axhline(mle["kl_data_model"], color="#2ca02c", linestyle="--", linewidth=0.9, label="SFT: KL(data‖model)")
    ax.axhline(reference["kl_model_data"], color="#ff7f0e", linestyle=":", linewidth=1.2,
               label="reverse-KL optimum: KL(model‖data)")
    ax.set_yscale("log")
    ax.set_ylim(top=ax.get_ylim()[1] * 30)  # room for the legend
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("GSIL round")
    ax.set_ylabel("KL (nats)")
    ax.set_title(f"({chr(ord('b') + len(runs))}) both divergences by round")
    ax.legend(fontsize="xx-small", loc="upper right", ncol=2)
    fig.suptitle(f"Figure 1 (toy): SFT (forward KL) vs GSIL self-imitation ({toy['loss']} loss), "
                 f"n = {toy['data']['n']}, seed {toy['seed']}", fontsize="medium")
    fig.tight_layout()
    _save(fig, path)
    return len(runs)
