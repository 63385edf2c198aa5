"""The demo task generator: determinism, disjoint splits, correct gold solutions, provably wrong slips."""

from __future__ import annotations

import json
import random

import pytest

from gsil import arithmetic as ar
from gsil.arithmetic import Config, Problem, Sizes, Slip, Step, StepRef
from gsil.logutil import GsilError

SMALL = Sizes(test=40, fewshot=4, selfplay=30, sft=60, preference=20)


@pytest.fixture(scope="module")
def records():
    return ar.build_demo_records(7, Config(), SMALL)


def _packs_problem() -> Problem:
    # "Maya has 5 stickers. She buys 3 packs with 4 stickers in each pack." worked by hand: 3*4=12, 5+12=17.
    return Problem(
        template="shopping_packs",
        numbers=(5, 3, 4),
        question="Maya has 5 stickers. She buys 3 packs with 4 stickers in each pack. How many stickers now?",
        steps=[
            Step(3, "*", 4, "The packs hold {expr} stickers."),
            Step(5, "+", StepRef(0), "Now Maya has {expr} stickers."),
        ],
    )


def test_hand_worked_solution_text():
    problem = _packs_problem()
    assert problem.answer == 17
    assert problem.solution() == "The packs hold 3 * 4 = 12 stickers.\nNow Maya has 5 + 12 = 17 stickers.\n#### 17"


def test_slips_propagate_through_later_steps():
    problem = _packs_problem()
    # off by one at step 0: 3*4 "=" 13, then 5 + 13 = 18
    assert problem.solution(Slip("off_by_one", 0, value=13)).splitlines() == [
        "The packs hold 3 * 4 = 13 stickers.", "Now Maya has 5 + 13 = 18 stickers.", "#### 18",
    ]
    # wrong operation at step 0: 3 + 4 = 7, then 5 + 7 = 12
    assert problem.solution(Slip("wrong_operation", 0, op="+")).endswith("Now Maya has 5 + 7 = 12 stickers.\n#### 12")
    # digit swap at step 1: 17 -> 71
    assert problem.solution(Slip("digit_swap", 1, value=71)).endswith("5 + 12 = 71 stickers.\n#### 71")


def test_digit_swap_values():
    assert ar._digit_swapped(42) == 24
    assert ar._digit_swapped(123) == 132
    assert ar._digit_swapped(40) is None  # would give a leading zero
    assert ar._digit_swapped(11) is None  # no visible change
    assert ar._digit_swapped(7) is None


def test_inexact_division_slip_is_rejected():
    # 6*4 = 24, 24/8 = 3: an off-by-one 25 at step 0 cannot be divided by 8, so that slip is not offered
    problem = Problem("baking_boxes", (6, 4, 8), "q", [Step(6, "*", 4, "{expr}"), Step(StepRef(0), "/", 8, "{expr}")])
    values = {(s.step, s.value) for s in ar.candidate_slips(problem, "off_by_one")}
    assert (0, 25) not in values and (0, 23) not in values
    assert (1, 4) in values and (1, 2) in values


def test_same_seed_same_data_other_seed_other_data():
    first = ar.build_demo_records(3, Config(), SMALL)
    again = ar.build_demo_records(3, Config(), SMALL)
    other = ar.build_demo_records(4, Config(), SMALL)
    assert json.dumps(first, sort_keys=True) == json.dumps(again, sort_keys=True)
    assert [r["prompt"] for r in first["sft"]] != [r["prompt"] for r in other["sft"]]


def test_growing_sft_keeps_held_out_problems():
    small = ar.build_demo_records(3, Config(), SMALL)
    bigger = ar.build_demo_records(3, Config(), Sizes(test=40, fewshot=4, selfplay=30, sft=120, preference=20))
    for name in ("arith_test", "arith_fewshot", "selfplay", "preferences", "arith_mc"):
        assert small[name] == bigger[name], name
    assert bigger["sft"][:60] == small["sft"]


def test_splits_disjoint_by_key_and_text():
    splits = ar.split_pool(11, Config(), SMALL)
    keys = {name: {p.key for p in problems} for name, problems in splits.items()}
    texts = {name: {p.question for p in problems} for name, problems in splits.items()}
    for name, problems in splits.items():
        assert len(keys[name]) == len(problems) == getattr(SMALL, name)
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not keys[a] & keys[b], (a, b)
            assert not texts[a] & texts[b], (a, b)


def test_overlap_report_is_zero_and_detects_a_leak(records):
    report = ar.overlap_report(records)
    assert all(n == 0 for others in report.values() for n in others.values())
    leaked = {**records, "sft": records["sft"] + [{"id": "x", "prompt": records["arith_test"][0]["question"]}]}
    assert ar.overlap_report(leaked)["arith_test"]["sft"] == 1


def test_gold_solutions_are_correct_and_within_range(records):
    cfg = Config()
    for name in ("sft", "selfplay", "arith_test", "arith_fewshot"):
        for row in records[name]:
            solution = row.get("response", row.get("answer"))
            eqs = ar.equations(solution)
            assert len(eqs) == row["steps"] == ar.TEMPLATE_STEPS[row["template"]]
            assert ar.equations_hold(solution), solution
            # the chain's last result is the stated answer, and every result is a whole number in range
            assert ar.extract_final_answer(solution) == str(eqs[-1][3]) == row["final_answer"]
            assert all(0 <= c <= cfg.max_result for *_, c in eqs)
            # each step after the first uses the previous result (the chain is connected)
            for prev, cur in zip(eqs, eqs[1:]):
                assert prev[3] in (cur[0], cur[2]), solution
            # every number in the question that the first step uses is really in the question
            assert str(eqs[0][0]) in row.get("prompt", row.get("question"))


def test_rejected_responses_are_wrong(records):
    assert records["preferences"], "no preference pairs"
    selfplay_by_id = {r["id"]: r for r in records["selfplay"]}
    for row in records["preferences"]:
        assert row["chosen"] == selfplay_by_id[row["id"]]["response"]
        assert row["prompt"] == selfplay_by_id[row["id"]]["prompt"]
        assert ar.extract_final_answer(row["rejected"]) != row["final_answer"]
        assert row["rejected"].endswith(f"#### {ar.extract_final_answer(row['rejected'])}")
        assert row["slip"] in ar.MAIN_SLIP_KINDS  # off by one at the last step always exists


def test_multiple_choice_has_one_right_answer(records):
    for row in records["arith_mc"]:
        finals = [ar.extract_final_answer(choice) for choice in row["choices"]]
        assert len(row["choices"]) == SMALL.mc_wrong + 1
        assert len(set(finals)) == len(finals)
        assert finals.count(row["final_answer"]) == 1
        assert finals[row["label"]] == row["final_answer"]
        assert ar.equations_hold(row["choices"][row["label"]])
        assert row["slips"][row["label"]] == "gold"
    # the label is not always in the same place
    assert len({row["label"] for row in records["arith_mc"]}) > 1


def test_wrong_operation_and_off_by_one_distractors():
    problem = _packs_problem()
    for kind in ar.SLIP_KINDS:
        for slip in ar.candidate_slips(problem, kind):
            assert problem.evaluate(slip)[-1][3] != 17
    wrong = ar.wrong_solutions(problem, random.Random(0), 3)
    assert sorted(slip.kind for slip, _ in wrong) == sorted(ar.MAIN_SLIP_KINDS)


def test_reversed_operation_slip_text_and_fallback_use():
    # 2 * 3 = 6: off by one gives 7 and 5, 2 + 3 = 5 repeats 5, 2 - 3 and 2 / 3 are not whole, 6 has one digit
    garden = Problem("garden_rows", (2, 3), "q", [Step(2, "*", 3, "The garden has {expr} roses.")])
    main = {final for kind in ar.MAIN_SLIP_KINDS for _, final in ar._slip_finals(garden, kind, garden.evaluate())}
    assert main == {5, 7}
    assert garden.solution(Slip("reversed_operation", 0, op="-")) == "The garden has 3 - 2 = 1 roses.\n#### 1"
    wrong = ar.wrong_solutions(garden, random.Random(0), 3)
    assert sorted(int(ar.extract_final_answer(text)) for _, text in wrong) == [1, 5, 7]
    assert [slip.kind for slip, _ in wrong][-1] == "reversed_operation"
    with pytest.raises(GsilError, match="needed 4 .*--mc-wrong"):
        ar.wrong_solutions(garden, random.Random(0), 4)


def test_max_steps_limits_templates():
    records = ar.build_demo_records(1, Config(max_steps=1), Sizes(test=10, fewshot=0, selfplay=5, sft=10, preference=5))
    assert {row["steps"] for row in records["sft"]} == {1}


def test_too_small_range_fails_with_a_clear_error():
    with pytest.raises(GsilError, match="distinct problems"):
        ar.generate_pool(2000, 0, Config(min_number=2, max_number=4, max_factor=3, max_result=20, max_steps=1))


@pytest.mark.parametrize("cfg", [Config(min_number=5, max_number=5), Config(max_factor=1), Config(max_steps=4)])
def test_bad_config_rejected(cfg):
    with pytest.raises(GsilError):
        cfg.validate()


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("step\n#### 17", "17"),
        ("The answer is 1,200.", "1200"),
        ("#### 42.0", "42"),
        ("2 + 3 = 5 and then #### 8 apples", "8"),
        ("no number here", None),
        ("I think 3 then 4", "4"),
        ("#### none, but 12 before", "12"),
    ],
)
def test_extract_final_answer(text, answer):
    assert ar.extract_final_answer(text) == answer


def test_prepare_data_demo_stage_layout_and_no_leak(tmp_path):
    from gsil.cli import main
    from gsil.records import read_records
    from gsil.stages.prepare_data import DEMO_FILES

    out = tmp_path / "data"
    assert main([
        "prepare-data", "--profile", "demo", "--output", str(out), "--seed", "5", "--sft-size", "50",
        "--selfplay-size", "30", "--preference-size", "20", "--test-size", "25", "--fewshot-size", "3",
    ]) == 0
    assert not (out / DEMO_FILES["arith_val"][0]).exists()  # --validation-size 0 (the default): no file
    rows = {name: read_records(out / relative, kind) for name, (relative, kind) in DEMO_FILES.items()
            if name != "arith_val"}
    assert {name: len(r) for name, r in rows.items()} == {
        "sft": 50, "selfplay": 30, "preferences": 20, "arith_test": 25, "arith_fewshot": 3, "arith_mc": 25,
    }
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {name: len(r) for name, r in rows.items()}
    assert manifest["seed"] == 5 and manifest["generator"]["max_number"] == Config().max_number
    assert all(n == 0 for others in manifest["overlap_checks"].values() for n in others.values())
    # no held-out question appears anywhere in any training file, not even as a substring
    training_text = "".join((out / DEMO_FILES[name][0]).read_text(encoding="utf-8")
                            for name in ("sft", "selfplay", "preferences"))
    for row in rows["arith_test"] + rows["arith_fewshot"]:
        assert json.dumps(row["question"])[1:-1] not in training_text
    # the multiple-choice file is the test set: same ids and questions, gold = the test answer
    for test_row, mc_row in zip(rows["arith_test"], rows["arith_mc"]):
        assert (mc_row["id"], mc_row["question"]) == (test_row["id"], test_row["question"])
        assert mc_row["choices"][mc_row["label"]] == test_row["answer"]
