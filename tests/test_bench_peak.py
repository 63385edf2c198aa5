"""The matmul peak of `gsil bench flops`: its pure parts on hand-worked values, the orchestration on fake timings,
and one tiny timed matmul (the benchmark itself is not part of the test run)."""

import argparse

import pytest

from gsil.bench import flops
from gsil.bench.train_step import DEMO_SHAPE
from gsil.cpu import bf16_support

GIGA = 1e9


def _record(dtype, threads, label, rates, *, m=512, k=512, n=512, layout="a@b"):
    record = {"dtype": dtype, "threads": threads, "label": label, "m": m, "k": k, "n": n, "layout": layout}
    if rates is None:
        record["skipped"] = "one product took 3 s (limit 1 s)"
    else:
        record["windows"] = flops.window_stats(rates)
    return record


# ------------------------------------------------------------------------------------------------ pure parts


def test_matmul_flops_is_two_m_k_n():
    assert flops.matmul_flops(2, 3, 4) == 48  # 8 output cells x 3 terms x (multiply + add)
    assert flops.matmul_flops(1024, 1024, 1024) == 2 * 2**30


def test_window_rate():
    # 10 products of 2 GFLOP in 0.5 s
    assert flops.window_rate(10, 2e9, 0.5) == 40e9
    with pytest.raises(ValueError):
        flops.window_rate(1, 2e9, 0.0)


def test_window_stats_spread_and_best_window():
    stats = flops.window_stats([300e9, 100e9, 200e9, 400e9])
    assert (stats["min"], stats["median"], stats["max"], stats["n"]) == (100e9, 250e9, 400e9, 4)
    assert stats["samples"] == [300e9, 100e9, 200e9, 400e9]


def test_peak_is_the_best_window_not_the_median():
    # The machine: windows swinging between 342 and 1070 GFLOP/s. The median read 685; the peak is 1070,
    # and a 208 GFLOP/s training step is 19% of it, not 30%.
    peaks = flops.choose_peak([_record("bf16", 2, "square 1024", [342e9, 470e9, 900e9, 1070e9])])
    assert peaks["bf16"]["flops_per_s"] == 1070e9
    assert peaks["bf16"]["windows"]["median"] == 685e9
    assert flops.fraction(208e9, peaks["bf16"]["flops_per_s"]) == pytest.approx(0.1944, abs=1e-4)


def test_choose_peak_over_configurations_and_per_thread_count():
    records = [
        _record("bf16", 1, "square 512", [4e9, 5e9]),
        _record("bf16", 1, "square 1024", None),  # skipped: ignored
        _record("bf16", 2, "square 512", [3e9, 4e9], layout="a@b.T"),
        _record("bf16", 2, "model mlp down", [5.5e9, 6e9, 2e9], m=860, k=1536, n=576, layout="a@b.T"),
        _record("fp32", 1, "square 2048", [30e9], m=2048, k=2048, n=2048),
        _record("fp32", 2, "square 2048", [25e9], m=2048, k=2048, n=2048),
    ]
    peaks = flops.choose_peak(records)
    assert set(peaks) == {"bf16", "fp32"}
    bf16 = peaks["bf16"]
    assert bf16["flops_per_s"] == 6e9
    assert bf16["config"] == {"dtype": "bf16", "threads": 2, "label": "model mlp down", "m": 860, "k": 1536,
                              "n": 576, "layout": "a@b.T"}
    assert bf16["windows"]["min"] == 2e9
    assert {t: e["flops_per_s"] for t, e in bf16["by_threads"].items()} == {1: 5e9, 2: 6e9}
    assert bf16["by_threads"][1]["config"]["label"] == "square 512"
    # fp32: the single thread was faster on this (shared) machine, and the peak says so
    assert peaks["fp32"]["flops_per_s"] == 30e9 and peaks["fp32"]["config"]["threads"] == 1


def test_choose_peak_ties_keep_the_first_and_skips_only_give_nothing():
    peaks = flops.choose_peak([_record("fp32", 1, "first", [1e9]), _record("fp32", 1, "second", [1e9])])
    assert peaks["fp32"]["config"]["label"] == "first"
    assert flops.choose_peak([_record("bf16", 1, "square 2048", None)]) == {}


def test_predicted_product_seconds_uses_the_fastest_rate_seen():
    assert flops.predicted_product_seconds(2e9, [1e9, 4e9, 0.0]) == 0.5
    assert flops.predicted_product_seconds(2e9, []) is None


def test_model_gemm_shapes_of_the_demo_model():
    shapes = flops.model_gemm_shapes(DEMO_SHAPE, positions=100, scored_tokens=40)
    # hidden 576, 9 heads of 64, 3 KV heads -> k/v width 192; MLP 1536; vocab 49152 on the scored tokens only
    assert shapes == [("model q/o proj", 100, 576, 576), ("model k/v proj", 100, 576, 192),
                      ("model mlp gate/up", 100, 576, 1536), ("model mlp down", 100, 1536, 576),
                      ("model head", 40, 576, 49152)]


def test_peak_configurations_cheapest_first_both_square_layouts():
    configs = flops.peak_configurations(sizes=(64, 32), model_shapes=[("model x", 10, 20, 30)])
    assert configs == [("model x", 10, 20, 30, "a@b.T"),  # 12,000 FLOPs
                       ("square 32", 32, 32, 32, "a@b"), ("square 32", 32, 32, 32, "a@b.T"),
                       ("square 64", 64, 64, 64, "a@b"), ("square 64", 64, 64, 64, "a@b.T")]


AMX_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile\n\n"
AVX2_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse avx2 fma\n"


@pytest.mark.parametrize("text, expected", [
    (AMX_CPUINFO, {"avx512_bf16": True, "amx_bf16": True, "native_bf16": True}),
    ("flags\t: avx2 avx512f avx512bw avx512_bf16\n", {"avx512_bf16": True, "amx_bf16": False, "native_bf16": True}),
    (AVX2_CPUINFO, {"avx512_bf16": False, "amx_bf16": False, "native_bf16": False}),
    ("flags\t: avx512f avx512_bf16x avx512_vbf16\n", {"avx512_bf16": False, "amx_bf16": False, "native_bf16": False}),
    ("Features\t: fp asimd bf16 i8mm\n", {"avx512_bf16": False, "amx_bf16": False, "native_bf16": True}),
    (None, {"avx512_bf16": None, "amx_bf16": None, "native_bf16": None}),
])
def test_bf16_support_from_cpuinfo(text, expected):
    assert bf16_support(text) == expected


def test_bf16_note_says_emulated_without_the_flags():
    emulated = flops.bf16_note({**bf16_support(AVX2_CPUINFO), "torch_cpu_capability": "AVX2"})
    assert "EMULATED" in emulated and "avx512_bf16 no, amx_bf16 no" in emulated and "AVX2" in emulated
    assert "native" in flops.bf16_note({**bf16_support(AMX_CPUINFO), "torch_cpu_capability": "AVX512"})
    assert "unknown" in flops.bf16_note({**bf16_support(None), "torch_cpu_capability": None})


def test_fraction_refuses_a_zero_peak():
    assert flops.fraction(1.0, 4.0) == 0.25
    with pytest.raises(ValueError):
        flops.fraction(1.0, 0.0)


def test_peak_table_marks_the_peak_and_lists_skips():
    records = [_record("bf16", 1, "square 512", [4e9, 5e9]), _record("bf16", 2, "square 512", [6e9]),
               _record("bf16", 2, "square 2048", None, m=2048, k=2048, n=2048)]
    lines = flops.peak_table(records, flops.choose_peak(records)).splitlines()
    assert len(lines) == 2 + 2 + 1
    assert lines[3].rstrip().endswith("*") and not lines[2].rstrip().endswith("*")
    assert lines[4] == ("skipped: bf16 2 threads, square 2048 2048x2048x2048 a@b: "
                        "one product took 3 s (limit 1 s)")


# ------------------------------------------------------------------------------------------------ orchestration


def test_measure_peaks_on_fake_timings(monkeypatch):
    import torch

    calls = []

    def fake_time_matmul(m, k, n, dtype, *, layout, predicted_s, max_product_s, **_):
        calls.append((dtype, torch.get_num_threads(), m, layout, predicted_s))
        if predicted_s is not None and predicted_s > max_product_s:
            return {"skipped": "predicted"}
        rate = (2e9 if layout == "a@b.T" else 1e9) * torch.get_num_threads() * (10 if dtype == "fp32" else 1)
        return {"windows": flops.window_stats([rate / 2, rate])}

    monkeypatch.setattr(flops, "time_matmul", fake_time_matmul)
    before = torch.get_num_threads()
    measured = flops.measure_peaks(threads=(2, 1, 2), sizes=(1000, 2000), max_product_s=10.0)
    assert torch.get_num_threads() == before
    assert measured["settings"]["threads"] == [1, 2]
    # 2 dtypes x 2 thread counts x 2 sizes x 2 layouts
    assert len(calls) == 16 and len(measured["records"]) == 16
    # bf16, 1 thread: the 2000-square (16 GFLOP) is predicted from the 1000-square of the same layout: 16 s at
    # a@b's 1 GFLOP/s (over 10 s: skipped untried), 8 s at a@b.T's 2 GFLOP/s (tried)
    assert [c[4] for c in calls[:4]] == [None, None, 16.0, 8.0]
    assert [c[4] for c in calls[4:8]] == [None, None, 8.0, 4.0]  # 2 threads: twice the rate
    skipped = [r for r in measured["records"] if "skipped" in r]
    assert [(r["dtype"], r["threads"], r["m"], r["layout"]) for r in skipped] == [("bf16", 1, 2000, "a@b")]
    assert measured["peaks"]["bf16"]["flops_per_s"] == 4e9
    assert measured["peaks"]["bf16"]["config"]["threads"] == 2
    assert measured["peaks"]["fp32"]["flops_per_s"] == 40e9
    assert set(measured["cpu"]) == {"avx512_bf16", "amx_bf16", "native_bf16", "torch_cpu_capability"}


def test_measure_peaks_fails_when_every_configuration_is_skipped(monkeypatch):
    monkeypatch.setattr(flops, "time_matmul", lambda *a, **k: {"skipped": "slow"})
    with pytest.raises(RuntimeError, match="no matmul configuration"):
        flops.measure_peaks(threads=(1,), sizes=(64,))


def test_time_matmul_skips_a_predicted_slow_product_without_running():
    assert "skipped" in flops.time_matmul(10**5, 10**5, 10**5, "fp32", predicted_s=5.0, max_product_s=1.0)


def test_time_matmul_tiny_once():
    timed = flops.time_matmul(16, 16, 16, "fp32", layout="a@b.T", windows=2, window_s=0.001, warmup_s=0.0)
    assert timed["windows"]["n"] == 2
    assert 0 < timed["windows"]["min"] <= timed["windows"]["max"]


def test_flops_stage_assembles_the_fractions_against_the_best_window(monkeypatch, capsys):
    from gsil.bench import train_step
    from gsil.stages import bench

    ours = {"gsil_tokens_per_step": 800.0, "gsil_s_per_step": {"median": 4.0}, "gsil_reference_s_per_step": 1.0,
            "body_linear_parameters": 1000, "head_parameters": 500, "gsil_scored_tokens_per_step": 400.0,
            "parameters": 2000, "gsil_layout": "shared-prompt", "gsil_attention": "sdpa"}
    monkeypatch.setattr(train_step, "run", lambda **_: ours)
    seen = {}

    def fake_measure(*, threads, sizes, model_shapes, **settings):
        seen.update(threads=threads, sizes=sizes, model_shapes=model_shapes, **settings)
        records = [_record("bf16", 1, "square 512", [1e6, 2e6]), _record("bf16", 2, "square 512", [4e6, 8e6]),
                   _record("fp32", 2, "square 512", [16e6])]
        return {"peaks": flops.choose_peak(records), "records": records, "settings": {},
                "cpu": {**bf16_support(AVX2_CPUINFO), "torch_cpu_capability": "AVX2"}}

    monkeypatch.setattr(flops, "measure_peaks", fake_measure)
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["flops", "--threads", "2", "--peak-sizes", "256,512", "--peak-windows", "3"])
    result = bench._flops(args)
    assert seen["threads"] == (1, 2) and seen["sizes"] == (256, 512) and seen["windows"] == 3
    assert seen["model_shapes"][-1] == ("model head", 400, 576, 49152)
    # 6 x (1000 x 800 + 500 x 400) = 6e6 FLOPs per step over 3 s of step (4 s less 1 s of reference) = 2e6 FLOP/s
    assert result["training_flops_per_s"] == pytest.approx(2e6)
    assert result["matmul_peak_flops_per_s"] == {"bf16": 8e6, "fp32": 16e6}
    assert result["fraction_of_bf16_peak"] == pytest.approx(0.25)
    assert result["fraction_of_bf16_peak_at_job_threads"] == pytest.approx(0.25)
    assert result["fraction_of_fp32_peak"] == pytest.approx(0.125)
    # with the reference pass: 6e6 x 4/3 over 4 s = 2e6 FLOP/s
    assert result["fraction_of_bf16_peak_with_reference"] == pytest.approx(0.25)
    out = capsys.readouterr().out
    assert "EMULATED" in out and "bf16: 0.0 GFLOP/s (2 threads, square 512" in out and "25% of the bf16 peak" in out


def test_auto_precision_reads_the_same_flags(monkeypatch, tmp_path):
    """generation's (and so training's and evaluation's) auto precision decides from the same parser."""
    from gsil import cpu
    from gsil.generation.settings import resolve_precision

    monkeypatch.setattr(cpu, "read_cpuinfo", lambda: AVX2_CPUINFO)
    assert resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(cpu, "read_cpuinfo", lambda: AMX_CPUINFO)
    monkeypatch.setattr(cpu, "_SEEN", {})
    monkeypatch.setenv("GSIL_CPU_PROBE_CACHE", str(tmp_path / "probe.json"))
    monkeypatch.setattr(cpu, "measure_bf16_speedup", lambda: 2.0)
    assert resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(cpu, "read_cpuinfo", lambda: None)
    assert resolve_precision("auto", "cpu") == "fp32"
