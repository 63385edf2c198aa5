"""The machine's matmul peak, measured in the same run as the training throughput it is compared with.

Achieved training FLOP/s uses the usual dense-transformer estimate of 6 x parameters x tokens per optimizer step
(forward 2, backward 4; attention's quadratic term is small at ~130 tokens and left out, so the figure is a slight
under-estimate).
"""

from __future__ import annotations

import time

import torch

from gsil.bench.report import summarise


def matmul_flops_per_s(dtype: torch.dtype, *, size: int = 1024, repeats: int = 5, min_seconds: float = 0.5) -> dict:
    """FLOP/s of square (size x size) @ (size x size) products in `dtype`; one sample per repeat."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    flops_per_product = 2 * size**3
    torch.matmul(a, b)  # first call pays for kernel selection
    samples = []
    for _ in range(repeats):
        products = 0
        start = time.perf_counter()
        while True:
            torch.matmul(a, b)
            products += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        samples.append(products * flops_per_product / elapsed)
    return summarise(samples)


def training_flops_per_s(parameters: int, tokens_per_s: float) -> float:
    return 6.0 * parameters * tokens_per_s


def machine_peaks(repeats: int = 5) -> dict[str, dict]:
    return {
        "bf16": matmul_flops_per_s(torch.bfloat16, repeats=repeats),
        "fp32": matmul_flops_per_s(torch.float32, repeats=repeats),
    }
