"""Answer extraction, the pass@k estimator and the standard error: pure functions against hand-worked values."""

import math

import pytest

from gsil.evaluation.answers import (INVALID, extract_flexible, extract_last_number, extract_strict, gold_answer,
                                     is_correct, normalize_number)
from gsil.evaluation.humaneval import pass_at_k, select_problems, truncate_completion
from gsil.evaluation.stats import mean_and_stderr


@pytest.mark.parametrize("text, expected", [
    ("1,234", "1234"), ("$12", "12"), ("-7", "-7"), ("42.0", "42"), ("12.50", "12.5"), ("3.", "3"),
    (" $1,000,000.00 ", "1000000"), ("\u22125", "-5"), ("abc", None), ("", None), (None, None), ("-0", "0"),
])
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


@pytest.mark.parametrize("text, strict, flexible", [
    ("5 + 3 = 8\n#### 8", "8", "8"),
    ("so the total is 1,234.\n#### 1,234", "1234", "1234"),
    ("#### -12", "-12", "-12"),
    ("It costs $45 in total.\n#### $45", "45", "45"),
    ("####7", "7", "7"),
    ("The answer is 17.", None, "17"),                      # no marker: only the flexible reader answers
    ("We get 3 boxes of 4, so 12. Then 12 - 20 = -8", None, "-8"),
    ("He pays $1,050.", None, "1050"),
    ("#### 9 and later 10", "9", "9"),                      # the marked answer wins over the last number
    ("#### 4\n#### 5", "4", "4"),                           # first marker, like lm-eval's take_first
    ("no digits at all", None, None),
    ("#### unknown, maybe 6", None, "6"),                   # marker without a number: fall back
])
def test_strict_and_flexible(text, strict, flexible):
    assert extract_strict(text) == strict
    assert extract_flexible(text) == flexible


def test_last_number_ignores_malformed_thousands():
    assert extract_last_number("1,23 apples and 5 pears") == "5"
    assert extract_last_number("values 2.5 and 10") == "10"


def test_gold_answer_and_is_correct():
    gold = "3 * 4 = 12 apples.\n12 + 2 = 14.\n#### 14"
    assert gold_answer(gold) == "14"
    assert is_correct("... so 14 apples.\n#### 14", gold)
    assert is_correct("#### 14.00", gold)
    assert not is_correct("#### 15", gold)
    assert not is_correct("The answer is 14", gold, "strict-match")
    assert is_correct("The answer is 14", gold, "flexible-extract")
    assert gold_answer("#### 1,200") == "1200"
    with pytest.raises(ValueError, match="no '#### <number>'"):
        gold_answer("the answer is 3")
    with pytest.raises(ValueError, match="not followed by a number"):
        gold_answer("#### three")
    with pytest.raises(ValueError, match="unknown answer extraction"):
        is_correct("#### 1", "#### 1", "loose")
    assert INVALID != gold_answer("#### 0")


def test_task_utils_filters_use_the_same_extraction():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "workflow" / "tasks" / "gsil_arith" / "utils.py"
    spec = importlib.util.spec_from_file_location("gsil_arith_utils", path)
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    resps = [["#### 1,000"], ["I think 7"], ["nothing"]]
    assert utils.strict_filter(resps, [{}, {}, {}]) == [["1000"], [INVALID], [INVALID]]
    assert utils.flexible_filter(resps, [{}, {}, {}]) == [["1000"], ["7"], [INVALID]]
    doc = {"answer": "500 + 500 = 1000\n#### 1000"}
    assert utils.process_results(doc, ["1000"]) == {"exact_match": 1.0}
    assert utils.process_results(doc, [INVALID]) == {"exact_match": 0.0}


@pytest.mark.parametrize("n, c, k, expected", [
    (5, 2, 1, 0.4),            # c / n
    (5, 2, 2, 0.7),            # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (5, 2, 3, 0.9),            # 1 - C(3,3)/C(5,3) = 1 - 1/10
    (5, 2, 4, 1.0),            # n - c < k: every 4-subset holds a pass
    (5, 0, 3, 0.0),
    (5, 5, 1, 1.0),
    (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
    (1, 1, 1, 1.0),
    (1, 0, 1, 0.0),
])
def test_pass_at_k_hand_worked(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_the_combinatorial_definition():
    for n in range(1, 12):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))


def test_pass_at_k_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 3 samples"):
        pass_at_k(2, 1, 3)
    with pytest.raises(ValueError):
        pass_at_k(2, 3, 1)


def test_mean_and_stderr():
    mean, stderr = mean_and_stderr([1.0, 0.0, 1.0, 0.0])
    assert mean == 0.5
    assert stderr == pytest.approx(math.sqrt((4 * 0.25 / 3) / 4))   # sample sd / sqrt(n)
    assert mean_and_stderr([7.0]) == (7.0, None)
    with pytest.raises(ValueError):
        mean_and_stderr([])


def test_truncate_completion_and_selection():
    text = "    return x + 1\n\ndef other():\n    pass\n"
    assert truncate_completion(text) == "    return x + 1\n"
    assert truncate_completion("    y = 2\n    return y\n# trailing comment") == "    y = 2\n    return y"
    assert truncate_completion("    return 1") == "    return 1"
    problems = [{"task_id": f"HumanEval/{i}"} for i in range(10)]
    assert [p["task_id"] for p in select_problems(problems, 3)] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    sample = select_problems(problems, 4, "random", seed=1)
    assert sample == select_problems(problems, 4, "random", seed=1)
    assert len(sample) == 4 and sample == sorted(sample, key=lambda p: int(p["task_id"].split("/")[1]))
    assert select_problems(problems, None) == problems
    assert select_problems(problems, 50) == problems
