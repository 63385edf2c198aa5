"""`gsil reference-logps`: summed response log-probs of a frozen model on every pair of a training set.

Written once per (reference model, pair file) and shared by every method that trains from that model on those
pairs. Output: reference rows (id, positive, negative, positive_tokens, negative_tokens) and `<output>.meta.json`
with the sha256 of the pair file, the ids, the tokenization settings and the numerics, which `gsil align` checks
before training.

Runs on the job's accelerator: one process on its device, or N data-parallel processes under `accelerate launch`
(each scores every N-th pair; rank 0 writes the rows in input order). Launched with the policy's accelerate config
(e.g. ZeRO-3), it does not build that engine (a frozen model needs no sharded optimizer: each process holds the
whole model) but takes its numerics: bf16 weights without autocast under DeepSpeed, as the policy's forward runs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from gsil.generation.settings import PRECISIONS
from gsil.logutil import GsilError, setup_logging
from gsil.modeling import add_attention_argument, add_pair_layout_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="the frozen reference model (HF checkpoint folder)")
    parser.add_argument("--pairs", required=True, help="pair file (selfplay or preference records)")
    parser.add_argument("--kind", required=True, choices=("selfplay", "preference"))
    parser.add_argument("--output", required=True, help="reference rows (.jsonl); the .meta.json goes beside it")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--max-prompt-length", type=int, default=512)
    parser.add_argument("--template", choices=("chat", "spin"), default="chat")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass (default %(default)s)")
    parser.add_argument("--precision", choices=PRECISIONS, default="bf16",
                        help="the precision the policy trains in, so Δ starts at ~0; with the launch's engine it "
                             "fixes the weights' dtype and the autocast (gsil.training.numerics); auto: bf16 where "
                             "this device computes it natively and faster, else fp32, as the policy's auto resolves on the "
                             "same kind of machine (default %(default)s)")
    parser.add_argument("--full-logits", action="store_true",
                        help="compute the output head on every position (needed under ZeRO-3 / FSDP sharding)")
    add_pair_layout_argument(parser)
    add_attention_argument(parser)
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch, shared by this node's processes; 0 keeps torch's default")


def run(args: argparse.Namespace) -> int:
    from gsil.io import write_json
    from gsil.launch import launch_engine, process_state
    from gsil.modeling import choose_pair_layout, load_model_for_training, load_tokenizer, set_cpu_threads
    from gsil.records import as_pairs, file_sha256, read_records, write_records
    from gsil.runinfo import write_run_info
    from gsil.training.examples import encode_pairs, tokenization_settings
    from gsil.training.numerics import expected_numerics
    from gsil.training.reference import ids_digest, meta_path_for
    from gsil.training.scoring import merge_shares, process_share, score_pairs
    from gsil.training.settings import resolve_stage_precision

    log = setup_logging("reference_logps")
    if args.batch_size < 1:
        raise GsilError(f"--batch-size={args.batch_size}: must be >= 1")
    set_cpu_threads(args.threads)
    state = process_state()
    # Resolved once, on this process's device; everything below sees bf16 or fp32 only.
    precision = resolve_stage_precision(args.precision, str(state.device))
    output = Path(args.output)
    tokenization = tokenization_settings(args.max_length, args.max_prompt_length, args.template)
    pairs = as_pairs(read_records(args.pairs, args.kind), args.kind)
    pairs_sha256 = file_sha256(args.pairs)
    tokenizer = load_tokenizer(args.model)
    examples, stats = encode_pairs(pairs, tokenizer, validate=False, **tokenization)
    engine = launch_engine()
    numerics = expected_numerics(precision, engine)
    # Under a sharding engine the policy's log-probs take the full-logits path (the head's weight only exists inside
    # the forward there); the reference takes the same one, so the two differ by nothing but the weights.
    full_logits = args.full_logits or engine in ("deepspeed", "fsdp")
    # The same attention implementation as the policy's training run, which resolves --attention the same way.
    model, attention = load_model_for_training(args.model, args.attention, args.max_length, log,
                                               dtype=numerics.torch_dtype())
    model.config.use_cache = False
    model.to(state.device)
    layout = choose_pair_layout(model, args.pair_layout, log)
    share = process_share(len(examples), state.process_index, state.num_processes)
    log.info("process %d of %d on %s scores %d of %d pairs; numerics: %s", state.process_index + 1,
             state.num_processes, state.device, len(share), len(examples), numerics.describe())
    started = time.perf_counter()
    share_rows = score_pairs(model, [examples[i] for i in share], pad_token_id=tokenizer.pad_token_id,
                             batch_size=args.batch_size, precision="bf16" if numerics.autocast_dtype else "fp32",
                             full_logits=full_logits, layout=layout, progress=state.is_local_main_process)
    rows = merge_shares(len(examples), _gather(state, (share, share_rows)))
    seconds = time.perf_counter() - started
    tokens = sum(len(ex.positive.input_ids) + len(ex.negative.input_ids) for ex in examples)
    log.info("scored %d pairs (%d tokens) in %.1f s (%.0f tokens/s over %d process(es))", len(rows), tokens, seconds,
             tokens / seconds if seconds else float("nan"), state.num_processes)
    if state.is_main_process:
        meta = {
            "model": str(args.model),
            "pairs": str(args.pairs),
            "pairs_sha256": pairs_sha256,
            "kind": args.kind,
            "tokenization": tokenization,
            "precision": precision,
            "precision_requested": args.precision,
            "numerics": numerics.to_dict(),
            "pair_layout": layout,
            "attention_implementation": attention,
            "full_logits": full_logits,
            "processes": state.num_processes,
            "device": str(state.device.type),
            "rows": len(rows),
            "ids_sha256": ids_digest([row["id"] for row in rows]),
            "empty_responses": sum(bool(ex.positive.empty_response or ex.negative.empty_response)
                                   for ex in examples),
            "truncated_pairs": stats.truncated,
            "seconds": round(seconds, 3),
        }
        # The sidecar first: the rows file is the stage's declared output, so it appears last.
        write_json(meta_path_for(output), meta)
        write_records(output, rows, "reference")
        write_run_info(output.with_name(output.name + ".run_info.json"),
                       {**vars_for_record(args), "precision": precision, "precision_requested": args.precision},
                       rows=len(rows))
    state.wait_for_everyone()
    return 0


def _gather(state, share: tuple) -> list[tuple]:
    """Every process's (indices, rows); the identity in a single process."""
    if state.num_processes == 1:
        return [share]
    import torch.distributed as dist

    gathered: list = [None] * state.num_processes
    dist.all_gather_object(gathered, share)
    return gathered


def vars_for_record(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if not k.startswith("_")}
