"""The sidecar `<output minus .jsonl>.meta.json` of a generation file: backend, sampling settings, the per-prompt
`seeding` scheme, counts (incl. empty generations), this run's throughput and `run_info` (workflow/CONTRACT.md)."""

from __future__ import annotations

import os
from pathlib import Path

from gsil.generation.settings import SEEDING, GenerateConfig
from gsil.generation.shards import DistributedInfo


def meta_path_for(output: str | os.PathLike) -> Path:
    """`generations/sft.jsonl` -> `generations/sft.meta.json`."""
    path = Path(output)
    stem = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.name
    return path.with_name(stem + ".meta.json")


def generation_meta(config: GenerateConfig, rows: list[dict], generator_info: dict, prompts_sha256: str,
                    prompts_truncated: int, this_process: dict, others: list[dict], dist: DistributedInfo) -> dict:
    """The meta sidecar's content for the merged `rows` (the main process, after the merge)."""
    from gsil.runinfo import run_info

    processes = [this_process, *others] if dist.world_size > 1 else [this_process]
    run_tokens = sum(p["tokens_generated"] for p in processes)
    # Processes run side by side, so the run's rate is the sum of their rates.
    rates = [p["tokens_per_second"] for p in processes if p["tokens_per_second"]]
    settings = config.settings()
    return {
        "backend": config.backend,
        "model": str(config.model),
        "prompts": str(config.prompts),
        "prompts_sha256": prompts_sha256,
        "template": config.template,
        "sampling": config.sampling.to_dict(),
        "seeding": SEEDING,
        "batch_size": config.batch_size,
        "max_prompt_length": config.max_prompt_length,
        "shard_size": config.shard_size,
        # As in training_config.json and the reference's meta: what ran, then what was asked for (auto resolves).
        "precision": generator_info.get("precision"),
        "precision_requested": config.precision,
        "device": generator_info.get("device"),
        "stop_token_ids": generator_info.get("stop_token_ids"),
        "tensor_parallel_size": config.tensor_parallel_size if config.backend == "vllm" else None,
        "world_size": dist.world_size,
        "counts": {
            "rows": len(rows),
            "empty_generations": sum(1 for row in rows if not row["generated"]),
            "truncated_at_max_tokens": sum(1 for row in rows if not row["finished"]),
            "prompts_truncated": prompts_truncated,
            "shards": -(-len(rows) // config.shard_size),
            "shards_resumed": sum(p["shards_resumed"] for p in processes),
        },
        "tokens_generated": sum(row["generated_tokens"] for row in rows),
        "this_run": {
            "tokens_generated": run_tokens,
            "tokens_per_second": round(sum(rates), 2) if rates else None,
            "processes": processes,
        },
        "empty_generation_policy": "kept with generated == ''; the trainer decides whether to use or drop them",
        "run_info": run_info(settings),
    }
