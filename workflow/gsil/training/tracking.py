"""Experiment tracking: the per-step training metrics also go to accelerate's trackers (`--tracking`).

The rows the loop appends to metrics.jsonl are the record; trackers get a copy of each row's numbers through
accelerate's tracker interface (`Accelerator(log_with=..., project_dir=...)`, `init_trackers`, `log`), on the main
process only. Tracking changes nothing the run writes (metrics.jsonl, checkpoints, the model, training_config.json):
its settings are not fingerprinted and not saved with the model.

Where things go:
- tensorboard: event files in `<--tracking-dir>/<--tracking-project>/` (accelerate's layout: project_dir/project);
  the hyperparameters as TensorBoard hparams in a timestamped folder below it.
- wandb / mlflow: a run named `--tracking-run` (default: the output folder's name) in the project / experiment
  `--tracking-project`; where it goes is theirs to configure (WANDB_*, MLFLOW_TRACKING_URI). wandb's files go under
  --tracking-dir when it is given.

Resume: the trackers mirror metrics.jsonl. Every start deletes the TensorBoard files an earlier attempt left in its
folder (as a fresh run deletes the old metrics.jsonl); a resumed run then replays the rows metrics.jsonl holds up to
the checkpoint (restored from the checkpoint's copy) before it continues. So every step shows once, with the value
metrics.jsonl holds, and the steps a killed run logged after its checkpoint (recomputed now) do not show twice; the
replayed steps carry the replay's wall time (`elapsed_s` keeps the real one). wandb and mlflow start a new run of the
same name that gets the replayed steps too; the killed attempt's run stays there as it was left.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from gsil.logutil import GsilError

log = logging.getLogger("gsil.training")

# --tracking names -> (accelerate's availability check in accelerate.utils, the package to install)
TRACKERS = {
    "tensorboard": ("is_tensorboard_available", "tensorboard"),
    "wandb": ("is_wandb_available", "wandb"),
    "mlflow": ("is_mlflow_available", "mlflow"),
}
# TrainSettings fields that only say where a copy of the metrics goes: not fingerprinted, not in training_config.json
TRACKING_FIELDS = ("tracking", "tracking_dir", "tracking_project", "tracking_run")
DEFAULT_PROJECT = "gsil"
_EVENT_FILE = "events.out.tfevents."
_HPARAMS_FOLDER = re.compile(r"^\d+(\.\d+)?$")  # the time.time() folders torch's add_hparams / accelerate write


def parse_trackers(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """`tensorboard,wandb` (or a list) -> ['tensorboard', 'wandb']; '' / 'none' -> []. Unknown names are refused."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    names: list[str] = []
    for item in items:
        name = str(item).strip().lower()
        if not name or name == "none":
            continue
        if name not in TRACKERS:
            raise GsilError(f"--tracking: unknown tracker {name!r}; choose from {', '.join(TRACKERS)} "
                            f"(comma-separated), or none")
        if name not in names:
            names.append(name)
    return names


def tracker_available(name: str) -> bool:
    """Whether accelerate would start this tracker (it silently drops one whose package is missing)."""
    import accelerate.utils

    return bool(getattr(accelerate.utils, TRACKERS[name][0])())


def validate_tracking(trackers: list[str], tracking_dir: str, project: str) -> None:
    """Refuse, before any work, a tracker that is unknown or not installed, and TensorBoard without a folder."""
    for name in parse_trackers(trackers):
        if not tracker_available(name):
            package = TRACKERS[name][1]
            raise GsilError(f"--tracking {name}: the `{package}` package is not installed in this environment "
                            f"(pip install {package}), or leave {name} out of --tracking")
    if "tensorboard" in trackers and not tracking_dir:
        raise GsilError("--tracking tensorboard needs --tracking-dir (the folder its event files go to)")
    if trackers and (not project or "/" in project):
        raise GsilError(f"--tracking-project={project!r}: needs a name without '/'")


def accelerator_kwargs(settings) -> dict[str, Any]:
    """The `Accelerator(...)` arguments for the run's trackers: none when tracking is off (accelerate as before)."""
    trackers = parse_trackers(settings.tracking)
    if not trackers:
        return {}
    kwargs: dict[str, Any] = {"log_with": trackers}
    if settings.tracking_dir:
        kwargs["project_dir"] = str(settings.tracking_dir)
    return kwargs


def flatten_config(config: dict, prefix: str = "") -> dict[str, Any]:
    """Nested settings -> one level of `a.b` keys whose values are int, float, bool or str (TensorBoard hparams take
    nothing else): lists become comma-joined strings, None 'None', anything else its str()."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, prefix=f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        elif isinstance(value, (list, tuple)):
            flat[name] = ",".join(str(item) for item in value)
        else:
            flat[name] = str(value)
    return flat


def tracked_values(metrics: dict) -> dict[str, float | int]:
    """A metrics row's numbers, without the step (the trackers' step) and without the None of a missing value."""
    return {key: value for key, value in metrics.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}


def tensorboard_folder(settings) -> Path:
    return Path(settings.tracking_dir) / (settings.tracking_project or DEFAULT_PROJECT)


def clear_tensorboard_folder(folder: Path) -> int:
    """Delete what an earlier run's TensorBoard tracker wrote in `folder` (event files, hparams folders); nothing
    else. Returns the count of entries removed."""
    removed = 0
    if not folder.is_dir():
        return 0
    for entry in folder.iterdir():
        if entry.is_file() and entry.name.startswith(_EVENT_FILE):
            entry.unlink()
            removed += 1
        elif entry.is_dir() and _HPARAMS_FOLDER.match(entry.name):
            shutil.rmtree(entry)
            removed += 1
    return removed


class RunTracking:
    """The trackers of one `train` call: started after the resume decision, fed every metrics row, finished on every
    way out (a context manager). Inactive (every method a no-op) when `--tracking` names none."""

    def __init__(self, accelerator, settings, *, run_name: str, config: dict, start_step: int,
                 metrics_path: str | Path | None = None) -> None:
        self.accelerator = accelerator
        self.active = bool(parse_trackers(settings.tracking)) and bool(getattr(accelerator, "log_with", None))
        self.finished = False
        if parse_trackers(settings.tracking) and not self.active:
            log.warning("--tracking %s: this run's Accelerator was made without trackers; nothing is tracked",
                        ",".join(parse_trackers(settings.tracking)))
        if not self.active:
            return
        trackers = parse_trackers(settings.tracking)
        project = settings.tracking_project or DEFAULT_PROJECT
        init_kwargs: dict[str, dict] = {}
        if "tensorboard" in trackers and accelerator.is_main_process:
            folder = tensorboard_folder(settings)
            if clear_tensorboard_folder(folder):
                log.info("deleted the TensorBoard files of an earlier attempt in %s (%s)", folder,
                         "replaying metrics.jsonl up to the checkpoint" if start_step else "fresh run")
        if "wandb" in trackers:
            init_kwargs["wandb"] = {"name": run_name}
            if settings.tracking_dir:
                if accelerator.is_main_process:
                    Path(settings.tracking_dir).mkdir(parents=True, exist_ok=True)
                init_kwargs["wandb"]["dir"] = str(settings.tracking_dir)
        if "mlflow" in trackers:
            init_kwargs["mlflow"] = {"run_name": run_name}
        from gsil.runinfo import redact, secret_values

        hparams = flatten_config(redact(config, secret_values(config)))
        accelerator.init_trackers(project, config=hparams, init_kwargs=init_kwargs)
        where = f" (TensorBoard: {tensorboard_folder(settings)})" if "tensorboard" in trackers else ""
        log.info("tracking to %s as %s/%s%s", ",".join(trackers), project, run_name, where)
        if start_step and metrics_path is not None and Path(metrics_path).is_file() and accelerator.is_main_process:
            replayed = 0
            for line in Path(metrics_path).read_text(encoding="utf-8").splitlines():
                row = json.loads(line) if line.strip() else None
                if row is not None and int(row.get("step", 0)) <= start_step:
                    self.log(row)
                    replayed += 1
            log.info("replayed %d metric rows of the steps before the checkpoint to the trackers", replayed)

    def __enter__(self) -> "RunTracking":
        return self

    def __exit__(self, *exc) -> None:
        self.finish()

    def log(self, metrics: dict) -> None:
        if self.active and not self.finished:
            self.accelerator.log(tracked_values(metrics), step=int(metrics["step"]))

    def finish(self) -> None:
        """Close every tracker (TensorBoard's writer, the wandb / mlflow run), on the main process.

        Each tracker's `finish()` (accelerate's GeneralTracker interface) rather than `Accelerator.end_training()`,
        which also destroys the process group: a stage may still need collectives after `train` returns.
        """
        if not self.active or self.finished:
            return
        self.finished = True
        for tracker in self.accelerator.trackers:
            try:
                tracker.finish()
            except Exception as err:  # a tracker failing to close must not hide the run's own outcome
                log.warning("tracker %s did not close cleanly: %s", getattr(tracker, "name", tracker), err)


__all__ = ["TRACKERS", "TRACKING_FIELDS", "RunTracking", "accelerator_kwargs", "clear_tensorboard_folder",
           "flatten_config", "parse_trackers", "tracked_values", "validate_tracking"]
