"""The `gsil` command: one sub-command per workflow stage.

Stage modules are imported only when their sub-command runs, so `gsil --help` and light stages stay fast
(torch, transformers and lm-eval take seconds to import).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from gsil.logutil import GsilError

# sub-command -> (module under gsil.stages, one-line help)
STAGES: dict[str, tuple[str, str]] = {
    "prepare-model": ("prepare_model", "materialise the base model as an ordinary HF checkpoint"),
    "prepare-data": ("prepare_data", "build demonstrations, prompts, preferences and eval sets"),
    "sft": ("sft", "supervised fine-tuning on demonstrations (response-only loss)"),
    "generate": ("generate", "responses of a model to the self-play prompts"),
    "reference-logps": ("reference_logps", "summed response log-probs of a frozen model on a pair set"),
    "align": ("align", "pairwise training: SPIN, every GSIL loss, DPO"),
    "track-scores": ("track_scores", "every evaluation score of a run as TensorBoard scalars"),
    "model-card": ("model_card", "a trained model's Hugging Face card with its scores, written outside the model folder"),
    "evaluate": ("evaluate", "score one model on one or more benchmarks, in one process"),
    "compare-claims": ("compare_claims", "whether the claims' verdicts of several runs agree (e.g. two data seeds)"),
    "aggregate": ("aggregate", "tables and figures from the result files"),
    "paper-figures": ("paper_figures", "the paper's Figures 1 (SFT vs GSIL, 1-D toy) and 10 (loss shapes), computed"),
    "bench": ("bench", "speed benchmarks against peer tools"),
    "check-gpu": ("check_gpu", "ten-minute acceptance run of the paper's GPU code paths through the stage CLIs"),
    "with-gpus": ("with_gpus", "run a command on GPUs no other job on this node holds (sets CUDA_VISIBLE_DEVICES)"),
    "preflight": ("preflight", "fail-fast checks of a run before any job: Hub data offline, judge, GPUs, disk"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gsil", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="<stage>")
    for name, (module_name, help_text) in STAGES.items():
        stage_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(f"gsil.stages.{module_name}")
            module.add_arguments(stage_parser)
            stage_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in STAGES else None
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if command is None:
        parser.print_help()
        return 2
    try:
        result = args._run(args)
    except GsilError as err:
        print(f"gsil {command}: error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 1)
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
