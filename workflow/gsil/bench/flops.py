"""The machine's matmul peak, measured in the same run as the training throughput it is compared with.

Achieved training FLOP/s counts the matmul work a step must do, forward 2 and backward 4 FLOPs per weight per row:
6 x body linear weights x positions run, plus 6 x head weights x scored tokens (the output head only sees the
response tokens). Attention's quadratic term is small at ~200 tokens and left out, so the figure is a slight
under-estimate. The cruder 6 x all parameters x positions, which credits the head on every position (and the
embedding lookup as a matmul), is reported beside it for comparison with other tools' figures.
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
    """The 6·N·T estimate: every parameter, every position."""
    return 6.0 * parameters * tokens_per_s


def training_step_flops(*, body_linear_parameters: int, head_parameters: int, positions: float,
                        scored_tokens: float) -> float:
    """Matmul FLOPs of one forward + backward: the body on every position, the head on the scored ones."""
    return 6.0 * (body_linear_parameters * positions + head_parameters * scored_tokens)


def machine_peaks(repeats: int = 5) -> dict[str, dict]:
    return {
        "bf16": matmul_flops_per_s(torch.bfloat16, repeats=repeats),
        "fp32": matmul_flops_per_s(torch.float32, repeats=repeats),
    }
