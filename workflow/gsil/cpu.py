"""What the CPU computes fast: the one place that decides whether `precision: auto` and `dtype: native` mean bf16.

bf16 is native where the CPU has bf16 dot products: the x86 flags `avx512_bf16` (AVX512-BF16) or `amx_bf16` (AMX
tiles), or `bf16` among an aarch64 CPU's Features. Elsewhere torch emulates bf16 and it runs several times slower
than fp32 (measured on an AVX2-only EPYC: 4.6 against 32 GFLOP/s), so fp32 is chosen there. Where the flag is
present, a cached one-second probe decides (`bf16_choice`, below); gsil.generation.settings.resolve_precision and
gsil.evaluation.harness ask it.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def read_cpuinfo() -> str | None:
    """The text of /proc/cpuinfo, or None where there is none (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return None


def bf16_support(cpuinfo: str | None) -> dict:
    """{flag: present} for each x86 bf16 flag and `native_bf16`, from /proc/cpuinfo's text; every value None where
    the text is missing."""
    if cpuinfo is None:
        return {**{flag: None for flag in NATIVE_BF16_FLAGS}, "native_bf16": None}
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            flags.update(value.split())
    found = {flag: flag in flags for flag in NATIVE_BF16_FLAGS}
    return {**found, "native_bf16": any(found.values()) or "bf16" in flags}


# ------------------------------------------------------------------------------------------------ bf16 or fp32
# A native bf16 flag is necessary for bf16 to pay, not sufficient: on an AVX512-BF16 EPYC bf16 generated about 2.5x
# faster than fp32, but on an Intel Xeon with AVX512-BF16 and no AMX (2026-12-01) torch's bf16 linear layers ran at
# half the fp32 speed, training steps 1.55x slower and evaluation 1.3x slower. So where the flag is there, `auto`
# measures: one model-shaped linear layer in each dtype, once per CPU model and torch version, cached on disk so that
# every job of a run (and every later run on that machine) makes the same choice.

# bf16 must beat fp32 by this factor to be chosen: near 1 the two are a wash and fp32 is the exact one.
BF16_MIN_SPEEDUP = 1.1
# Rows x (in, out) of the probe: a batch of token positions through one SmolLM2-135M MLP projection.
PROBE_SHAPE = (512, 576, 1536)
PROBE_CACHE_ENV = "GSIL_CPU_PROBE_CACHE"
_SEEN: dict[tuple[str, str], float] = {}  # this process's figures: a process asks once per cache file and CPU


def cpu_model_name(cpuinfo: str | None) -> str:
    for line in (cpuinfo or "").splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("model name", "Model", "CPU part"):
            return value.strip()
    return "unknown"


def probe_cache_path() -> Path:
    """Where measured speedups are kept: $GSIL_CPU_PROBE_CACHE, else the user cache folder."""
    if os.environ.get(PROBE_CACHE_ENV):
        return Path(os.environ[PROBE_CACHE_ENV])
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "gsil" / "cpu-bf16-probe.json"


def probe_key(cpuinfo: str | None) -> str:
    """What the measurement depends on: the CPU model, its bf16 flags and the torch build."""
    import torch

    flags = ",".join(flag for flag, present in bf16_support(cpuinfo).items() if present)
    return f"{cpu_model_name(cpuinfo)} | {flags} | torch {torch.__version__}"


def measure_bf16_speedup(window: float = 0.1, rounds: int = 3) -> float:
    """fp32 seconds / bf16 seconds of one linear layer of PROBE_SHAPE on one thread (best of `rounds` windows of
    `window` seconds each, per dtype): above 1, bf16 is faster."""
    import torch

    rows, fan_in, fan_out = PROBE_SHAPE
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the job's thread count varies; one thread measures the kernels, not the scheduling
    try:
        best = {}
        for dtype in (torch.float32, torch.bfloat16):
            generator = torch.Generator().manual_seed(0)
            x = torch.randn(rows, fan_in, generator=generator).to(dtype)
            weight = torch.randn(fan_out, fan_in, generator=generator).to(dtype)
            torch.nn.functional.linear(x, weight)  # first call: kernel selection
            seconds = []
            for _ in range(rounds):
                calls, started = 0, time.perf_counter()
                while time.perf_counter() - started < window:
                    torch.nn.functional.linear(x, weight)
                    calls += 1
                seconds.append((time.perf_counter() - started) / calls)
            best[dtype] = min(seconds)
    finally:
        torch.set_num_threads(threads)
    return best[torch.float32] / best[torch.bfloat16]


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cached_bf16_speedup(cpuinfo: str | None) -> tuple[float, Path, bool]:
    """(fp32/bf16 speed ratio of this CPU, the cache file, whether it was measured just now)."""
    path = probe_cache_path()
    key = probe_key(cpuinfo)
    if (str(path), key) in _SEEN:
        return _SEEN[str(path), key], path, False
    speedup, fresh = _cached_or_measured(path, key)
    _SEEN[str(path), key] = speedup
    return speedup, path, fresh


def _cached_or_measured(path: Path, key: str) -> tuple[float, bool]:
    entry = _read_cache(path).get(key)
    if isinstance(entry, dict) and isinstance(entry.get("speedup"), (int, float)):
        return float(entry["speedup"]), False
    speedup = round(measure_bf16_speedup(), 3)  # the figure the cache keeps, so later jobs compare the same one
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache(path)
        # a concurrent job may have written first: keep its figure so that both jobs choose alike
        if isinstance(data.get(key), dict) and isinstance(data[key].get("speedup"), (int, float)):
            return float(data[key]["speedup"]), False
        data[key] = {"speedup": speedup, "shape": list(PROBE_SHAPE),
                     "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".probe-", suffix=".json")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: the choice is still made, only not remembered
    return speedup, True


def bf16_choice() -> tuple[bool, str]:
    """(bf16 pays on this CPU, why): no native bf16 flag -> no (emulated bf16 is several times slower); with one,
    the cached probe decides (BF16_MIN_SPEEDUP)."""
    cpuinfo = read_cpuinfo()
    if not bf16_support(cpuinfo)["native_bf16"]:
        return False, ("the CPU has no native bf16 (no AVX512-BF16, AMX or bf16 flag): bf16 matmuls would be "
                       "emulated, slower than fp32")
    speedup, path, fresh = cached_bf16_speedup(cpuinfo)
    verdict = speedup >= BF16_MIN_SPEEDUP
    return verdict, (f"the CPU has native bf16 and a bf16 linear layer ran {speedup:.2f}x the fp32 speed "
                     f"({'measured now' if fresh else 'measured before'}, {path}; bf16 needs "
                     f">= {BF16_MIN_SPEEDUP}x)")


def prefers_bf16() -> bool:
    """True where bf16 is native on this CPU and measured faster than fp32 (bf16_choice)."""
    return bf16_choice()[0]
