"""Shared test settings: offline, few threads, deterministic."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import NamedTuple

# The Hub is unreachable here and tests must never try it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The CPU's bf16 probe (gsil.cpu.bf16_choice) caches its figure; tests and the jobs they start keep theirs apart
# from the user's ~/.cache.
os.environ.setdefault("GSIL_CPU_PROBE_CACHE", os.path.join(__import__("tempfile").mkdtemp(prefix="gsil-probe-"),
                                                          "cpu-bf16-probe.json"))

import pytest  # noqa: E402


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True, scope="session")
def _limit_threads():
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    yield


# ------------------------------------------------------------------------------------------------ shared fixtures


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The tiny random Llama (helpers.TINY_MODEL), built once per session. Shared: tests must not write into it
    (copy it first)."""
    pytest.importorskip("torch")
    from helpers import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def scored(tiny_model_dir, tmp_path_factory):
    """(a selfplay pair file with two identical pairs, its reference file by `gsil reference-logps` on the tiny
    model), for `gsil align` runs (helpers.align_args). Shared: read them, never write into them."""
    from gsil.cli import main
    from gsil.records import write_records
    from helpers import MAX_LENGTH, MAX_PROMPT, pair_rows

    folder = tmp_path_factory.mktemp("align")
    rows = pair_rows(10)
    rows[3]["generated"] = rows[3]["real"]
    rows[7]["generated"] = rows[7]["real"] + "  "
    pairs = folder / "selfplay.jsonl"
    write_records(pairs, rows, "selfplay")
    reference = folder / "ref.jsonl"
    assert main(["reference-logps", "--model", str(tiny_model_dir), "--pairs", str(pairs), "--kind", "selfplay",
                 "--output", str(reference), "--max-length", str(MAX_LENGTH),
                 "--max-prompt-length", str(MAX_PROMPT)]) == 0
    return pairs, reference


class WorkflowRun(NamedTuple):
    workdir: Path        # the copy of the workflow the run ran in
    run_dir: Path        # <workdir>/results/<run>
    seconds: float       # wall time of the run
    dry_run: str         # the output of the same command with -n afterwards
    log: Path            # Snakemake's output


@pytest.fixture(scope="session")
def tiny_workflow_run(tmp_path_factory) -> WorkflowRun:
    """The whole DAG of config/test.yaml (a tiny random model), run once, uninterrupted, in a fresh copy of the
    workflow (its default profile included), then its dry run. Shared by tests/test_e2e.py (which inspects it) and
    tests/test_fault_injection.py (which compares an interrupted run against it): read it, never write into it."""
    from helpers import TINY_RUN_COMMAND, copy_workflow, snakemake

    workdir = copy_workflow(tmp_path_factory.mktemp("tiny-run"))
    run_dir, log = workdir / "results" / "test", workdir / "snakemake.log"
    started = time.monotonic()
    snakemake(*TINY_RUN_COMMAND, cwd=workdir, timeout=None, log=log, run_dir=run_dir)
    seconds = time.monotonic() - started
    dry_run = snakemake(*TINY_RUN_COMMAND, "-n", cwd=workdir, log=log, run_dir=run_dir)
    return WorkflowRun(workdir, run_dir, seconds, dry_run, log)
