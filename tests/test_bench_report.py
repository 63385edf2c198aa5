"""The benchmark plumbing (not the benchmarks themselves, which are not part of the test run)."""

from pathlib import Path

import pytest

from gsil.bench.demo import read_benchmark_tsvs
from gsil.bench.flops import training_flops_per_s, training_step_flops
from gsil.bench.report import format_table, summarise


def test_summarise_median_and_spread():
    stats = summarise([4.0, 2.0, 3.0])
    assert stats["median"] == 3.0
    assert stats["spread"] == 2.0
    assert stats["relative_spread"] == pytest.approx(2.0 / 3.0)
    assert stats["n"] == 3


def test_summarise_refuses_nothing():
    with pytest.raises(ValueError):
        summarise([])


def test_format_table_aligns_columns():
    text = format_table(["name", "value"], [["a", 1.5], ["longer", 12345.0]])
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1
    assert "12,345" in lines[-1]


def test_training_flops_is_six_n_d():
    assert training_flops_per_s(135_000_000, 100.0) == 6 * 135_000_000 * 100.0


def test_step_flops_count_the_head_on_scored_tokens_only():
    # body: 6 x 1000 weights x 10 positions; head: 6 x 500 weights x 4 scored tokens
    assert training_step_flops(body_linear_parameters=1000, head_parameters=500, positions=10,
                               scored_tokens=4) == 6 * 1000 * 10 + 6 * 500 * 4


def test_benchmark_tsvs_sum_per_rule(tmp_path):
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for rule, name, seconds, rss in [("sft_train", "sft", 10.5, 900.0), ("evaluate_model", "a/arith", 2.0, 300.0),
                                     ("evaluate_model", "b/arith", 3.0, 350.0)]:
        path = tmp_path / rule / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + f"{seconds}\t0:00:10\t{rss}\t1\t1\t1\t0\t0\t50\t9\n")
    stats = read_benchmark_tsvs(tmp_path)
    assert stats["evaluate_model"] == {"jobs": 2, "wall_s": 5.0, "max_rss_mb": 350.0}
    assert stats["sft_train"]["wall_s"] == 10.5


@pytest.mark.slow
def test_bench_eval_times_the_workflow_way_the_old_way_and_the_model_work(tiny_model_dir, monkeypatch):
    """`gsil bench eval` end to end on the tiny model: both ways of running `gsil evaluate`, the work at the suite's
    speed, and ratios that are the quotients of the figures it reports."""
    import time

    from gsil.bench import evaluation
    from gsil.evaluation import Request, evaluate_benchmarks

    def in_process(model_dir, data_dir, benchmarks, protocols, output_dir, threads):
        # the bench starts `gsil evaluate` processes; here the same call runs in this process (seconds, not a minute)
        started = time.perf_counter()
        results = evaluate_benchmarks(model_dir, [Request(b, output_dir / f"{b}.json", (protocols[b],))
                                                  for b in benchmarks], data_dir=data_dir)
        return time.perf_counter() - started, {r["benchmark"]: r for r in results}

    monkeypatch.setattr(evaluation, "_evaluate", in_process)
    data = Path(__file__).resolve().parent / "data"
    result = evaluation.run(str(tiny_model_dir), str(data), arith_limit=2, mc_limit=2, threads=1, max_gen_toks=4)
    assert result["settings"]["n_samples"] == {"arith": 2, "arith_mc": 2}
    assert result["generation_work"]["prompts"] == 2 and result["loglikelihood_work"]["sequences"] > 2
    work = result["generation_work"]["seconds"] + result["loglikelihood_work"]["seconds"]
    assert result["model_work_s"] == pytest.approx(work)
    assert result["evaluation_over_work_ratio"] == pytest.approx(result["per_model_s"]["median"] / work)
    assert result["per_benchmark_over_per_model_ratio"] == pytest.approx(
        result["per_benchmark_s"]["median"] / result["per_model_s"]["median"])
