"""Training checkpoints: `<output>.checkpoint/`, what it holds, and saving, resuming and discarding it.

A checkpoint holds accelerate's state (model, optimizer, the registered scheduler, RNG), `trainer_state.json` (the
optimizer step, the run's fingerprint, the elapsed seconds) and `metrics.jsonl` (the metrics rows up to its step:
Snakemake deletes a failed job's outputs, the metrics file among them, before a retry, and the resumed run must
still log every step). The data order follows from (seed, step), so nothing about the data is saved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gsil.io import atomic_path, write_json
from gsil.logutil import GsilError
from gsil.training.settings import TrainSettings
from gsil.training.tracking import TRACKING_FIELDS

log = logging.getLogger("gsil.training")

CHECKPOINT_STATE = "trainer_state.json"
# The metrics of the steps a checkpoint holds, kept inside it: Snakemake deletes a failed job's outputs (the
# metrics file among them) before a retry, and the resumed run must still log every step.
CHECKPOINT_METRICS = "metrics.jsonl"

# Settings that change how a run is carried out, not what it computes.
# precision_requested: what a run computes follows from the resolved `precision`, which is fingerprinted (a checkpoint
# of a run whose auto gave bf16 is not resumed where auto gives fp32).
NOT_FINGERPRINTED = ("resume", "checkpoint_every", "checkpoint_save", "threads", "precision_requested",
                     *TRACKING_FIELDS)


def checkpoint_dir_for(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".checkpoint")


def run_fingerprint(settings: TrainSettings, example_ids: Sequence[str], extra: dict) -> str:
    """What a checkpoint must agree on to be resumed: settings, the examples and the objective's parameters."""
    payload = {k: v for k, v in settings.to_dict().items() if k not in NOT_FINGERPRINTED}
    payload["extra"] = extra
    payload["ids"] = hashlib.sha256("\n".join(example_ids).encode()).hexdigest()
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class StartPoint:
    """Where a run starts: the optimizer steps already done and the seconds they took (0 and 0.0 for a fresh run)."""

    step: int = 0
    elapsed_s: float = 0.0


@dataclass(frozen=True)
class RunCheckpoint:
    """The checkpoint of one run: `<output>.checkpoint/`, the fingerprint it must carry to be resumed, the metrics
    file it carries a copy of, and how it is replaced (`--checkpoint-save beside | in-place`)."""

    directory: Path
    fingerprint: str
    metrics_path: Path
    in_place: bool = False

    def exists(self) -> bool:
        return (self.directory / CHECKPOINT_STATE).exists()

    def resume(self, accelerator, total_steps: int) -> StartPoint:
        """Load the checkpoint into the prepared objects and put the metrics file back to the checkpoint's steps.

        Refused when the checkpoint belongs to a run of other settings or data (another fingerprint)."""
        state = json.loads((self.directory / CHECKPOINT_STATE).read_text())
        if state.get("fingerprint") != self.fingerprint:
            raise GsilError(f"checkpoint {self.directory} belongs to a run with other settings or data; delete it "
                            f"or pass --resume never")
        accelerator.load_state(str(self.directory))
        start = StartPoint(step=int(state["step"]), elapsed_s=float(state.get("elapsed_s", 0.0)))
        log.info("resuming from %s at optimizer step %d of %d", self.directory, start.step, total_steps)
        if accelerator.is_main_process:
            restore_metrics(self.directory / CHECKPOINT_METRICS, self.metrics_path, start.step)
        return start

    def start_fresh(self, accelerator) -> StartPoint:
        """A run from step 0: the checkpoint and metrics file an earlier run left are deleted."""
        if accelerator.is_main_process:
            if self.directory.exists():
                shutil.rmtree(self.directory)
            self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
            self.metrics_path.unlink(missing_ok=True)
        return StartPoint()

    def save(self, accelerator, step: int, elapsed_s: float) -> None:
        """A collective: every process calls it after the same optimizer step."""
        save_checkpoint(accelerator, self.directory, {"step": step, "fingerprint": self.fingerprint,
                                                      "elapsed_s": elapsed_s},
                        metrics_path=self.metrics_path, in_place=self.in_place)

    def remove(self, accelerator) -> None:
        """After the final save: the finished run needs its checkpoint no more."""
        if accelerator.is_main_process and self.directory.exists():
            shutil.rmtree(self.directory)


def restore_metrics(saved: Path, metrics_path: Path, keep_up_to_step: int) -> None:
    """On resume, the metrics file holds exactly the steps up to the checkpoint: the checkpoint's own copy (the
    live file may be gone: Snakemake deletes a failed job's outputs), else the live file trimmed (rows of steps
    after the checkpoint are recomputed)."""
    source = saved if saved.is_file() else metrics_path
    kept = []
    if source.is_file():
        for line in source.read_text(encoding="utf-8").splitlines():
            if line.strip() and json.loads(line).get("step", 0) <= keep_up_to_step:
                kept.append(line)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(metrics_path) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    if len(kept) != keep_up_to_step:
        log.warning("%s: %d metric rows for the %d steps before the checkpoint", metrics_path, len(kept),
                    keep_up_to_step)


def save_checkpoint(accelerator, checkpoint_dir: Path, state: dict, *, metrics_path: Path,
                    in_place: bool = False) -> None:
    """Model, optimizer, scheduler and RNG states, the step and the metrics so far; the data order follows from
    (seed, step).

    Written to `<dir>.partial` and renamed, so a kill mid-save never leaves a checkpoint that looks whole. By default
    the previous checkpoint stays until the new one is complete (two on disk during a save, `--checkpoint-save
    beside`); `in_place` deletes it first (one on disk: half the space, for ZeRO-3 checkpoints of 70-100 GB, but a
    kill during the save then restarts the run from step 0).
    """
    staging = checkpoint_dir.with_name(checkpoint_dir.name + ".partial")
    if accelerator.is_main_process:
        if staging.exists():
            shutil.rmtree(staging)
        if in_place and checkpoint_dir.exists():
            shutil.rmtree(checkpoint_dir)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if metrics_path.is_file():
            shutil.copyfile(metrics_path, staging / CHECKPOINT_METRICS)
        write_json(staging / CHECKPOINT_STATE, state)
        previous = checkpoint_dir.with_name(checkpoint_dir.name + ".old")
        if checkpoint_dir.exists():
            checkpoint_dir.rename(previous)
        staging.rename(checkpoint_dir)
        shutil.rmtree(previous, ignore_errors=True)
    accelerator.wait_for_everyone()

