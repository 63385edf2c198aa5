"""`gsil paper-figures`: the paper's Figures 1 and 10, computed (gsil.paper_figures).

Figure 10: every registered loss's real-side and generated-side penalty against the log-ratio, at γ = 0 and at
--gamma, by calling the registry. Figure 1: a bimodal 1-D toy fitted by one Gaussian with SFT's objective and with
GSIL's self-imitation loop, and the KL table of the fits. Seconds on a CPU; deterministic for a given --seed.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from gsil.logutil import GsilError, setup_logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", required=True, help="folder for figure10.png, figure1.png, figure1_kl.md|csv, "
                                                            "paper_figures.json and run_info.json")
    parser.add_argument("--beta", type=float, default=0.1,
                        help="β, the scale of the log-ratio (the config's align_defaults.beta; default 0.1)")
    parser.add_argument("--gamma", type=float, default=2.0,
                        help="γ, the shift of the log-ratio (the config's align_defaults.gamma; default 2.0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the toy experiment (default 0)")
    parser.add_argument("--toy-loss", default="logistic", help="registered loss the toy's GSIL loop trains with "
                                                               "(default logistic)")
    parser.add_argument("--rounds", type=int, default=None, help="GSIL rounds of the toy (default: the toy's 20)")


def run(args: argparse.Namespace) -> int:
    from gsil.losses import LOSSES
    from gsil.paper_figures.report import build_all
    from gsil.runinfo import write_run_info

    log = setup_logging("paper-figures")
    if not (math.isfinite(args.beta) and args.beta > 0):
        raise GsilError(f"--beta must be a finite positive number, got {args.beta}")
    if not math.isfinite(args.gamma):
        raise GsilError(f"--gamma must be finite, got {args.gamma}")
    if args.toy_loss not in LOSSES:
        raise GsilError(f"--toy-loss {args.toy_loss!r}: not a registered loss; valid: {', '.join(LOSSES)}")
    if args.rounds is not None and args.rounds < 1:
        raise GsilError(f"--rounds must be at least 1, got {args.rounds}")
    output_dir = Path(args.output_dir)
    started = time.monotonic()
    paths = build_all(output_dir, args.beta, args.gamma, args.seed, args.toy_loss, args.rounds)
    elapsed = time.monotonic() - started
    write_run_info(output_dir / "run_info.json",
                   {"output_dir": str(output_dir), "beta": args.beta, "gamma": args.gamma, "seed": args.seed,
                    "toy_loss": args.toy_loss, "rounds": args.rounds},
                   outputs={key: str(path) for key, path in paths.items()}, seconds=round(elapsed, 2))
    log.info("wrote %s in %.1f s", ", ".join(str(p) for p in paths.values()), elapsed)
    return 0
