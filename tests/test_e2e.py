"""The whole DAG on a tiny randomly initialised model (config/test.yaml): every stage really runs, every table and
figure appears with the expected rows and columns, and a second run has nothing to do.

Minutes of CPU (most of it process start-up: each job imports torch/transformers/lm-eval); run with
`pytest -m e2e tests/test_e2e.py`.
"""

from __future__ import annotations

import json

import pytest

from helpers import read_csv, read_jsonl

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def finished_run(tiny_workflow_run):
    """The uninterrupted run of config/test.yaml (tests/conftest.py, shared with tests/test_fault_injection.py):
    its results and the output of a second, dry run."""
    return tiny_workflow_run.run_dir, tiny_workflow_run.dry_run


def test_second_run_has_nothing_to_do(finished_run):
    _, second = finished_run
    assert "Nothing to be done" in second


def test_main_table(finished_run):
    run_dir, _ = finished_run
    rows = read_csv(run_dir / "tables" / "main.csv")
    assert [r["Method"] for r in rows] == ["Base", "SFT", "DPO", "SPIN (iter1)", "GSIL (logistic) (iter1)"]
    assert list(rows[0]) == ["Method", "Model", "Arith", "Arith MC", "Average", "best_in"]
    for row in rows:  # every cell of ours is filled from an eval file, a percentage
        for column in ("Arith", "Arith MC", "Average"):
            assert 0.0 <= float(row[column]) <= 100.0
    sources = read_csv(run_dir / "tables" / "main_sources.csv")
    assert len(sources) == 5 * 2 and all((run_dir / s["Source"]).is_file() for s in sources)
    # The best value of a column is bold unless the whole column ties (a tiny random model often scores alike).
    markdown = (run_dir / "tables" / "main.md").read_text()
    for column in ("Arith", "Arith MC"):
        values = {float(row[column]) for row in rows}
        marked = [row["Method"] for row in rows if column in row["best_in"].split(";")]
        assert bool(marked) == (len(values) > 1), (column, values, marked)
        if marked:
            assert "**" in markdown


def test_comparison_tables(finished_run):
    run_dir, _ = finished_run
    assert [r["Benchmark"] for r in read_csv(run_dir / "tables" / "gsil_vs_dpo.csv")] == ["Arith", "Arith MC"]
    beta = read_csv(run_dir / "tables" / "ablation_beta.csv")
    assert [(r["β"], r["Model"]) for r in beta] == [("0.05", "gsil-logistic-b0.05-g2/iter0"),
                                                   ("0.1", "gsil-logistic/iter0")]
    gamma = read_csv(run_dir / "tables" / "ablation_gamma.csv")
    assert [(r["γ"], r["Model"]) for r in gamma] == [("0.0", "gsil-logistic-b0.1-g0/iter0"),
                                                    ("2.0", "gsil-logistic/iter0")]
    iterations = read_csv(run_dir / "tables" / "iterations.csv")
    assert [r["Iteration"] for r in iterations] == ["start (SFT)", "iter0", "iter1"] * 2
    compute = {r["stage"]: r for r in read_csv(run_dir / "tables" / "compute.csv")}
    assert set(compute) == {"sft_train", "generate_responses", "reference_logps", "align_selfplay",
                            "align_preferences", "evaluate_model", "total"}
    n_models = len(json.loads((run_dir / "plan.json").read_text())["models"])
    # one evaluation job per model, for all of its benchmarks
    assert int(compute["align_selfplay"]["jobs"]) == 6 and int(compute["evaluate_model"]["jobs"]) == n_models
    assert float(compute["total"]["peak_rss_mb"]) > 0


def test_figures_and_training_metrics(finished_run):
    run_dir, _ = finished_run
    for name in ("gsil_vs_dpo", "ablation", "rewards", "iterations"):
        assert (run_dir / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    metrics = (run_dir / "train" / "gsil-logistic" / "iter1" / "metrics.jsonl").read_text().splitlines()
    assert metrics and "rewards/real" in metrics[0]
    dpo = read_jsonl(run_dir / "train" / "dpo" / "metrics.jsonl")[0]
    assert {"rewards/chosen", "rewards/rejected"} <= set(dpo) and "rewards/real" not in dpo  # TRL's words


def test_claims_scale_paper_figures_curves_and_cards(finished_run):
    """What a reader of the run gets besides the main table: a verdict per claim with its numbers, the scale each
    model trained at, the paper's Figures 1 and 10, TensorBoard curves of every training job and a model card in
    every trained model folder."""
    run_dir, _ = finished_run
    claims = read_csv(run_dir / "tables" / "claims.csv")
    assert len(claims) == 4
    verdicts = {"supported", "contradicted", "inconclusive", "not run"}
    assert all(any(v in " ".join(row.values()).lower() for v in verdicts) for row in claims)
    scale = {r["Model"]: r for r in read_csv(run_dir / "tables" / "scale.csv")}
    assert {"sft", "dpo", "spin/iter0", "spin/iter1", "gsil-logistic/iter1"} <= set(scale)
    assert all(int(r["Steps"]) >= 1 and int(r["Examples"]) >= 1 for r in scale.values())
    for name in ("figure10.png", "figure1.png", "figure1_kl.csv"):
        assert (run_dir / "figures" / "paper" / name).stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for model in ("sft", "spin/iter1", "dpo"):
        events = EventAccumulator(str(run_dir / "tracking" / model / "gsil"))
        events.Reload()
        assert "loss" in events.Tags()["scalars"], model
        steps = [e.step for e in events.Scalars("loss")]
        metrics = (run_dir / "train" / model / "metrics.jsonl").read_text().splitlines()
        assert len(steps) == len(metrics), model
        card = (run_dir / "models" / model / "README.md").read_text()
        assert card.startswith("---") and "gsil" in card, model
    assert list((run_dir / "tracking" / "eval").rglob("events.out.tfevents.*"))
