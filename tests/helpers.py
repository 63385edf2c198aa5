"""Helpers shared by the test modules (fixtures live in tests/conftest.py): the one tiny-model builder, the one
workflow copy, the one way to run Snakemake, the training test data, and small readers.

Import as `from helpers import ...` (pytest puts tests/ on sys.path, as for tokenizer_fixtures / hub_fixtures).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


# ------------------------------------------------------------------------------------------------ tiny model

# The tiny random Llama every model-level test uses (SmolLM2 tokenizer): seconds to build, train and evaluate.
TINY_MODEL = dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)


def build_tiny_model(path: Path, *, seed: int = 0, **overrides) -> Path:
    """A tiny random Llama saved at `path` (gsil.modeling.build_random_model with TINY_MODEL's sizes)."""
    from gsil.modeling import build_random_model

    build_random_model(path, seed=seed, **{**TINY_MODEL, **overrides})
    return path


# ------------------------------------------------------------------------------------------------ the workflow

# Top-level entries of the checkout that are not part of the workflow a user runs: version control, environments,
# caches, results and the tests themselves. Everything else (Snakefile, config/, profiles/ - the default workflow
# profile -, workflow/, pyproject.toml, any folder added later) is copied.
NOT_WORKFLOW = {"results", "tests", "build", "dist", "venv", "__pycache__"}
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".snakemake", ".pytest_cache")


def copy_workflow(dest: Path) -> Path:
    """The workflow as a user has it, without any results: every top-level entry of the checkout but hidden ones
    (.git, .venv, .snakemake, ...) and NOT_WORKFLOW. Returns `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    for src in sorted(REPO.iterdir()):
        if src.name.startswith(".") or src.name in NOT_WORKFLOW or (src / "pyvenv.cfg").exists():
            continue
        if src.is_dir():
            shutil.copytree(src, dest / src.name, ignore=IGNORED, symlinks=True)
        else:
            shutil.copy2(src, dest / src.name)
    return dest


def job_counts(dry_run_output: str) -> Counter:
    """The 'Job stats' table of a dry run as {rule: count}."""
    counts: Counter = Counter()
    lines = dry_run_output.split("Job stats:", 1)[1].splitlines()
    for line in lines[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        if match.group(1) != "total":
            counts[match.group(1)] = int(match.group(2))
    return counts


def workflow_env(*path_first: Path, **extra: str) -> dict[str, str]:
    """The environment Snakemake runs with: offline, the tests' interpreter's bin/ on PATH (where the `gsil` and
    `accelerate` commands of the rules live), `path_first` folders before it (stand-ins), then `extra`."""
    path = os.pathsep.join([*map(str, path_first), str(SNAKEMAKE.parent), os.environ.get("PATH", "")])
    return {**os.environ, **OFFLINE, "PATH": path, **extra}


def failed_logs(run_dir: Path, tail: int = 2500) -> str:
    """The ends of the job logs under <run_dir>/logs that report an error (for assertion messages)."""
    out = []
    for path in sorted((run_dir / "logs").rglob("*.log")):
        text = path.read_text(errors="replace")
        if "Traceback" in text or "rror" in text:
            out.append(f"\n--- {path.relative_to(run_dir)}\n{text[-tail:]}")
    return "".join(out)


def snakemake(*args: str, cwd: Path = REPO, env: dict | None = None, check: bool = True, timeout: float | None = 600,
              log: Path | None = None, run_dir: Path | None = None) -> str:
    """Run `snakemake ARGS` in `cwd` with workflow_env() (updated by `env`); its stdout+stderr (appended to `log`
    when given). With `check`, a failure raises AssertionError with the output's end and, when `run_dir` is given,
    the failed job logs."""
    done = subprocess.run([str(SNAKEMAKE), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**workflow_env(), **(env or {})})
    text = done.stdout + done.stderr
    if log is not None:
        with open(log, "a") as handle:
            handle.write(f"\n=== snakemake {' '.join(args)}\n{text}")
    if check and done.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({done.returncode}):\n{text[-6000:]}"
                             + (failed_logs(run_dir) if run_dir is not None else ""))
    return text


# The tiny run (tests/conftest.py's tiny_workflow_run): the whole DAG of config/test.yaml on a tiny random model.
TINY_RUN_COMMAND = ("--cores", "2", "--configfile", "config/test.yaml")


def merged_config(*overlays: str) -> dict:
    """config/config.yaml, then each overlay of config/, merged by Snakemake's own update_config (as --configfile
    does: key by key, lists replaced)."""
    import yaml
    from snakemake.utils import update_config

    config: dict = {}
    for name in ("config.yaml",) + overlays:
        update_config(config, yaml.safe_load((REPO / "config" / name).read_text()))
    return config


# ------------------------------------------------------------------------------------------------ readers


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------------ training data

# The keys of a pair run's metrics rows, spelled out (not derived from gsil.losses.pair_metric_names): a self-play
# run logs the paper's words (real, generated), a preference (DPO) run TRL's (chosen, rejected).
PAIR_METRIC_KEYS = {"step", "epoch", "loss", "loss/real", "loss/generated", "rewards/real", "rewards/generated",
                    "rewards/margin", "rewards/accuracy", "logps/real", "logps/generated", "lr", "grad_norm",
                    "tokens_per_s", "elapsed_s"}
PREFERENCE_METRIC_KEYS = {"step", "epoch", "loss", "loss/chosen", "loss/rejected", "rewards/chosen",
                          "rewards/rejected", "rewards/margin", "rewards/accuracy", "logps/chosen", "logps/rejected",
                          "lr", "grad_norm", "tokens_per_s", "elapsed_s"}
METRIC_KEYS = {"selfplay": PAIR_METRIC_KEYS, "preference": PREFERENCE_METRIC_KEYS}
MAX_LENGTH, MAX_PROMPT = 160, 96

PROMPTS = ["What is 2 + 3?", "Tom has 4 apples and buys 5 more. How many?", "Compute 7 times 6.",
           "A box holds 12 eggs; 3 break. How many are left?", "What is 10 minus 4?", "Half of 18 is?",
           "Add 11 and 13.", "What is 9 + 9?"]


def pair_rows(n: int = 8) -> list[dict]:
    """selfplay records: a gold-like answer and a shorter wrong one."""
    return [{"id": f"q{i}", "prompt": PROMPTS[i % len(PROMPTS)], "real": f"The answer is {i + 5}. #### {i + 5}",
             "generated": f"Maybe {i}."} for i in range(n)]


def demonstration_rows(n: int = 4) -> list[dict]:
    return [{"id": f"d{i}", "prompt": PROMPTS[i % len(PROMPTS)], "response": f"Step: {i} + {i} = {2 * i}. #### {2 * i}"}
            for i in range(n)]


def as_pair_objects(rows: list[dict]) -> list:
    return [SimpleNamespace(id=r["id"], prompt=r["prompt"], positive=r["real"], negative=r["generated"]) for r in rows]


def align_args(model, pairs, reference, out, *extra) -> list[str]:
    """`gsil align` arguments for a selfplay pair file and its reference file (logistic loss, tiny sizes)."""
    return ["align", "--model", str(model), "--pairs", str(pairs), "--kind", "selfplay", "--reference",
            str(reference), "--loss", "logistic", "--beta", "0.1", "--gamma", "1.0", "--output", str(out / "model"),
            "--metrics", str(out / "metrics.jsonl"), "--max-length", str(MAX_LENGTH), "--max-prompt-length",
            str(MAX_PROMPT), "--global-batch-size", "4", "--lr", "1e-3", "--optimizer", "adamw", *extra]
