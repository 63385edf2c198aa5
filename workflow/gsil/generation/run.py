"""The stage driver behind `gsil generate`: `run_generation` encodes the prompts, builds the configured backend
(`build_generator`), generates shard by shard, and on the main process merges the shards into the output file
(input order, then the shard folder is removed) with its meta sidecar."""

from __future__ import annotations

import logging
import shutil
import time
from typing import Callable

from gsil.generation.backends.transformers import TransformersGenerator
from gsil.generation.backends.vllm import VllmGenerator
from gsil.generation.meta import generation_meta, meta_path_for
from gsil.generation.results import GenerationResult, Generator, stop_token_ids_for
from gsil.generation.settings import GenerateConfig, prompt_seed, resolve_precision, torch_dtype
from gsil.generation.shards import (DistributedInfo, check_ids, completed_shard, model_identity, prepare_shard_dir,
                                    shard_dir_for, shard_path, shard_plan_fingerprint, shard_ranges, shard_results,
                                    wait_for_shards)
from gsil.io import read_json, write_json, write_jsonl
from gsil.logutil import GsilError

log = logging.getLogger("gsil.generation")  # one logger for the package: log lines name gsil.generation


def selfplay_row(demo: dict, result: GenerationResult) -> dict:
    """A `selfplay` record: the demonstration becomes `real`, the model's response `generated`; other fields of the
    input row are kept."""
    extras = {k: v for k, v in demo.items() if k not in ("id", "prompt", "response", "real", "generated")}
    return {
        "id": demo["id"],
        "prompt": demo["prompt"],
        "real": demo["response"],
        "generated": result.text,
        "generated_tokens": result.n_tokens,
        "finished": result.finished,
        **extras,
    }


class _Progress:
    """tqdm over prompts with the running tokens/s of this process."""

    def __init__(self, total: int, enabled: bool, desc: str):
        self.tokens = 0
        self.start = time.perf_counter()
        self.bar = None
        if enabled and total:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="prompt", dynamic_ncols=True)

    def __call__(self, n_prompts: int, n_tokens: int) -> None:
        self.tokens += n_tokens
        if self.bar is not None:
            self.bar.update(n_prompts)
            elapsed = max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix_str(f"{self.tokens / elapsed:.1f} tok/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def build_generator(config: GenerateConfig, tokenizer, dist: DistributedInfo) -> tuple[Generator, dict]:
    """The configured backend's generator, loaded on this process's device, and a description for the meta file."""
    import torch

    if config.backend == "vllm":
        if dist.world_size > 1:
            raise GsilError("the vllm backend parallelises with --tensor-parallel-size; launch it as ONE process "
                            "(not under accelerate launch)")
        precision = config.precision if config.precision != "auto" else "bf16"
        from transformers import GenerationConfig

        try:
            model_generation_config = GenerationConfig.from_pretrained(config.model)
        except OSError:
            model_generation_config = None
        stop_ids = stop_token_ids_for(tokenizer, model_generation_config)
        generator = VllmGenerator(config.model, config.sampling, stop_token_ids=stop_ids,
                                  tensor_parallel_size=config.tensor_parallel_size, precision=precision,
                                  special_tokens=getattr(tokenizer, "all_special_tokens", []))
        return generator, {"precision": precision, "device": "cuda", "stop_token_ids": stop_ids}

    from gsil.modeling import load_model

    if torch.cuda.is_available():
        device = f"cuda:{dist.local_rank}" if dist.world_size > 1 else "cuda"
    else:
        if dist.world_size > 1:
            raise GsilError("data-parallel generation (several processes) needs one CUDA device per process")
        device = "cpu"
    precision = resolve_precision(config.precision, device)
    model = load_model(config.model, dtype=torch_dtype(precision)).to(device)
    stop_ids = stop_token_ids_for(tokenizer, model.generation_config)
    generator = TransformersGenerator(model, tokenizer, config.sampling, stop_token_ids=stop_ids,
                                      batch_size=config.batch_size)
    return generator, {"precision": precision, "device": device, "stop_token_ids": stop_ids}


def run_generation(
    config: GenerateConfig,
    *,
    tokenizer=None,
    generator: Generator | None = None,
    generator_info: dict | None = None,
    dist: DistributedInfo | None = None,
    after_shard: Callable[[int], None] | None = None,
    merge_wait_s: float = 24 * 3600.0,
) -> dict | None:
    """Generate, shard by shard, and (on the main process) merge into `config.output` with its meta sidecar.

    `tokenizer`/`generator` may be passed in (tests, benchmarks) to skip loading; `after_shard(index)` runs after
    each shard file is written (tests use it to simulate a crash). Returns the meta dict on the main process, None
    on the others.
    """
    from gsil.modeling import load_tokenizer
    from gsil.records import file_sha256, read_records
    from gsil.tokenization import encode_prompt

    dist = dist or DistributedInfo.from_env()
    rows = read_records(config.prompts, "demonstration")
    if config.limit is not None:
        rows = rows[: config.limit]
    if not rows:
        raise GsilError(f"{config.prompts}: no prompts to generate for")
    ids = [row["id"] for row in rows]
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.model)

    prompts_sha256 = file_sha256(config.prompts)
    fingerprint = shard_plan_fingerprint(config, prompts_sha256, ids, model_identity(config.model))
    shard_dir = shard_dir_for(config.output)
    ranges = shard_ranges(len(rows), config.shard_size)
    prepare_shard_dir(shard_dir, fingerprint, dist)

    pending = [k for k in dist.my_shards(len(ranges))
               if completed_shard(shard_path(shard_dir, k), [ids[i] for i in ranges[k]]) is None]
    resumed = len(dist.my_shards(len(ranges))) - len(pending)
    if resumed:
        log.info("process %d: %d of its shards already done, %d to generate", dist.rank, resumed, len(pending))

    # Encoding every prompt (not only this process's) gives the truncation count of the whole set; it is cheap
    # next to generation.
    prompt_ids, prompts_truncated = [], 0
    for row in rows:
        encoded, truncated = encode_prompt(tokenizer, row["prompt"], max_prompt_length=config.max_prompt_length,
                                           template=config.template)
        prompt_ids.append(encoded)
        prompts_truncated += truncated
    if prompts_truncated:
        log.warning("%d of %d prompt(s) longer than %s tokens are left-truncated", prompts_truncated, len(rows),
                    config.max_prompt_length)

    seeds = [prompt_seed(config.sampling.seed, prompt_id) for prompt_id in ids]
    run_tokens, run_seconds = 0, 0.0
    if pending:
        if generator is None:
            generator, generator_info = build_generator(config, tokenizer, dist)
        generator_info = generator_info or {}
        log.info("process %d/%d: %s backend, %s, %d prompts in %d shard(s), batch %d, %s",
                 dist.rank, dist.world_size, generator.backend, generator_info.get("precision", "?"),
                 sum(len(ranges[k]) for k in pending), len(pending), config.batch_size,
                 "greedy" if config.sampling.greedy else f"sampled T={config.sampling.temperature}")
        progress = _Progress(sum(len(ranges[k]) for k in pending), config.progress, desc=f"generate[{dist.rank}]")
        start = time.perf_counter()
        try:
            for k, results in shard_results(generator, {k: ranges[k] for k in pending}, prompt_ids, seeds,
                                            progress):
                run_tokens += sum(r.n_tokens for r in results)
                write_jsonl(shard_path(shard_dir, k), (selfplay_row(rows[i], r) for i, r in zip(ranges[k], results)))
                if after_shard is not None:
                    after_shard(k)
        finally:
            run_seconds = time.perf_counter() - start
            progress.close()

    this_process = {
        "rank": dist.rank,
        "shards_generated": len(pending),
        "shards_resumed": resumed,
        "tokens_generated": run_tokens,
        "generation_seconds": round(run_seconds, 3),
        "tokens_per_second": round(run_tokens / run_seconds, 2) if run_seconds > 0 else None,
    }
    if not dist.is_main:
        # The main process merges once every shard file exists; this one's work is on disk.
        write_json(shard_dir / f"process-{dist.rank:03d}.json", this_process)
        return None

    wait_for_shards(shard_dir, len(ranges), merge_wait_s)
    merged: list[dict] = []
    for k, shard_range in enumerate(ranges):
        shard_rows = completed_shard(shard_path(shard_dir, k), [ids[i] for i in shard_range])
        if shard_rows is None:
            raise GsilError(f"{shard_path(shard_dir, k)} is missing or does not hold the planned ids")
        merged.extend(shard_rows)
    check_ids([row["id"] for row in merged], ids, f"merge of {shard_dir}")
    others = [read_json(p) for p in sorted(shard_dir.glob("process-*.json"))]

    from gsil.records import write_records

    write_records(config.output, merged, "selfplay")
    meta = generation_meta(config, merged, generator_info or {}, prompts_sha256, prompts_truncated, this_process,
                           others, dist)
    write_json(meta_path_for(config.output), meta)
    shutil.rmtree(shard_dir)
    meta_summary = meta["counts"]
    log.info("wrote %s: %d rows, %d empty generations, %d cut at max_new_tokens, %d tokens (%s tok/s this run)",
             config.output, meta_summary["rows"], meta_summary["empty_generations"],
             meta_summary["truncated_at_max_tokens"], meta["tokens_generated"], this_process["tokens_per_second"])
    if meta_summary["empty_generations"]:
        empty_ids = [row["id"] for row in merged if not row["generated"]]
        log.warning("%d empty generation(s) kept (the trainer decides what to do with them), e.g. %s",
                    len(empty_ids), ", ".join(empty_ids[:5]))
    return meta
