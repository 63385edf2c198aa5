"""What the CPU can compute natively, from /proc/cpuinfo: the one place that decides whether bf16 is native.

bf16 is native where the CPU has bf16 dot products: the x86 flags `avx512_bf16` (AVX512-BF16) or `amx_bf16` (AMX
tiles), or `bf16` among an aarch64 CPU's Features. Elsewhere torch emulates bf16 and it runs several times slower
than fp32 (measured on an AVX2-only EPYC: 4.6 against 32 GFLOP/s), which is why `precision: auto` and
`dtype: native` pick fp32 there (gsil.generation.settings.resolve_precision, gsil.evaluation.harness).
"""

from __future__ import annotations

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


def has_native_bf16() -> bool:
    """True where this CPU computes bf16 natively; False where it does not or cannot be told."""
    return bool(bf16_support(read_cpuinfo())["native_bf16"])
