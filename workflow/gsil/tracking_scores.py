"""Every evaluation score of a run as TensorBoard scalars: `gsil track-scores --eval-dir DIR --tracking-dir DIR`.

Reads the result JSONs `gsil evaluate` wrote (`<eval-dir>/<model>/<benchmark>.json`) and writes one scalar per model
and benchmark, tag `eval/<benchmark>`, on the scale the tables show (percent for fraction-scale benchmarks). A
self-play round `<method>/iter<k>` is step k of the TensorBoard run `<method>`, so a method's rounds draw a curve
over iterations; any other model is its own run at step 0. Skipped evaluations (a judged benchmark without a judge)
are left out, as in the tables.

The tracking folder is written whole (into a temporary sibling, then swapped in), so a rerun replaces the scalars
instead of adding duplicates; `track_scores.json` in it lists what was written. A folder this command did not write
(no `track_scores.json`) is refused rather than replaced.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from gsil.logutil import GsilError

log = logging.getLogger("gsil.track_scores")

MANIFEST = "track_scores.json"
TAG_PREFIX = "eval/"
_ROUND = re.compile(r"^(?P<method>.+)/iter(?P<iteration>\d+)$")


@dataclass(frozen=True)
class Score:
    model: str
    benchmark: str
    value: float       # as the tables show it: percent for fraction-scale benchmarks
    raw_value: float   # as `gsil evaluate` wrote it
    metric: str
    run: str           # the TensorBoard run (sub-folder of the tracking folder)
    step: int
    tag: str
    path: str          # the result JSON, relative to the eval folder


def _placement(model: str) -> tuple[str, int]:
    match = _ROUND.match(model)
    if match:
        return match["method"], int(match["iteration"])
    return model, 0


def collect_scores(eval_dir: str | Path) -> list[Score]:
    """Every non-skipped result JSON under `eval_dir` (hidden files and folders, and JSONs that are not results,
    are passed over); a result whose value is not a number is an error naming the file."""
    from gsil.aggregate.collect import FRACTION

    eval_dir = Path(eval_dir)
    if not eval_dir.is_dir():
        raise GsilError(f"--eval-dir {eval_dir}: not a folder")
    found = []
    for path in sorted(eval_dir.rglob("*.json")):
        relative = path.relative_to(eval_dir)
        if len(relative.parts) < 2 or any(part.startswith(".") for part in relative.parts):
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise GsilError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(record, dict) or "value" not in record or "metric" not in record:
            log.debug("%s: not an evaluation result; passed over", path)
            continue
        if record.get("skipped"):
            log.info("%s: skipped (%s); not tracked", path, record["skipped"])
            continue
        raw = record["value"]
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(float(raw)):
            raise GsilError(f"{path}: 'value' must be a finite number, got {raw!r}")
        model, benchmark = relative.parent.as_posix(), path.stem
        factor = 100.0 if record.get("scale", FRACTION) == FRACTION else 1.0
        run, step = _placement(model)
        found.append(Score(model=model, benchmark=benchmark, value=float(raw) * factor, raw_value=float(raw),
                           metric=str(record["metric"]), run=run, step=step, tag=f"{TAG_PREFIX}{benchmark}",
                           path=relative.as_posix()))
    seen: dict[tuple[str, str, int], str] = {}
    for score in found:
        other = seen.setdefault((score.run, score.tag, score.step), score.model)
        if other != score.model:  # e.g. a model `spin` beside `spin/iter0`: one run per model instead
            log.warning("models %s and %s would share run %s step %d; every model gets its own run", other,
                        score.model, score.run, score.step)
            return [Score(**{**asdict(s), "run": s.model, "step": 0}) for s in found]
    return found


def write_scores(eval_dir: str | Path, tracking_dir: str | Path) -> list[Score]:
    """Write every score of `eval_dir` to TensorBoard event files in `tracking_dir` (replaced whole); return them."""
    from torch.utils.tensorboard import SummaryWriter

    from gsil.io import atomic_path, write_json

    tracking_dir = Path(tracking_dir)
    if tracking_dir.exists() and (not tracking_dir.is_dir() or (any(tracking_dir.iterdir())
                                                                and not (tracking_dir / MANIFEST).is_file())):
        raise GsilError(f"--tracking-dir {tracking_dir}: exists and was not written by track-scores (no {MANIFEST});"
                        f" it would be replaced whole, so give a folder of its own (e.g. <run>/tracking/eval)")
    scores = collect_scores(eval_dir)
    with atomic_path(tracking_dir, is_dir=True) as tmp:
        for run in sorted({score.run for score in scores}):
            with SummaryWriter(log_dir=str(tmp / run)) as writer:
                for score in (s for s in scores if s.run == run):
                    writer.add_scalar(score.tag, score.value, global_step=score.step)
        write_json(tmp / MANIFEST, {"eval_dir": str(eval_dir), "scores": [asdict(s) for s in scores]})
    log.info("%d scores of %d models written to %s", len(scores), len({s.model for s in scores}), tracking_dir)
    return scores


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--eval-dir", required=True, help="a run's eval folder (<run>/eval/<model>/<benchmark>.json)")
    parser.add_argument("--tracking-dir", required=True,
                        help="TensorBoard folder for the scores, replaced whole (e.g. <run>/tracking/eval)")


def run(args: argparse.Namespace) -> int:
    from gsil.logutil import setup_logging

    setup_logging("track-scores")
    write_scores(args.eval_dir, args.tracking_dir)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m gsil.tracking_scores ...` (the same as `gsil track-scores ...`)."""
    import sys

    parser = argparse.ArgumentParser(prog="gsil track-scores", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except GsilError as err:
        print(f"gsil track-scores: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
