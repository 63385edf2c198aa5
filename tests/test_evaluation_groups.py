"""Headlines of lm-eval group tasks: MMLU is the unweighted mean of its 57 subjects, as lm-eval 0.3.1 / Leaderboard v1.

The lm-eval outputs here are fakes in the shape lm-eval 0.4.13's `simple_evaluate` returns for the stock `mmlu`
group (lm_eval/evaluator_utils.py `EvalAcc._to_eval_results`, lm_eval/api/group.py `Group.aggregate`), checked
against a real run of the group on a tiny model: `results` holds every leaf and group row, `groups` the group rows,
`group_subtasks` mmlu -> 4 category groups -> 57 `mmlu_<subject>` leaves, `n-samples` {original, effective} per leaf.
"""

import json
import math
from pathlib import Path

import pytest
import yaml

from gsil.evaluation import evaluate_model, groups, harness
from gsil.evaluation.benchmarks import get_benchmark, resolve_protocol
from gsil.logutil import GsilError

CATEGORIES = ("mmlu_stem", "mmlu_other", "mmlu_social_sciences", "mmlu_humanities")


def lm_eval_mmlu_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).resolve().parent / "tasks" / "mmlu" / "default"


def subject_categories() -> dict[str, str]:
    """subject -> category group of the installed lm-eval (the `tag` of each default/mmlu_<subject>.yaml)."""
    categories = {}
    for path in sorted(lm_eval_mmlu_dir().glob("mmlu_*.yaml")):
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        categories[config["dataset_name"]] = config["tag"].removesuffix("_tasks")
    return categories


def _group_row(name: str, alias: str, leaves: list[str], results: dict, sizes: dict) -> dict:
    """A group's row as lm-eval's Group.aggregate writes it with weight_by_size: true (pooled stderr)."""
    values = [results[leaf]["acc,none"] for leaf in leaves]
    stderrs = [results[leaf]["acc_stderr,none"] for leaf in leaves]
    n = [sizes[leaf] for leaf in leaves]
    pooled = sum((k - 1) * se ** 2 * k for k, se in zip(n, stderrs)) / (sum(n) - len(n))
    return {"alias": alias, "name": name, "sample_len": sum(n),
            "acc,none": sum(v * k for v, k in zip(values, n)) / sum(n),
            "acc_stderr,none": math.sqrt(pooled / sum(n)), "sample_count": {"acc,none": sum(n)}}


def fake_mmlu_output(scores: dict[str, tuple[float, int]]) -> dict:
    """lm-eval 0.4's output dict for the `mmlu` group given {subject: (accuracy, evaluated questions)}."""
    category_of = subject_categories()
    results, sizes, counts = {}, {}, {}
    for subject, (acc, size) in scores.items():
        leaf = f"mmlu_{subject}"
        results[leaf] = {"name": leaf, "alias": subject, "sample_len": size, "acc,none": acc,
                         "acc_stderr,none": math.sqrt(acc * (1 - acc) / (size - 1))}
        sizes[leaf] = size
        counts[leaf] = {"original": size, "effective": size}
    subtasks = {c: [f"mmlu_{s}" for s in scores if category_of[s] == c] for c in CATEGORIES}
    subtasks = {c: leaves for c, leaves in subtasks.items() if leaves}
    group_rows = {c: _group_row(c, c.removeprefix("mmlu_"), leaves, results, sizes) for c, leaves in subtasks.items()}
    group_rows["mmlu"] = _group_row("mmlu", "mmlu", list(results), results, sizes)
    return {
        "results": {**results, **group_rows},
        "groups": group_rows,
        "group_subtasks": {"mmlu": list(subtasks), **subtasks},
        "configs": {leaf: {"task": leaf, "num_fewshot": 5} for leaf in results},
        "versions": {**{leaf: 1.0 for leaf in results}, **{g: "2" for g in group_rows}},
        "n-shot": {leaf: 5 for leaf in results},
        "higher_is_better": {name: {"acc": True} for name in [*results, *group_rows]},
        "n-samples": counts,
        "samples": {leaf: [] for leaf in results},
    }


@pytest.fixture()
def fake_model(tmp_path):
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text("{}")           # evaluate_model only checks that it is a checkpoint folder
    return path


def run_mmlu(monkeypatch, model, output, out, overrides=None):
    calls = []

    def fake_run_task(model_dir, protocol, run_dir, data_dir, **kwargs):
        calls.append(protocol)
        return out

    monkeypatch.setattr(harness, "run_task", fake_run_task)
    result = evaluate_model(model, "mmlu", output, overrides=overrides)
    assert len(calls) == 1 and calls[0]["task"] == "mmlu"
    return result


# ------------------------------------------------------------------------------------------------ pure functions


def test_plain_and_size_weighted_means_by_hand():
    scores = {"a": {"value": 1.0, "size": 10, "stderr": 0.1}, "b": {"value": 0.5, "size": 100, "stderr": 0.05},
              "c": {"value": 0.0, "size": 1000, "stderr": 0.01}}
    means = groups.subtask_means(scores)
    assert means["subtask_mean"] == pytest.approx(0.5)                      # (1.0 + 0.5 + 0.0) / 3
    assert means["size_weighted_mean"] == pytest.approx(60 / 1110)          # (10 + 50 + 0) / 1110 = 0.0541
    assert means["size_weighted_mean"] == pytest.approx(0.0541, abs=1e-4)
    assert means["subtask_mean_stderr"] == pytest.approx(math.sqrt(0.01 + 0.0025 + 0.0001) / 3)   # 0.0374
    assert means["n_subtasks"] == 3
    scores["b"]["stderr"] = "N/A"                          # lm-eval's stderr of a one-document task
    assert groups.subtask_means(scores)["subtask_mean_stderr"] is None
    with pytest.raises(ValueError):
        groups.subtask_means({})


def test_mmlu_subjects_are_the_installed_lm_eval_groups_leaves():
    assert len(groups.MMLU_SUBJECTS) == 57 == len(set(groups.MMLU_SUBJECTS))
    assert sorted(subject_categories()) == sorted(groups.MMLU_SUBJECTS)
    # why the registry does not take lm-eval's number: its mmlu group weights subjects by size
    group = yaml.safe_load((lm_eval_mmlu_dir() / "_mmlu.yaml").read_text(encoding="utf-8"))
    assert group["aggregate_metric_list"][0]["weight_by_size"] is True


def test_registry_reports_mmlu_as_the_subject_mean():
    assert get_benchmark("mmlu").defaults["aggregation"] == "subtask_mean"
    assert get_benchmark("arc_challenge").defaults["aggregation"] == "harness"
    assert resolve_protocol(get_benchmark("mmlu"), {"aggregation": "harness"})["aggregation"] == "harness"
    with pytest.raises(GsilError, match="aggregation must be one of harness, subtask_mean"):
        resolve_protocol(get_benchmark("mmlu"), {"aggregation": "weighted"})


# ------------------------------------------------------------------------------------------------ the driver


def full_mmlu_scores() -> dict[str, tuple[float, int]]:
    """57 subjects whose accuracy falls with their size: plain mean 0.520, size-weighted 0.435."""
    return {s: (0.8 - 0.01 * i, 100 + 25 * i) for i, s in enumerate(groups.MMLU_SUBJECTS)}


def test_evaluate_reports_the_unweighted_subject_mean_for_mmlu(tmp_path, monkeypatch, fake_model):
    scores = full_mmlu_scores()
    out = fake_mmlu_output(scores)
    plain = sum(acc for acc, _ in scores.values()) / 57
    weighted = sum(acc * n for acc, n in scores.values()) / sum(n for _, n in scores.values())
    assert out["results"]["mmlu"]["acc,none"] == pytest.approx(weighted)   # what lm-eval 0.4 reports
    assert (plain, weighted) == (pytest.approx(0.52), pytest.approx(0.4354, abs=1e-4))

    output = tmp_path / "eval" / "sft" / "mmlu.json"
    result = run_mmlu(monkeypatch, fake_model, output, out)
    assert result["metric"] == "acc" and result["value"] == pytest.approx(plain)
    assert result["n_samples"] == sum(n for _, n in scores.values())
    stderrs = [out["results"][f"mmlu_{s}"]["acc_stderr,none"] for s in scores]
    assert result["stderr"] == pytest.approx(math.sqrt(sum(se ** 2 for se in stderrs)) / 57)
    assert result["protocol"]["aggregation"] == "subtask_mean"
    agg = result["details"]["aggregation"]
    assert agg["method"] == "subtask_mean" and "unweighted" in agg["description"]
    assert agg["value"] == agg["subtask_mean"] == pytest.approx(plain)
    assert agg["size_weighted_mean"] == pytest.approx(weighted)
    assert agg["harness_value"] == pytest.approx(weighted)
    assert agg["harness_stderr"] == pytest.approx(out["results"]["mmlu"]["acc_stderr,none"])
    assert (agg["n_subtasks"], agg["n_expected"], agg["missing_subtasks"]) == (57, 57, [])
    assert agg["per_subtask"]["mmlu_professional_law"]["value"] == pytest.approx(scores["professional_law"][0])
    assert agg["per_subtask"]["mmlu_professional_law"]["size"] == scores["professional_law"][1]
    assert sorted(agg["per_subtask"]) == sorted(f"mmlu_{s}" for s in groups.MMLU_SUBJECTS)
    written = json.loads(output.read_text())
    assert written["value"] == pytest.approx(plain) and written["details"]["aggregation"]["method"] == "subtask_mean"

    # the protocol can ask for lm-eval's own (size-weighted) group value instead
    harness_result = run_mmlu(monkeypatch, fake_model, tmp_path / "harness.json", out,
                              overrides=[{"aggregation": "harness"}])
    assert harness_result["value"] == pytest.approx(weighted)
    assert harness_result["details"]["aggregation"]["subtask_mean"] == pytest.approx(plain)


def test_fewer_subjects_average_what_came_back_and_name_the_rest(tmp_path, monkeypatch, fake_model):
    scores = {"abstract_algebra": (1.0, 10), "anatomy": (0.5, 100), "world_religions": (0.0, 1000)}
    out = fake_mmlu_output(scores)
    assert out["results"]["mmlu"]["acc,none"] == pytest.approx(60 / 1110)
    result = run_mmlu(monkeypatch, fake_model, tmp_path / "mmlu.json", out)
    assert result["value"] == pytest.approx(0.5)
    agg = result["details"]["aggregation"]
    assert agg["size_weighted_mean"] == pytest.approx(0.0541, abs=1e-4)
    assert (agg["n_subtasks"], agg["n_expected"]) == (3, 57)
    assert len(agg["missing_subtasks"]) == 54 and "mmlu_professional_law" in agg["missing_subtasks"]
    assert "mmlu_anatomy" not in agg["missing_subtasks"]


def test_a_subject_without_the_metric_is_left_out_and_named():
    out = fake_mmlu_output({"abstract_algebra": (1.0, 10), "anatomy": (0.5, 100)})
    del out["results"]["mmlu_anatomy"]["acc,none"]
    head = harness.headline(out, "mmlu", "acc", "none", "subtask_mean")
    assert head["value"] == 1.0 and head["aggregation"]["n_subtasks"] == 1
    assert "mmlu_anatomy" in head["aggregation"]["missing_subtasks"]
    del out["results"]["mmlu_abstract_algebra"]["acc,none"]
    with pytest.raises(GsilError, match="no subtask reported 'acc,none'"):
        harness.headline(out, "mmlu", "acc", "none", "subtask_mean")


def test_single_tasks_keep_lm_evals_number():
    out = {"results": {"arc_challenge": {"alias": "arc_challenge", "acc_norm,none": 0.25,
                                         "acc_norm_stderr,none": 0.01}},
           "group_subtasks": {"arc_challenge": []}, "n-samples": {"arc_challenge": {"original": 4, "effective": 4}}}
    for aggregation in ("harness", "subtask_mean"):
        head = harness.headline(out, "arc_challenge", "acc_norm", "none", aggregation)
        assert (head["value"], head["stderr"], head["n_samples"], head["aggregation"]) == (0.25, 0.01, 4, None)
