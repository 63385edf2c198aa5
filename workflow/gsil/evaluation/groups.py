"""Headline numbers of lm-eval task groups: the harness's own group value, or the plain mean over the subtasks.

lm-eval 0.4's stock `mmlu` group weights each of its 57 subjects by its number of test questions
(`aggregate_metric_list: weight_by_size: true` in lm_eval/tasks/mmlu/default/_mmlu.yaml, through the
mmlu_stem / mmlu_humanities / mmlu_social_sciences / mmlu_other subgroups). lm-eval 0.3.1, which the GSIL paper
used, has no group: MMLU is 57 tasks `hendrycksTest-<subject>`, and the Open LLM Leaderboard v1 (the source of the
reported SPIN numbers) prints the plain, unweighted mean of their accuracies. The subjects range from 100 to 1534
test questions (professional_law), so the two means differ whenever accuracy varies with subject size.

The protocol key `aggregation` chooses the headline of a group task:

    harness       lm-eval's own group value (size-weighted for mmlu)
    subtask_mean  the unweighted mean of the leaf subtasks' values (the registry's choice for mmlu)

Either way the result JSON keeps both numbers and every subtask's value (`details.aggregation`), so a table cell can
be traced back to the 57 subject scores.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from gsil.logutil import GsilError

log = logging.getLogger("gsil.evaluate")

AGGREGATIONS = ("harness", "subtask_mean")

# The 57 MMLU subjects (Hendrycks et al. 2021): the `hendrycksTest-<subject>` tasks of lm-eval 0.3.1 and the
# `mmlu_<subject>` leaf tasks of lm-eval 0.4's `mmlu` group (dataset configs of cais/mmlu).
MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history", "high_school_world_history",
    "human_aging", "human_sexuality", "international_law", "jurisprudence", "logical_fallacies", "machine_learning",
    "management", "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios",
    "nutrition", "philosophy", "prehistory", "professional_accounting", "professional_law",
    "professional_medicine", "professional_psychology", "public_relations", "security_studies", "sociology",
    "us_foreign_policy", "virology", "world_religions",
)

# Leaf tasks a group should return, so that a short result can name what is missing.
EXPECTED_SUBTASKS: dict[str, tuple[str, ...]] = {"mmlu": tuple(f"mmlu_{s}" for s in MMLU_SUBJECTS)}

DESCRIPTIONS = {
    "harness": "lm-eval's own group value (its aggregate_metric_list; size-weighted for mmlu)",
    "subtask_mean": "unweighted mean over the group's leaf subtasks (as lm-eval 0.3.1's 57 hendrycksTest-* tasks "
                    "were averaged by the Open LLM Leaderboard v1)",
}


def _number(value: Any) -> float | None:
    """A finite float, or None for lm-eval's "N/A" stderr, NaN and missing values."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def subtask_means(scores: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Plain and size-weighted means of per-subtask scores `{name: {"value", "size", "stderr"}}`.

    The plain mean's stderr is sqrt(sum se_i^2) / k, the standard error of a mean of k independent subtask means
    (lm-eval's `unweighted_mean_stderr`); None unless every subtask has one. The size-weighted mean is the one
    lm-eval's group reports with weight_by_size; None unless every subtask has a size.
    """
    if not scores:
        raise ValueError("mean of no subtasks")
    values = [float(s["value"]) for s in scores.values()]
    stderrs = [_number(s.get("stderr")) for s in scores.values()]
    sizes = [s.get("size") for s in scores.values()]
    mean = sum(values) / len(values)
    stderr = None
    if all(se is not None for se in stderrs):
        stderr = math.sqrt(sum(se * se for se in stderrs)) / len(stderrs)
    weighted = None
    if all(isinstance(n, int) and n > 0 for n in sizes):
        weighted = sum(v * n for v, n in zip(values, sizes)) / sum(sizes)
    return {"subtask_mean": mean, "subtask_mean_stderr": stderr, "size_weighted_mean": weighted,
            "n_subtasks": len(values)}


def leaf_task_names(out: dict[str, Any], task: str) -> list[str]:
    """The leaf tasks under `task` in lm-eval's `group_subtasks` (itself when it is not a group)."""
    subtasks = (out.get("group_subtasks") or {}).get(task)
    if not subtasks:
        return [task]
    names: list[str] = []
    for sub in subtasks:
        names.extend(leaf_task_names(out, sub))
    return names


def is_group(out: dict[str, Any], task: str) -> bool:
    return bool((out.get("group_subtasks") or {}).get(task))


def subtask_scores(out: dict[str, Any], task: str, key: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Per-leaf `{value, stderr, size}` of the results key `key` ("acc,none"), and the leaves that lack it."""
    metric, _, filter_name = key.partition(",")
    stderr_key = f"{metric}_stderr,{filter_name}"
    counts = out.get("n-samples") or {}
    scores: dict[str, dict[str, Any]] = {}
    lacking: list[str] = []
    for name in leaf_task_names(out, task):
        row = (out.get("results") or {}).get(name) or {}
        value = _number(row.get(key))
        if value is None:
            lacking.append(name)
            continue
        size = (counts.get(name) or {}).get("effective", row.get("sample_len"))
        scores[name] = {"value": value, "stderr": _number(row.get(stderr_key)),
                        "size": int(size) if isinstance(size, (int, float)) else None}
    return scores, lacking


def aggregate_group(out: dict[str, Any], task: str, key: str, method: str) -> dict[str, Any]:
    """The headline of group `task` by `method` and everything needed to trace it (`details.aggregation`).

    Returns {"method", "description", "results_key", "value", "stderr", "subtask_mean", "subtask_mean_stderr",
    "size_weighted_mean", "harness_value", "harness_stderr", "n_subtasks", "n_expected", "missing_subtasks",
    "per_subtask"}; `value`/`stderr` are the headline (the subtask mean or the harness value).
    """
    if method not in AGGREGATIONS:
        raise GsilError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {method!r}")
    scores, lacking = subtask_scores(out, task, key)
    if not scores:
        raise GsilError(f"group {task!r}: no subtask reported {key!r}; subtasks: {leaf_task_names(out, task)}")
    means = subtask_means(scores)
    expected = EXPECTED_SUBTASKS.get(task)
    missing = sorted(set(expected) - set(scores)) if expected else sorted(lacking)
    if missing:
        log.warning("group %s: %d of %s subtasks reported %s; the mean is over those (missing: %s)", task,
                    len(scores), len(expected) if expected else len(scores) + len(lacking), key, ", ".join(missing))
    group_row = (out.get("results") or {}).get(task) or {}
    metric, _, filter_name = key.partition(",")
    harness_value = _number(group_row.get(key))
    harness_stderr = _number(group_row.get(f"{metric}_stderr,{filter_name}"))
    if method == "harness" and harness_value is None:
        raise GsilError(f"lm-eval reported no {key!r} for group {task!r} (aggregation: harness); "
                        "use aggregation: subtask_mean")
    value, stderr = ((means["subtask_mean"], means["subtask_mean_stderr"]) if method == "subtask_mean"
                     else (harness_value, harness_stderr))
    return {
        "method": method,
        "description": DESCRIPTIONS[method],
        "results_key": key,
        "value": value,
        "stderr": stderr,
        **means,
        "harness_value": harness_value,
        "harness_stderr": harness_stderr,
        "n_expected": len(expected) if expected else None,
        "missing_subtasks": missing,
        "per_subtask": scores,
    }
