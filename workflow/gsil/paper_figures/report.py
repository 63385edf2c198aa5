"""`build_all`: compute Figure 10 and the Figure 1 toy, then write the PNGs, the KL table and the numbers' JSON."""

from __future__ import annotations

import html
import logging
import statistics
from pathlib import Path

from gsil.aggregate.tables import Table, format_cell, to_csv, to_markdown
from gsil.io import write_json, write_text
from gsil.losses import get_loss
from gsil.paper_figures import draw
from gsil.paper_figures.loss_shapes import POINTWISE, classify, loss_shapes
from gsil.paper_figures.toy import ToySettings, run_toy

log = logging.getLogger("gsil.paper_figures")

# output key -> file name; the rule's named outputs use the same keys
OUTPUT_NAMES = {
    "figure10": "figure10.png",
    "figure1": "figure1.png",
    "kl_md": "figure1_kl.md",
    "kl_html": "figure1_kl.html",
    "kl_csv": "figure1_kl.csv",
    "numbers": "paper_figures.json",
}

KL_COLUMNS = ["Fit", "Objective", "μ", "σ", "KL(data‖model)", "KL(model‖data)", "Note"]


def kl_table(toy: dict) -> Table:
    """The fits' KL divergences (one row per fit), with notes on each GSIL run's last half of rounds and on the
    fixed-point diagnostic, all read from `toy`."""
    rows = [{"Fit": f["fit"], "Objective": f["objective"], "μ": f["mean"], "σ": f["std"],
             "KL(data‖model)": f["kl_data_model"], "KL(model‖data)": f["kl_model_data"], "Note": f["note"]}
            for f in toy["fits"]]
    data = toy["data"]
    mixture = data["mixture"]
    components = " + ".join(f"{w:g}·N({m:g}, {s:g}²)" for w, m, s in
                            zip(mixture["weights"], mixture["means"], mixture["stds"]))
    settings = toy["settings"]
    notes = [
        f"Data: {components}; {data['n']} demonstrations (seed {toy['seed']}). Model: one Gaussian N(μ, σ²). "
        f"GSIL: loss `{toy['loss']}` from the registry"
        + (", f = β·log(p_θ/p_θt) + γ" if toy.get("pointwise", True) else ", pairwise on Δ = log(p_θ/p_θt)")
        + f", {settings['rounds']} rounds of "
        f"{settings['steps_per_round']} full-batch Adam steps (lr {settings['lr']:g}), {data['n']} own samples "
        f"per round, every fit started from the base model N({settings['init_mean']:g}, {settings['init_std']:g}²). "
        "KL in nats, trapezoid rule on a grid.",
        "",
    ]
    for run in toy["runs"]:
        later = [r for r in run["rounds"] if r["round"] > settings["rounds"] // 2]
        if not later:
            continue
        reverse = [r["kl_model_data"] for r in later]
        forward = [r["kl_data_model"] for r in later]
        notes.append(
            f"- {run['label']}, rounds {later[0]['round']}–{later[-1]['round']}: KL(model‖data) median "
            f"{statistics.median(reverse):.4f} (range {min(reverse):.4f}–{max(reverse):.4f}), KL(data‖model) median "
            f"{statistics.median(forward):.4f} (range {min(forward):.4f}–{max(forward):.4f}); σ range "
            f"{min(r['std'] for r in later):.3f}–{max(r['std'] for r in later):.3f}."
            + (f" Stopped: {run['stopped']}." if run.get("stopped") else "")
        )
    if toy.get("round_gradient"):
        for setting, at in toy["round_gradient"].items():
            notes.append(
                f"- Fixed-point check, {setting}: |∇θ| of a GSIL round's objective at θ = θt (generated side exact) "
                f"is {at['mle']['norm']:.2e} at the MLE, {at['reverse_kl_optimum']['norm']:.2e} at the reverse-KL "
                f"optimum, {at['base']['norm']:.2e} at the base model."
            )
    return Table(name="figure1_kl", title="Figure 1 (toy): KL divergences of each fit", columns=KL_COLUMNS,
                 rows=rows, notes=notes, formats={"μ": ".4f", "σ": ".4f", "KL(data‖model)": ".4f",
                                                  "KL(model‖data)": ".4f"})


_STYLE = (
    "body { font: 14px/1.45 system-ui, sans-serif; color: #1f2933; margin: 1.5em; }"
    " table { border-collapse: collapse; margin: 0 0 1em; font-variant-numeric: tabular-nums; }"
    " th, td { border: 1px solid #cbd2d9; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }"
    " thead th { background: #e4e7eb; } p, li { max-width: 70em; color: #3e4c59; }"
)


def to_html(table: Table) -> str:
    """The table as a standalone HTML page (Snakemake's report shows HTML in the page, a .md only as a download):
    the same cells as the Markdown, then its notes (paragraphs and '- ' items); no script, no external resource."""
    cell = lambda row, c: html.escape(format_cell(row.get(c), table.formats.get(c, ".2f")))  # noqa: E731
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(row, c)}</td>" for c in table.columns) + "</tr>\n"
                   for row in table.rows)
    notes, items = [], []
    for note in [n.replace("`", "") for n in table.notes] + [""]:
        if note.startswith("- "):
            items.append(f"<li>{html.escape(note[2:])}</li>")
            continue
        if items:
            notes.append("<ul>" + "".join(items) + "</ul>")
            items = []
        if note:
            notes.append(f"<p>{html.escape(note)}</p>")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(table.title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(table.title)}</h1>\n<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}"
            f"</tbody>\n</table>\n" + "\n".join(notes) + "\n</body>\n</html>\n")


def build_all(output_dir: Path, beta: float, gamma: float, seed: int, toy_loss: str = "logistic",
              rounds: int | None = None) -> dict[str, Path]:
    """Compute and write every output (OUTPUT_NAMES) into `output_dir`; returns {key: path}."""
    output_dir = Path(output_dir)
    paths = {key: output_dir / name for key, name in OUTPUT_NAMES.items()}

    shapes = loss_shapes(beta, gamma)
    for shape in shapes:
        log.info("figure 10: %s is %s (%s)", shape.name, shape.kind, shape.note)
    draw.figure10(shapes, beta, gamma, paths["figure10"])

    settings = ToySettings() if rounds is None else ToySettings(rounds=rounds)
    pointwise = classify(get_loss(toy_loss), beta) == POINTWISE
    toy = run_toy(beta, gamma, seed, toy_loss, settings, pointwise=pointwise)
    draw.figure1(toy, paths["figure1"])
    table = kl_table(toy)
    write_text(paths["kl_md"], to_markdown(table))
    write_text(paths["kl_html"], to_html(table))
    write_text(paths["kl_csv"], to_csv(table))

    write_json(paths["numbers"], {
        "beta": beta,
        "gamma": gamma,
        "figure10": {s.name: {"kind": s.kind, "note": s.note, "values": s.values} for s in shapes},
        "figure1": toy,
    })
    return paths
