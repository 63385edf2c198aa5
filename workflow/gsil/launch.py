"""What `accelerate launch` (or its absence) gave this process: its distributed state and the engine it runs.

accelerate's `PartialState()` takes a multi-process launch on a machine without CUDA for a single process unless
it is told to use the CPU (only `Accelerator`/`AcceleratorState` read ACCELERATE_USE_CPU), and then every process
scores or trains everything alone. Every stage gets its state here, so N CPU processes over gloo (the CPU
rehearsal of the paper DAG) and N GPUs follow the same code.
"""

from __future__ import annotations

import os


def use_cpu(environ=None) -> bool:
    """True where the processes must run on the CPU: asked for (ACCELERATE_USE_CPU), or no CUDA device."""
    env = os.environ if environ is None else environ
    if env.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes"):
        return True
    import torch

    return not torch.cuda.is_available()


def process_state():
    """accelerate's `PartialState` for this process (initialises the process group under a multi-process launch)."""
    from accelerate import PartialState

    return PartialState(cpu=use_cpu())


def launch_engine(environ=None) -> str:
    """The engine this process was launched for, read as accelerate reads it (the `accelerate launch` config sets
    ACCELERATE_USE_DEEPSPEED / ACCELERATE_USE_FSDP; WORLD_SIZE > 1 without either is DDP).

    Used by inference stages that must match a training run's numerics without building that run's engine: the
    reference scorer runs plain data parallel even when launched with the ZeRO-3 config of the policy.
    """
    env = os.environ if environ is None else environ
    if env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "deepspeed"
    if env.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    return "ddp" if int(env.get("WORLD_SIZE", "1") or 1) > 1 else "single"
