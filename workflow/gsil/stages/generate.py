"""`gsil generate`: a model's responses to the self-play prompts, as `selfplay` records (id, prompt, real, generated).

Writes FILE (one row per input prompt, same ids, input order) and FILE's sidecar `<FILE minus .jsonl>.meta.json`
(backend, model, template, every sampling setting, counts of empty and max-length generations, tokens/s, run info).
Resumable: shards of --shard-size prompts are kept in `<FILE>.shards/` until the merge. Data parallel over GPUs with
`accelerate launch -m gsil generate ...` (transformers backend); the vllm backend uses --tensor-parallel-size.
"""

from __future__ import annotations

import argparse

# gsil.generation imports torch/transformers only inside functions, so this import stays light.
from gsil.generation import DEFAULT_BATCH_SIZE, DEFAULT_SHARD_SIZE
from gsil.logutil import GsilError, setup_logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model to generate with (HF checkpoint folder)")
    parser.add_argument("--prompts", required=True, help="demonstration records (.jsonl): id, prompt, response")
    parser.add_argument("--output", required=True, help="selfplay records to write (.jsonl)")
    parser.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    parser.add_argument("--template", choices=["chat", "spin"], default="chat",
                        help="chat: the tokenizer's chat template (as in training); spin: SPIN/GSIL's raw "
                             "'### Instruction: ...\\n\\n### Response: ' template")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=None,
                        help="0 = greedy (the default); > 0 samples")
    parser.add_argument("--do-sample", action="store_true",
                        help="sample instead of greedy decoding (temperature 1.0 unless --temperature says otherwise)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (sampling only)")
    parser.add_argument("--seed", type=int, default=0,
                        help="sampling seed; each prompt samples with its own seed derived from this one and its id, "
                             "so resuming or resharding gives the same responses")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="prompts per generate call (transformers backend)")
    parser.add_argument("--max-prompt-length", type=int, default=None,
                        help="keep only the last N prompt tokens (counted in the meta file)")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                        help="prompts per resumable shard (a killed run restarts at the first unfinished shard)")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                        help="auto: bf16 on GPUs and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs per model (vllm backend)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N prompts (smoke runs)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


def sampling_from_args(args: argparse.Namespace):
    from gsil.generation import SamplingSettings

    if args.do_sample:
        temperature = 1.0 if args.temperature is None else args.temperature
        if temperature == 0:
            raise GsilError("--do-sample needs a temperature > 0 (temperature 0 is greedy decoding)")
    else:
        temperature = 0.0 if args.temperature is None else args.temperature
    return SamplingSettings(max_new_tokens=args.max_new_tokens, temperature=temperature, top_p=args.top_p,
                            seed=args.seed)


def config_from_args(args: argparse.Namespace):
    from gsil.generation import GenerateConfig

    return GenerateConfig(
        model=args.model, prompts=args.prompts, output=args.output, backend=args.backend, template=args.template,
        sampling=sampling_from_args(args), batch_size=args.batch_size, max_prompt_length=args.max_prompt_length,
        shard_size=args.shard_size, precision=args.precision, tensor_parallel_size=args.tensor_parallel_size,
        limit=args.limit, progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    import os

    # Demo and tests run offline; a Hub lookup would only hang.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gsil.generation import run_generation

    setup_logging("generate")
    run_generation(config_from_args(args))
    return 0
