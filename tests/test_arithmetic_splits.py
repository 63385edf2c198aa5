"""The demo generator at scale: every seed works, the capacity is exact, and the validation split is held out."""

from __future__ import annotations

import hashlib
import json
import random
from itertools import product

import pytest

from gsil import arithmetic as ar
from gsil.arithmetic import Config, Sizes
from gsil.logutil import GsilError

# The sizes of the demo sweep; 1,119 distinct problems per seed.
SWEEP = Sizes(sft=256, selfplay=160, preference=128, validation=200, test=500, fewshot=3)
# config/config.yaml's demo sizes, at which seeds 1, 29, 50 and 58 used to fail.
DEMO = Sizes(sft=256, selfplay=32, preference=32, test=160, fewshot=3)
# One-step problems with operands 2..4: 24 distinct problems (sharing 6, ages 9, giving 3, garden 6).
NARROW = Config(min_number=2, max_number=4, max_factor=3, max_result=20, max_steps=1)
NARROW_FLAGS = ["--min-number", "2", "--max-number", "4", "--max-factor", "3", "--max-result", "20", "--max-steps", "1"]

TEXT_FILES = ("sft", "selfplay", "arith_test", "arith_fewshot", "arith_val")


def _text(row: dict) -> str:
    return row.get("prompt", row.get("question"))


def _check_records(records: dict, sizes: Sizes, label) -> None:
    counts = {name: len(rows) for name, rows in records.items()}
    expected = {
        "sft": sizes.sft, "selfplay": sizes.selfplay, "preferences": sizes.preference, "arith_test": sizes.test,
        "arith_fewshot": sizes.fewshot, "arith_mc": sizes.test,
    }
    if sizes.validation:
        expected["arith_val"] = sizes.validation
    assert counts == expected, label
    texts = {name: {_text(row) for row in records[name]} for name in TEXT_FILES if name in records}
    for name, found in texts.items():
        assert len(found) == len(records[name]), (label, name)  # distinct within the file
    names = list(texts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not texts[a] & texts[b], (label, a, b)
    assert all(n == 0 for others in ar.overlap_report(records).values() for n in others.values()), label
    selfplay_prompts = [r["prompt"] for r in records["selfplay"]]
    assert [r["prompt"] for r in records["preferences"]] == selfplay_prompts[: sizes.preference]
    assert not [row["id"] for row in records["preferences"]
                if ar.extract_final_answer(row["rejected"]) == row["final_answer"]], label

    def choices_ok(test_row: dict, mc_row: dict) -> bool:  # distinct finals, exactly one right, at the label
        finals = [ar.extract_final_answer(choice) for choice in mc_row["choices"]]
        return (len(set(finals)) == len(finals) == sizes.mc_wrong + 1 and mc_row["question"] == test_row["question"]
                and finals[mc_row["label"]] == test_row["final_answer"] and finals.count(test_row["final_answer"]) == 1)

    pairs = zip(records["arith_test"], records["arith_mc"])
    assert not [mc["id"] for test, mc in pairs if not choices_ok(test, mc)], label


def test_every_seed_builds_disjoint_splits_of_the_right_size():
    for seed in range(100):
        _check_records(ar.build_demo_records(seed, Config(), SWEEP), SWEEP, seed)


@pytest.mark.parametrize("seed", [1, 29, 50, 58])
def test_seeds_that_failed_at_the_demo_sizes_now_build(seed):
    records = ar.build_demo_records(seed, Config(), DEMO)
    _check_records(records, DEMO, seed)
    # they failed on a 2 * 3 (or 2 + 3) test problem, which now gets a reversed-operation distractor
    slips = {slip for row in records["arith_mc"] for slip in row["slips"]}
    assert "reversed_operation" in slips


def test_outputs_of_seeds_that_worked_are_unchanged():
    # sha256 of the records as the generator made them before the fallback slip and the capacity-aware pool
    def digest(records):
        return hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()

    small = Sizes(test=40, fewshot=4, selfplay=30, sft=60, preference=20)
    assert digest(ar.build_demo_records(7, Config(), small)) == (
        "17fb005f83b0ecb59f000fcc7082ca5424e10aee9d3a1e059b1067410023db38")
    assert digest(ar.build_demo_records(0, Config(), DEMO)) == (
        "e5ac6a180c693ef299114fe5fb5f1700cd0a92d233bf251274109394975555fa")


def test_large_test_split():
    sizes = Sizes(test=2000)
    _check_records(ar.build_demo_records(0, Config(), sizes), sizes, "test 2000")


def test_one_step_capacities_match_a_direct_count():
    cfg = Config()
    lo, hi, factor, top = cfg.min_number, cfg.max_number, cfg.max_factor, cfg.max_result
    numbers, factors = range(lo, hi + 1), range(max(2, lo), factor + 1)
    expected = {
        "sharing": sum(k * q <= top for k, q in product(factors, numbers)),
        "garden_rows": sum(r * p <= top for r, p in product(factors, numbers)),
        "ages_difference": sum(a + b <= top for a, b in product(numbers, numbers)),
        "giving_away": sum(b < a for a, b in product(numbers, numbers)),
    }
    assert {t: len(ar.template_keys(t, cfg)) for t in expected} == expected == {
        "sharing": 171, "garden_rows": 171, "ages_difference": 361, "giving_away": 171,
    }
    two_steps = Config(max_steps=2)
    assert ar.capacity(two_steps) == 12667 <= ar.capacity_bound(two_steps)


def test_every_one_and_two_step_problem_has_three_wrong_answers():
    # (all 188,532 default problems do; the three-step templates take too long to walk here)
    cfg = Config(max_steps=2)
    for template in ar.templates_for(cfg):
        for key, script in ar.template_keys(template, cfg).items():
            problem = ar._replay(template, script, random.Random(0), cfg)
            assert problem.key == key
            assert len(ar.wrong_answers(problem, 3)) >= 3, key


def test_fast_slip_answers_agree_with_the_full_chain():
    problems = ar.generate_pool(300, 3, Config())
    problems.append(ar.Problem("baking_boxes", (6, 4, 8), "q", [
        ar.Step(6, "*", 4, "{expr}"), ar.Step(ar.StepRef(0), "/", 8, "{expr}")]))
    for problem in problems:
        gold = problem.evaluate()
        every = set()
        for kind in ar.SLIP_KINDS:
            for i, row in enumerate(gold):
                for slip in ar._step_slips(kind, i, row):
                    rows = problem.evaluate(slip)
                    assert problem.slipped_answer(slip, gold) == (rows[-1][3] if rows else None), slip
            every |= {final for _, final in ar._slip_finals(problem, kind, gold)}
        assert ar.wrong_answers(problem) == every
        assert len(ar.wrong_answers(problem, 2)) >= 2


def test_pool_can_use_every_problem_and_not_one_more():
    cap = ar.capacity(NARROW, 3)
    assert cap == ar.capacity(NARROW) == 24 < ar.capacity_bound(NARROW) == 30
    every = {key for t in ar.templates_for(NARROW) for key in ar.template_keys(t, NARROW)}
    for seed in range(5):
        pool = ar.generate_pool(cap, seed, NARROW, min_wrong=3)
        assert {p.key for p in pool} == every
    for n in (cap + 1, 31):  # counted before drawing (above half the bound), above the bound
        with pytest.raises(ar.CapacityError, match="only 24 distinct problems") as err:
            ar.generate_pool(n, 0, NARROW, min_wrong=3)
        assert (err.value.requested, err.value.available) == (n, 24)
    # results up to 5: most draws are rejected, so the capacity is under half the bound and running out is found
    # while drawing
    tiny = Config(min_number=2, max_number=4, max_factor=3, max_result=5, max_steps=1)
    cap = ar.capacity(tiny, 3)
    assert 0 < cap < ar.capacity_bound(tiny) // 2
    assert len(ar.generate_pool(cap, 0, tiny, min_wrong=3)) == cap
    with pytest.raises(ar.CapacityError, match=f"only {cap} distinct problems"):
        ar.generate_pool(cap + 1, 0, tiny, min_wrong=3)


def test_problems_with_too_few_wrong_answers_are_skipped():
    # with 0 allowed, 0 + 0 = 0 has one wrong answer (0 + 0 = 1); --mc-wrong 6 skips a few default problems too
    for cfg, sizes in ((Config(min_number=0, max_number=3, max_factor=3, max_result=20, max_steps=1),
                        Sizes(test=12, fewshot=1, selfplay=3, sft=3, preference=3)),
                       (Config(), Sizes(test=300, selfplay=20, preference=20, sft=50, mc_wrong=6))):
        for seed in range(3):
            _check_records(ar.build_demo_records(seed, cfg, sizes), sizes, (cfg, seed))


def test_too_many_problems_names_the_sizes_and_the_capacity():
    sizes = Sizes(test=23, fewshot=0, selfplay=1, sft=1, preference=0)
    with pytest.raises(GsilError) as err:
        ar.split_pool(0, NARROW, sizes)
    message = str(err.value)
    assert "need 25 distinct problems (--test-size 23 + --selfplay-size 1 + --sft-size 1)" in message
    assert "make only 24" in message and "--max-number 4" in message
    assert "lower --test-size to at most 22" in message
    splits = ar.split_pool(0, NARROW, Sizes(test=22, fewshot=0, selfplay=1, sft=1, preference=0))  # exactly 24
    assert sum(len(problems) for problems in splits.values()) == 24


def test_validation_split_is_held_out_and_stable():
    base = Sizes(test=40, fewshot=4, selfplay=30, sft=60, preference=20)
    plain = ar.build_demo_records(3, Config(), base)
    with_val = ar.build_demo_records(3, Config(), Sizes(**{**base.__dict__, "validation": 25}))
    assert "arith_val" not in plain
    _check_records(with_val, Sizes(**{**base.__dict__, "validation": 25}), "validation")
    assert [row["id"] for row in with_val["arith_val"]] == [f"validation-{i:05d}" for i in range(25)]
    assert set(with_val["arith_val"][0]) >= {"id", "question", "answer"}
    # held-out splits come first: adding validation keeps the test and few-shot problems (the multiple-choice
    # distractors may change: they share a random stream with the preference pairs, whose problems move), and
    # growing SFT keeps the validation problems
    for name in ("arith_test", "arith_fewshot"):
        assert with_val[name] == plain[name]
    assert [row["question"] for row in with_val["arith_mc"]] == [row["question"] for row in plain["arith_mc"]]
    bigger = ar.build_demo_records(3, Config(), Sizes(**{**base.__dict__, "validation": 25, "sft": 90}))
    assert bigger["arith_val"] == with_val["arith_val"]
    report = ar.overlap_report(with_val)
    assert set(report["arith_val"]) == {"sft", "selfplay", "preferences", "arith_test", "arith_fewshot", "arith_mc"}
    assert report["arith_test"]["arith_val"] == 0
    leaked = {**with_val, "sft": with_val["sft"] + [{"id": "x", "prompt": with_val["arith_val"][0]["question"]}]}
    assert ar.overlap_report(leaked)["arith_val"]["sft"] == 1
    with pytest.raises(GsilError, match="--validation-size must be >= 0"):
        Sizes(validation=-1).validate()


def test_prepare_data_writes_the_validation_file(tmp_path):
    from gsil.cli import main
    from gsil.records import read_records
    from gsil.stages.prepare_data import DEMO_FILES

    out = tmp_path / "data"
    flags = ["prepare-data", "--profile", "demo", "--output", str(out), "--seed", "1", "--sft-size", "40",
             "--selfplay-size", "20", "--preference-size", "10", "--test-size", "30", "--fewshot-size", "3"]
    assert main(flags + ["--validation-size", "15"]) == 0
    relative, kind = DEMO_FILES["arith_val"]
    assert relative == "eval/arith_val.jsonl" and kind == "eval_generation"
    rows = read_records(out / relative, kind)
    assert len(rows) == 15
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["arith_val"] == 15 and manifest["files"]["arith_val"] == relative
    assert manifest["sizes"]["validation"] == 15
    assert set(manifest["overlap_checks"]["arith_val"]) >= {"sft", "selfplay", "preferences", "arith_test"}
    assert all(n == 0 for others in manifest["overlap_checks"].values() for n in others.values())
    training = "".join((out / DEMO_FILES[name][0]).read_text(encoding="utf-8")
                       for name in ("sft", "selfplay", "preferences", "arith_test", "arith_fewshot", "arith_mc"))
    for row in rows:
        assert json.dumps(row["question"])[1:-1] not in training
    # size 0 again: no file, not even the one from the run before
    assert main(flags) == 0
    assert not (out / relative).exists()
    assert "arith_val" not in json.loads((out / "manifest.json").read_text())["counts"]


def test_prepare_data_too_large_a_size_fails_with_the_capacity(tmp_path, capsys):
    from gsil.cli import main

    flags = ["prepare-data", "--profile", "demo", "--output", str(tmp_path / "data"), "--selfplay-size", "1",
             "--sft-size", "1", "--preference-size", "0", "--fewshot-size", "0", *NARROW_FLAGS]
    assert main(flags + ["--test-size", "23"]) == 1
    err = capsys.readouterr().err
    assert "--test-size 23" in err and "only 24" in err and "at most 22" in err
    assert main(flags + ["--test-size", "22"]) == 0
