"""Fault injection (issue 14): a run killed at any moment resumes with the README's commands and ends with the same
results as an uninterrupted run.

The tiny workflow (config/test.yaml) runs once uninterrupted (`tiny_workflow_run` in tests/conftest.py, the run
tests/test_e2e.py inspects). A second copy of the workflow starts from that run's results with one self-play chain
undone (UNDONE: the outputs of SPIN's round-1 generations, their reference scores, SPIN's round-1 training, its
evaluation and the tables; Snakemake regenerates a missing file only where something downstream needs it, so the
whole chain goes; its own dry run must then plan exactly those jobs, REDONE). It runs and is killed with
SIGKILL (Snakemake and every job at once, as a power loss does) while the generation job runs, while the
reference-scoring job runs, while the training job runs (after it saved a checkpoint) and while the evaluation job
runs. Each time it resumes as the README's "If a run was interrupted" says: `snakemake --unlock`, then the same
command again (the default workflow profile, profiles/default/, adds --rerun-incomplete). Then every result file is
compared with the uninterrupted run's: the scores and samples of every evaluation, every training metric but the
timings, every generation and reference file byte for byte.

Redoing one chain instead of the whole DAG keeps a kill in every kind of job at a quarter of a tiny run's CPU (the
jobs' cost is mostly process start-up); run with `pytest -m e2e tests/test_fault_injection.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

from helpers import SNAKEMAKE, TINY_RUN_COMMAND, copy_workflow, failed_logs, job_counts, workflow_env

RUN = Path("results/test")
# The uninterrupted run's command. Both runs use the workflow as a user has it (helpers.copy_workflow), its default
# workflow profile included (Snakemake reads profiles/default/ by itself).
COMMAND = list(TINY_RUN_COMMAND)
# The interrupted run checkpoints after every optimizer step, so that its training kill lands after a checkpoint
# and the resume from it (not a restart from step 0) is what gets compared. Checkpointing changes no output (the
# config schema says so; the uninterrupted run keeps the default, no checkpoint in these short runs).
OVERLAY = "checkpointing:\n  every: 1\n"
FAULT_COMMAND = COMMAND + ["config/fault_injection.yaml"]
# The outputs removed from the finished run's copy, and the jobs that must then be redone (every kind of job the
# kills need, one each, and the tables).
UNDONE = ("generations/spin/iter0", "reference/spin/iter0", "models/spin/iter1", "train/spin/iter1",
          "eval/spin/iter1", "tables")
REDONE = {"generate_responses": 1, "reference_logps": 1, "align_selfplay": 1, "evaluate_model": 1,
          "aggregate_results": 1, "all": 1}
# Fields that measure time, not results.
METRIC_TIMINGS = {"step_s", "tokens_per_s", "elapsed_s"}
# `seconds` and `run_info` are timings and provenance; `model` holds the model's absolute path and its producer's
# settings (the checkpoint interval among them); `cache_key` covers the model files' modification times.
EVAL_NOT_SCORES = {"seconds", "run_info", "model", "cache_key"}

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(3600)]


ENV = workflow_env()


def failure_report(workdir: Path, log: Path) -> str:
    return log.read_text()[-6000:] + failed_logs(workdir / RUN, tail=1500)


# --- the moments to kill at ------------------------------------------------------------------------------------
# Each probe looks at the results tree and returns (the running job it found, that job's output), or None. A job
# is caught at work: its log has lines written since this attempt started (it is past start-up), or, for training,
# it saved a checkpoint in this attempt; and its output is not there yet.

Probe = Callable[[Path, float], "tuple[str, Path] | None"]


def _written_since(path: Path, since: float) -> bool:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    return stat.st_mtime >= since and stat.st_size > 0


def _job_at_work(rule: str, outputs: str, suffix: str) -> Probe:
    def probe(run: Path, since: float):
        for log in (run / "logs" / rule).rglob("*.log"):
            relative = log.relative_to(run / "logs" / rule)
            output = run / outputs / relative.parent / (relative.name.removesuffix(".log") + suffix)
            if _written_since(log, since) and not output.exists():
                return f"{rule} making {output.relative_to(run)}", output
        return None
    return probe


def training(run: Path, since: float):
    """A training job (SFT or an align round) that saved a checkpoint but not yet its model."""
    for state in (run / "models").rglob("trainer_state.json"):
        checkpoint = state.parent
        if checkpoint.name.endswith(".checkpoint") and _written_since(state, since):
            model = checkpoint.with_name(checkpoint.name.removesuffix(".checkpoint"))
            try:
                step = json.loads(state.read_text())["step"]
            except (OSError, ValueError, KeyError):  # renamed away or half-read: the next poll looks again
                continue
            if not model.exists():
                return f"training {model.relative_to(run)} after its checkpoint of optimizer step {step}", model
    return None


MOMENTS: dict[str, Probe] = {
    "training": training,
    "generation": _job_at_work("generate_responses", "generations", ".jsonl"),
    "reference": _job_at_work("reference_logps", "reference", ".jsonl"),
    "evaluation": _job_at_work("evaluate_model", "eval", ".json"),
}


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL Snakemake and every job it started (they share its process group), then wait until all are gone."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
    for _ in range(100):  # orphaned jobs are reaped by init a moment later
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def run_with_kills(workdir: Path, log: Path, deadline: float) -> list[tuple[str, str]]:
    """Run the workflow, killing it at each moment once (whichever comes first), resuming as the README says
    after each kill, until a run ends by itself. Returns (moment, the job it caught) per kill, in order."""
    run = workdir / RUN
    pending, hits = dict(MOMENTS), []
    for attempt in range(len(MOMENTS) + 3):
        with open(log, "a") as out:
            if attempt:  # README, "If a run was interrupted": `snakemake --unlock`, then the same command again
                out.write(f"\n=== resume {attempt}: snakemake --unlock\n")
                out.flush()
                unlock = subprocess.run([str(SNAKEMAKE), "--unlock"], cwd=workdir, env=ENV, stdout=out,
                                        stderr=subprocess.STDOUT, timeout=600)
                assert unlock.returncode == 0, failure_report(workdir, log)
            out.write(f"\n=== attempt {attempt}: snakemake {' '.join(FAULT_COMMAND)}\n")
            out.flush()
            since = time.time() - 1.0  # file mtimes may lag the clock a little
            process = subprocess.Popen([str(SNAKEMAKE), *FAULT_COMMAND], cwd=workdir, env=ENV, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        caught = None
        try:
            while caught is None and process.poll() is None:
                assert time.monotonic() < deadline, f"interrupted run over its time bound; kills: {hits}"
                for moment, probe in pending.items():
                    found = probe(run, since)
                    if found:
                        kill_group(process)
                        caught = moment, *found
                        break
                else:
                    time.sleep(0.05)
        finally:
            if process.poll() is None:
                kill_group(process)
        if caught is None:
            assert process.returncode == 0, failure_report(workdir, log)
            assert not pending, f"the run finished before these moments came: {sorted(pending)}; kills: {hits}"
            return hits
        moment, job, output = caught
        # The job died unfinished unless it wrote its output between the probe and the kill (then it is not
        # counted, and a later job of that stage is caught instead).
        landed = not output.exists()
        if landed:
            del pending[moment]
            hits.append((moment, job))
        with open(log, "a") as out:
            out.write(f"\n=== SIGKILL to the process group: {job}{'' if landed else ' (it had just finished)'}\n")
    raise AssertionError(f"no run finished after {len(hits)} kills: {hits}")


# --- comparing the results -------------------------------------------------------------------------------------

def files(run: Path, pattern: str) -> list[Path]:
    return sorted(p.relative_to(run) for p in run.glob(pattern) if p.is_file())


def eval_scores(path: Path) -> dict:
    return {key: value for key, value in json.loads(path.read_text()).items() if key not in EVAL_NOT_SCORES}


def metric_rows(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{key: value for key, value in row.items() if key not in METRIC_TIMINGS} for row in rows]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_workflow_run):
    """(uninterrupted results, interrupted-and-resumed results, what each kill hit, the workdir of the latter)."""
    clean_seconds = tiny_workflow_run.seconds

    faulty = copy_workflow(tmp_path_factory.mktemp("interrupted"))
    (faulty / "config" / "fault_injection.yaml").write_text(OVERLAY)
    # copytree keeps the files' modification times, by which Snakemake decides what is up to date.
    shutil.copytree(tiny_workflow_run.run_dir, faulty / RUN, symlinks=True)
    for folder in UNDONE:
        shutil.rmtree(faulty / RUN / folder)
    plan = subprocess.run([str(SNAKEMAKE), "-n", *FAULT_COMMAND], cwd=faulty, env=ENV, capture_output=True,
                          text=True, timeout=600)
    assert plan.returncode == 0 and job_counts(plan.stdout + plan.stderr) == REDONE, plan.stdout + plan.stderr
    log = faulty / "snakemake.log"
    started = time.monotonic()
    # Bounded: a few jobs and the restarts the kills cost (start-up, the killed jobs' lost work).
    hits = run_with_kills(faulty, log, deadline=started + clean_seconds + 300)
    print(f"uninterrupted {clean_seconds:.0f} s; interrupted and resumed {time.monotonic() - started:.0f} s; "
          f"kills: {hits}")
    return tiny_workflow_run.run_dir, faulty / RUN, hits, faulty


def test_every_moment_was_hit(runs):
    _, faulty_run, hits, _ = runs
    assert sorted(moment for moment, _ in hits) == sorted(MOMENTS)
    assert all((faulty_run / folder).is_dir() for folder in UNDONE)


def test_resumed_run_has_nothing_left_to_do(runs):
    _, faulty_run, _, workdir = runs
    out = subprocess.run([str(SNAKEMAKE), "-n", *FAULT_COMMAND], cwd=workdir, env=ENV, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0 and "Nothing to be done" in out.stdout + out.stderr, out.stdout + out.stderr
    assert not list(faulty_run.glob("models/**/*.checkpoint")), "a finished training job left its checkpoint"
    assert not list(faulty_run.glob("generations/**/*.shards")), "a finished generation job left its shards"


def test_evaluation_scores_are_identical(runs):
    clean, faulty, _, _ = runs
    results = files(clean, "eval/**/*.json")
    assert len(results) == 18 and files(faulty, "eval/**/*.json") == results
    for path in results:
        assert eval_scores(faulty / path) == eval_scores(clean / path), path
    samples = files(clean, "eval/**/*.samples.jsonl")
    assert samples and files(faulty, "eval/**/*.samples.jsonl") == samples
    for path in samples:
        assert (faulty / path).read_bytes() == (clean / path).read_bytes(), path


def test_training_metrics_are_identical(runs):
    clean, faulty, _, _ = runs
    metrics = files(clean, "train/**/metrics.jsonl")
    assert len(metrics) == 8 and files(faulty, "train/**/metrics.jsonl") == metrics
    for path in metrics:
        clean_rows, faulty_rows = metric_rows(clean / path), metric_rows(faulty / path)
        assert clean_rows and [row["step"] for row in faulty_rows] == [row["step"] for row in clean_rows], path
        assert faulty_rows == clean_rows, path


@pytest.mark.parametrize("stage", ["generations", "reference"])
def test_generations_and_references_are_identical(runs, stage):
    clean, faulty, _, _ = runs
    outputs = files(clean, f"{stage}/**/*.jsonl")
    assert outputs and files(faulty, f"{stage}/**/*.jsonl") == outputs
    for path in outputs:
        assert (faulty / path).read_bytes() == (clean / path).read_bytes(), path
