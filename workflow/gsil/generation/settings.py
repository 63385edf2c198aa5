"""What a generation run is asked for: `SamplingSettings`, `GenerateConfig` (the stage's flags), the precision a
model runs in, and the per-prompt seeds.

Seeds (`SEEDING`, recorded in the meta file): every prompt samples with its own seed, `prompt_seed(seed, id)` = the
first 32 bits of sha256(f"{seed}:{id}") masked to 31 bits, so a prompt's response depends only on (seed, its id,
the model, the settings): not on its shard, its batch, the other prompts, resuming or resharding.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from gsil.logutil import GsilError

BACKENDS = ("transformers", "vllm")
PRECISIONS = ("auto", "bf16", "fp32")
# Prompts per generate call of the transformers backend; see gsil/bench/generation.py for the measurement.
DEFAULT_BATCH_SIZE = 16
DEFAULT_SHARD_SIZE = 256

# How sampling is seeded, recorded in the meta file and in the shard plan (shards of another scheme are discarded).
SEEDING = {
    "scheme": "per-prompt",
    "prompt_seed": "int(sha256(f'{seed}:{id}').hexdigest()[:8], 16) & 0x7FFFFFFF",
    "vllm": "SamplingParams(seed=prompt_seed) per request",
    "transformers": "Gumbel-max: argmax(processed scores + Gumbel noise from one torch.Generator per prompt)",
}


@dataclass(frozen=True)
class SamplingSettings:
    """Decoding settings shared by both backends. temperature 0 means greedy (top_p is then unused)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise GsilError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise GsilError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise GsilError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "greedy": self.greedy}


def prompt_seed(seed: int, prompt_id: str) -> int:
    """The sampling seed of one prompt: stable across processes and Python versions (never `hash()`), 31 bits so
    every backend accepts it."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}".encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


def positional_seeds(seed: int, n: int) -> list[int]:
    """Seeds for callers without prompt ids (benchmarks): the prompt's position stands in for its id."""
    return [prompt_seed(seed, str(i)) for i in range(n)]


def cpu_prefers_bf16() -> bool:
    """True where this CPU computes bf16 natively and measurably faster than fp32 (gsil.cpu.bf16_choice)."""
    from gsil.cpu import prefers_bf16

    return prefers_bf16()


def resolve_precision(precision: str, device: str) -> str:
    """'bf16' or 'fp32' for `precision` in auto|bf16|fp32 on `device` ('cpu' or 'cuda[:n]')."""
    if precision not in PRECISIONS:
        raise GsilError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_prefers_bf16() else "fp32"


def auto_precision_reason(resolved: str, device: str) -> str:
    """Why `resolve_precision("auto", device)` gave `resolved`, for the one log line a stage writes about it."""
    if device.startswith("cuda"):
        return f"{device} {'supports' if resolved == 'bf16' else 'does not support'} bf16"
    from gsil.cpu import bf16_choice

    return bf16_choice()[1]


def torch_dtype(precision: str):
    import torch

    return {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]


@dataclass
class GenerateConfig:
    """Everything `gsil generate` needs; its fields are the stage's CLI flags."""

    model: str
    prompts: str
    output: str
    backend: str = "transformers"
    template: str = "chat"
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    batch_size: int = DEFAULT_BATCH_SIZE
    max_prompt_length: int | None = None
    shard_size: int = DEFAULT_SHARD_SIZE
    precision: str = "auto"
    tensor_parallel_size: int = 1
    limit: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise GsilError(f"unknown backend {self.backend!r}; expected one of {', '.join(BACKENDS)}")
        if self.precision not in PRECISIONS:
            raise GsilError(f"unknown precision {self.precision!r}; expected one of {', '.join(PRECISIONS)}")
        for name in ("batch_size", "shard_size", "tensor_parallel_size"):
            if getattr(self, name) < 1:
                raise GsilError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise GsilError(f"max-prompt-length must be >= 1, got {self.max_prompt_length}")
        if self.limit is not None and self.limit < 1:
            raise GsilError(f"limit must be >= 1, got {self.limit}")

    def settings(self) -> dict[str, Any]:
        out = asdict(self)
        out["sampling"] = self.sampling.to_dict()
        return out
