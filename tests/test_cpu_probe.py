"""`precision: auto` on a CPU: the native-bf16 flag, then a cached probe of bf16 against fp32 (gsil.cpu)."""

import json

import pytest

from gsil import cpu
from gsil.generation.settings import auto_precision_reason, resolve_precision

AVX512_BF16 = "processor\t: 0\nmodel name\t: Test Xeon\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
AVX2_ONLY = "processor\t: 0\nmodel name\t: Test EPYC\nflags\t\t: fpu avx2 fma\n"


@pytest.fixture
def probe(monkeypatch, tmp_path):
    """A fresh process memo, a cache file in tmp_path, and a probe that returns the figures queued in `figures`
    (counting its calls)."""
    monkeypatch.setattr(cpu, "_SEEN", {})
    cache = tmp_path / "probe.json"
    monkeypatch.setenv(cpu.PROBE_CACHE_ENV, str(cache))
    state = {"figures": [], "calls": 0, "cache": cache}

    def measured():
        state["calls"] += 1
        return state["figures"].pop(0)

    monkeypatch.setattr(cpu, "measure_bf16_speedup", measured)
    return state


def test_no_native_flag_means_fp32_without_a_probe(monkeypatch, probe):
    monkeypatch.setattr(cpu, "read_cpuinfo", lambda: AVX2_ONLY)
    assert resolve_precision("auto", "cpu") == "fp32"
    assert probe["calls"] == 0 and not probe["cache"].exists()
    assert "emulated" in auto_precision_reason("fp32", "cpu")


@pytest.mark.parametrize("speedup, expected", [(2.5, "bf16"), (1.1, "bf16"), (1.099, "fp32"), (0.53, "fp32")])
def test_native_flag_then_the_probe_decides(monkeypatch, probe, speedup, expected):
    monkeypatch.setattr(cpu, "read_cpuinfo", lambda: AVX512_BF16)
    probe["figures"] = [speedup]
    assert resolve_precision("auto", "cpu") == expected
    assert f"{speedup:.2f}x the fp32 speed" in auto_precision_reason(expected, "cpu")
    # explicit precisions never probe
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    assert probe["calls"] == 1


def test_the_figure_is_cached_per_cpu_and_torch(monkeypatch, probe):
    import torch

    monkeypatch.setattr(cpu, "read_cpuinfo", lambda: AVX512_BF16)
    probe["figures"] = [0.5123456]
    assert not cpu.prefers_bf16()
    entry = json.loads(probe["cache"].read_text())[f"Test Xeon | avx512_bf16,native_bf16 | torch {torch.__version__}"]
    assert entry["speedup"] == 0.512 and entry["shape"] == list(cpu.PROBE_SHAPE)
    # another process (empty memo) reads the file instead of measuring
    monkeypatch.setattr(cpu, "_SEEN", {})
    assert not cpu.prefers_bf16() and probe["calls"] == 1
    assert "measured before" in cpu.bf16_choice()[1]
    # another CPU model is another key: measured again, both kept
    monkeypatch.setattr(cpu, "read_cpuinfo", lambda: AVX512_BF16.replace("Test Xeon", "Test EPYC 9004"))
    probe["figures"] = [2.4]
    assert cpu.prefers_bf16() and probe["calls"] == 2
    assert len(json.loads(probe["cache"].read_text())) == 2


def test_a_corrupt_cache_is_measured_again(monkeypatch, probe):
    monkeypatch.setattr(cpu, "read_cpuinfo", lambda: AVX512_BF16)
    probe["cache"].write_text("{not json")
    probe["figures"] = [1.8]
    assert cpu.prefers_bf16()
    assert list(json.loads(probe["cache"].read_text()).values())[0]["speedup"] == 1.8


def test_a_figure_written_first_by_a_concurrent_job_wins(monkeypatch, probe):
    monkeypatch.setattr(cpu, "read_cpuinfo", lambda: AVX512_BF16)
    key = cpu.probe_key(AVX512_BF16)

    def measured_while_another_job_wrote():
        probe["cache"].write_text(json.dumps({key: {"speedup": 0.6}}))
        return 1.3

    monkeypatch.setattr(cpu, "measure_bf16_speedup", measured_while_another_job_wrote)
    assert cpu.cached_bf16_speedup(AVX512_BF16)[0] == 0.6
    assert not cpu.prefers_bf16()


def test_an_unwritable_cache_still_decides(monkeypatch, probe, tmp_path):
    monkeypatch.setattr(cpu, "read_cpuinfo", lambda: AVX512_BF16)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(cpu.PROBE_CACHE_ENV, str(blocker / "probe.json"))  # its folder cannot be made
    probe["figures"] = [2.0]
    assert cpu.prefers_bf16()


def test_the_real_probe_times_both_dtypes():
    pytest.importorskip("torch")
    import torch

    threads = torch.get_num_threads()
    speedup = cpu.measure_bf16_speedup(window=0.01, rounds=1)
    assert 0.01 < speedup < 100
    assert torch.get_num_threads() == threads  # the job's thread count is restored
