"""`gsil align`: pairwise training for SPIN, every GSIL loss and DPO, with precomputed reference log-probs.

The loss is looked up by name once; the reference file is checked against the pair file (sha256, ids,
tokenization settings, token counts) before any training starts.
"""

from __future__ import annotations

import argparse

from gsil.logutil import GsilError, setup_logging
from gsil.modeling import add_pair_layout_argument
from gsil.training.numerics import START_GAPS
from gsil.training.settings import TrainSettings, add_training_arguments, settings_from_args

# The official GSIL script: RMSprop, lr 5e-7, linear with 10% warmup, 1 epoch, global batch 128.
ALIGN_DEFAULTS = TrainSettings(lr=5e-7, lr_scheduler="linear", warmup_ratio=0.1, optimizer="rmsprop", epochs=1,
                               global_batch_size=128)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="the model to start from (model_t); also the reference")
    parser.add_argument("--pairs", required=True, help="pair file (selfplay or preference records)")
    parser.add_argument("--kind", required=True, choices=("selfplay", "preference"))
    parser.add_argument("--reference", required=True, help="reference rows from `gsil reference-logps`")
    parser.add_argument("--loss", required=True, help="loss registry key (gsil.losses.LOSSES)")
    parser.add_argument("--beta", type=float, required=True, help="scale of the log-ratio")
    parser.add_argument("--gamma", type=float, default=0.0, help="shift of the log-ratio (GSIL; ignored by spin/dpo)")
    parser.add_argument("--output", required=True, help="folder of the trained model")
    parser.add_argument("--metrics", required=True, help="per-step metrics (.jsonl)")
    parser.add_argument("--drop-identical-pairs", action="store_true",
                        help="leave out pairs whose two responses are equal after whitespace normalisation (counted)")
    parser.add_argument("--skip-empty-responses", action="store_true",
                        help="count and leave out pairs with an empty response instead of failing")
    parser.add_argument("--numerics-mismatch", choices=("error", "warn"), default="error",
                        help="a reference scored with other numerics (weights dtype, autocast) than this run's policy "
                             "makes Δ start away from 0: refuse (default) or only warn")
    parser.add_argument("--start-gap", choices=START_GAPS, default="warn",
                        help="the first step's forward uses the starting weights, which the reference scored: when "
                             "the policy's log-probs there are off the reference's by more than rounding, warn "
                             "(default), fail, or do not check (off); the gap is logged in the first metrics row")
    parser.add_argument("--full-logits", action="store_true",
                        help="compute the output head on every position (needed under ZeRO-3 / FSDP sharding)")
    add_pair_layout_argument(parser)
    add_training_arguments(parser, ALIGN_DEFAULTS)


def run(args: argparse.Namespace) -> int:
    from gsil.io import read_json
    from gsil.losses import get_loss
    from gsil.modeling import choose_pair_layout, load_model_for_training, load_tokenizer
    from gsil.records import PAIR_FIELDS, as_pairs, file_sha256, read_records
    from gsil.training.examples import encode_pairs, tokenization_settings
    from gsil.training.loop import make_training_accelerator, train
    from gsil.training.numerics import (engine_from_distributed_type, expected_numerics, numerics_from_meta,
                                        training_load_dtype)
    from gsil.training.objectives import PairObjective
    from gsil.training.reference import attach_reference, check_reference_meta, meta_path_for

    log = setup_logging("align")
    settings = settings_from_args(args)
    try:
        get_loss(args.loss)
    except ValueError as err:
        raise GsilError(f"--loss: {err}") from None

    # Everything about the inputs is checked before the model is loaded.
    pairs = as_pairs(read_records(args.pairs, args.kind), args.kind)
    meta_path = meta_path_for(args.reference)
    try:
        meta = read_json(meta_path)
    except FileNotFoundError:
        raise GsilError(f"{meta_path} is missing: the reference file {args.reference} has no metadata; "
                        f"rerun gsil reference-logps") from None
    tokenization = tokenization_settings(settings.max_length, settings.max_prompt_length, settings.template)
    check_reference_meta(meta, reference_path=args.reference, pairs_path=args.pairs,
                         pairs_sha256=file_sha256(args.pairs), kind=args.kind, tokenization=tokenization,
                         ids=[p.id for p in pairs])
    reference_rows = read_records(args.reference, "reference")
    accelerator, _ = make_training_accelerator(settings)  # before the model: see make_training_accelerator
    policy = expected_numerics(settings.precision, engine_from_distributed_type(accelerator.distributed_type))
    reference = numerics_from_meta(meta)
    if reference is None or reference.values_key != policy.values_key:
        message = (f"{meta_path}: the reference log-probs were computed with "
                   f"{reference.describe() if reference else 'unrecorded numerics'}, but the policy trains with "
                   f"{policy.describe()}, so Δ would start at their rounding gap instead of 0. Score the reference "
                   f"with the policy's --precision and under the same accelerate config (the workflow profile's "
                   f"accelerate_config of reference_logps and the align rules)")
        if "auto" in (meta.get("precision_requested"), settings.precision_requested):
            message += (f". --precision auto resolves on the machine that runs each stage: the reference's to "
                        f"{meta.get('precision')}, this run's to {settings.precision}; run both on the same kind of "
                        f"machine or give bf16/fp32")
        if args.numerics_mismatch == "error":
            raise GsilError(message)
        log.warning("%s", message)

    tokenizer = load_tokenizer(args.model)
    examples, stats = encode_pairs(pairs, tokenizer, drop_identical=args.drop_identical_pairs,
                                   skip_empty=args.skip_empty_responses, names=PAIR_FIELDS[args.kind],
                                   **tokenization)
    attach_reference(examples, reference_rows, reference_path=args.reference)
    log.info("%s pairs: %d read, %d kept, %d identical dropped%s, %d empty skipped, %d truncated", args.kind,
             len(pairs), stats.examples, stats.dropped_identical,
             "" if args.drop_identical_pairs else " (--drop-identical-pairs off)", stats.skipped_empty,
             stats.truncated)

    model, attention = load_model_for_training(args.model, settings.attention, settings.max_length, log,
                                               dtype=training_load_dtype(accelerator, settings))
    layout = choose_pair_layout(model, args.pair_layout, log)
    for key, value in (("pair_layout", layout), ("attention_implementation", attention)):
        if meta.get(key) != value:
            log.warning("reference log-probs were computed with %s=%s but the policy trains with %s: Δ will start "
                        "at the float-rounding gap between the two, not at 0", key, meta.get(key), value)
    objective = PairObjective(args.loss, beta=args.beta, gamma=args.gamma, pad_token_id=tokenizer.pad_token_id,
                              full_logits=args.full_logits, layout=layout, kind=args.kind,
                              start_gap=args.start_gap, reference_path=args.reference)
    run_settings = {**{k: v for k, v in vars(args).items() if not k.startswith("_")}, **settings.to_dict()}
    result = train(model=model, tokenizer=tokenizer, objective=objective, examples=examples, settings=settings,
                   output=args.output, metrics_path=args.metrics, run_settings=run_settings, accelerator=accelerator,
                   config_extra={"stage": "align", "loss": args.loss, "beta": args.beta, "gamma": args.gamma,
                                 "kind": args.kind, "pairs": args.pairs, "reference": args.reference,
                                 "reference_precision": meta.get("precision"),
                                 "reference_precision_requested": meta.get("precision_requested"),
                                 "reference_numerics": reference.to_dict() if reference else None,
                                 "pair_layout": layout, "attention_implementation": attention,
                                 "counts": stats.as_dict()})
    if accelerator.is_main_process and not result.stopped_early:
        from gsil.modelcard import write_training_card

        write_training_card(args.output)  # README.md: Hugging Face model card (metadata, command, data sha256)
    return 0
