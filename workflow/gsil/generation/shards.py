"""Sharding and resume: which process generates which prompts, and what is already on disk.

Large prompt sets run in shards of `shard_size` prompts (input order). Each finished shard is written atomically to
`<output>.shards/shard-00003.jsonl`; a killed run restarts with the shards that are not on disk. `plan.json` in
the shard folder fingerprints the inputs and settings, so shards of a different configuration are never mixed in.
Under `accelerate launch` (or torchrun) each process takes every WORLD_SIZE-th shard on its own GPU, and process 0
merges once all shard files exist. The merge checks that the ids are exactly the input ids (`check_ids`: no
duplicate, none missing).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from gsil.generation.results import BatchCallback, GenerationResult, Generator
from gsil.generation.settings import SEEDING, GenerateConfig
from gsil.io import iter_jsonl, read_json, write_json
from gsil.logutil import GsilError

log = logging.getLogger("gsil.generation")  # one logger for the package: log lines name gsil.generation

SHARD_PLAN_FILE = "plan.json"


def shard_dir_for(output: str | os.PathLike) -> Path:
    path = Path(output)
    return path.with_name(path.name + ".shards")


def shard_path(shard_dir: Path, index: int) -> Path:
    return shard_dir / f"shard-{index:05d}.jsonl"


def shard_ranges(n_rows: int, shard_size: int) -> list[range]:
    if shard_size < 1:
        raise GsilError(f"shard size must be >= 1, got {shard_size}")
    return [range(start, min(start + shard_size, n_rows)) for start in range(0, n_rows, shard_size)]


def _read_jsonl(path: Path) -> list[dict]:
    return [row for _, row in iter_jsonl(path)]


def check_ids(found: Sequence[str], expected: Sequence[str], where: str) -> None:
    """Raise naming the duplicated, missing or unexpected ids when `found` is not exactly `expected`."""
    seen: set[str] = set()
    duplicates = sorted({i for i in found if i in seen or seen.add(i)})  # type: ignore[func-returns-value]
    missing = sorted(set(expected) - seen)
    unexpected = sorted(seen - set(expected))
    if duplicates or missing or unexpected:
        parts = []
        for name, ids in (("duplicate", duplicates), ("missing", missing), ("unexpected", unexpected)):
            if ids:
                parts.append(f"{len(ids)} {name} id(s) (e.g. {', '.join(map(repr, ids[:5]))})")
        raise GsilError(f"{where}: " + "; ".join(parts))


@dataclass(frozen=True)
class DistributedInfo:
    """This process's place under `accelerate launch` / torchrun (from their environment variables)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "DistributedInfo":
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def my_shards(self, n_shards: int) -> list[int]:
        """Strided: process r takes shards r, r + world, r + 2*world, ..."""
        return list(range(self.rank, n_shards, self.world_size))


def shard_plan_fingerprint(config: GenerateConfig, prompts_sha256: str, ids: Sequence[str], identity: str) -> dict:
    """What `plan.json` holds: everything that changes the shards' content (`identity`: `model_identity`'s);
    `progress` and `limit` (the ids cover it) do not."""
    settings = config.settings()
    for key in ("output", "progress", "limit"):
        settings.pop(key)
    return {
        "prompts_sha256": prompts_sha256,
        "ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
        "rows": len(ids),
        "model_identity": identity,
        "settings": settings,
        "seeding": SEEDING,
    }


def model_identity(model_dir: str) -> str:
    """A cheap identity of a checkpoint folder: names, sizes and mtimes of its files (not a content hash)."""
    entries = []
    root = Path(model_dir)
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            if path.is_file():
                stat = path.stat()
                entries.append(f"{path.relative_to(root)}:{stat.st_size}:{int(stat.st_mtime)}")
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def prepare_shard_dir(shard_dir: Path, fingerprint: dict, dist: DistributedInfo, *, wait_s: float = 600.0) -> None:
    """Make `shard_dir` hold shards of this plan only: the main process clears shards of another plan."""
    plan_file = shard_dir / SHARD_PLAN_FILE
    if dist.is_main:
        if plan_file.is_file() and read_json(plan_file) != fingerprint:
            log.warning("%s holds shards of different inputs or settings; discarding them", shard_dir)
            shutil.rmtree(shard_dir)
        elif shard_dir.is_dir() and not plan_file.is_file():
            log.warning("%s has no %s; discarding its content", shard_dir, SHARD_PLAN_FILE)
            shutil.rmtree(shard_dir)
        shard_dir.mkdir(parents=True, exist_ok=True)
        if not plan_file.is_file():
            write_json(plan_file, fingerprint)
        return
    # Other processes wait for the main one to publish this plan (no collective call needed).
    deadline = time.monotonic() + wait_s
    while not (plan_file.is_file() and read_json(plan_file) == fingerprint):
        if time.monotonic() > deadline:
            raise GsilError(f"process {dist.rank}: {plan_file} did not appear with this run's plan in {wait_s:.0f}s")
        time.sleep(1.0)


def completed_shard(path: Path, expected_ids: Sequence[str]) -> list[dict] | None:
    """The rows of a shard file if it is complete for `expected_ids`, else None (stale or foreign shard)."""
    if not path.is_file():
        return None
    try:
        rows = _read_jsonl(path)
    except GsilError as err:
        log.warning("ignoring unreadable shard %s: %s", path, err)
        return None
    if [row.get("id") for row in rows] != list(expected_ids):
        log.warning("ignoring shard %s: its ids do not match the plan", path)
        return None
    return rows


def shard_results(generator: Generator, shards: dict[int, range], prompt_ids: Sequence[Sequence[int]],
                  seeds: Sequence[int], on_batch: BatchCallback | None = None,
                  ) -> Iterator[tuple[int, list[GenerationResult]]]:
    """(shard index, its results in row order) for each shard of `shards` (index -> row range), as soon as the
    shard is complete.

    A generator with `stream` (vLLM) gets every prompt of these shards in one call, so its engine stays full until
    the job's last request; shards then complete in any order. Others (transformers) are called once per shard.
    Either way each prompt samples with its own seed, so the results do not depend on which shards run together.
    """
    stream = getattr(generator, "stream", None)
    if stream is None:
        for k, rows in shards.items():
            results = generator.generate([prompt_ids[i] for i in rows], on_batch=on_batch,
                                         seeds=[seeds[i] for i in rows])
            if len(results) != len(rows):
                raise GsilError(f"backend returned {len(results)} results for {len(rows)} prompts")
            yield k, list(results)
        return
    flat = [(k, i) for k, rows in shards.items() for i in rows]
    waiting = {k: len(rows) for k, rows in shards.items()}
    done: dict[int, GenerationResult] = {}
    for position, result in stream([prompt_ids[i] for _, i in flat], [seeds[i] for _, i in flat], on_batch=on_batch):
        k, i = flat[position]
        done[i] = result
        waiting[k] -= 1
        if not waiting[k]:
            yield k, [done.pop(j) for j in shards[k]]
    unfinished = [k for k, n in waiting.items() if n]
    if unfinished:
        raise GsilError(f"backend returned no results for some prompts of shard(s) {unfinished[:5]}")


def wait_for_shards(shard_dir: Path, n_shards: int, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    announced = False
    while True:
        missing = [k for k in range(n_shards) if not shard_path(shard_dir, k).is_file()]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise GsilError(f"{len(missing)} shard(s) of {shard_dir} never appeared (e.g. shard {missing[0]})")
        if not announced:
            log.info("waiting for %d shard(s) from the other processes", len(missing))
            announced = True
        time.sleep(2.0)
