"""`gsil sft`: supervised fine-tuning on demonstrations (token-mean NLL of the responses, prompt tokens masked)."""

from __future__ import annotations

import argparse

from gsil.logutil import setup_logging
from gsil.training.settings import TrainSettings, add_training_arguments, settings_from_args

# zephyr-7b-sft-full's recipe (alignment-handbook): AdamW, lr 2e-5, cosine, 10% warmup, 1 epoch, global batch 128.
SFT_DEFAULTS = TrainSettings(lr=2e-5, lr_scheduler="cosine", warmup_ratio=0.1, optimizer="adamw", epochs=1,
                             global_batch_size=128)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="base model (HF checkpoint folder)")
    parser.add_argument("--data", required=True, help="demonstration records (.jsonl)")
    parser.add_argument("--output", required=True, help="folder of the fine-tuned model")
    parser.add_argument("--metrics", required=True, help="per-step metrics (.jsonl)")
    parser.add_argument("--skip-empty-responses", action="store_true",
                        help="count and leave out demonstrations with an empty response instead of failing")
    add_training_arguments(parser, SFT_DEFAULTS)


def run(args: argparse.Namespace) -> int:
    from gsil.modeling import load_model_for_training, load_tokenizer
    from gsil.training.numerics import training_load_dtype
    from gsil.records import read_records
    from gsil.training.examples import encode_demonstrations
    from gsil.training.loop import make_training_accelerator, train
    from gsil.training.objectives import SFTObjective

    log = setup_logging("sft")
    settings = settings_from_args(args)
    rows = read_records(args.data, "demonstration")
    tokenizer = load_tokenizer(args.model)
    examples, stats = encode_demonstrations(rows, tokenizer, max_length=settings.max_length,
                                            max_prompt_length=settings.max_prompt_length, template=settings.template,
                                            skip_empty=args.skip_empty_responses)
    log.info("demonstrations: %d read, %d kept, %d truncated, %d empty skipped", len(rows), stats.examples,
             stats.truncated, stats.skipped_empty)
    accelerator, _ = make_training_accelerator(settings)  # before the model: see make_training_accelerator
    model, attention = load_model_for_training(args.model, settings.attention, settings.max_length, log,
                                               dtype=training_load_dtype(accelerator, settings))
    run_settings = {**{k: v for k, v in vars(args).items() if not k.startswith("_")}, **settings.to_dict()}
    result = train(model=model, tokenizer=tokenizer, objective=SFTObjective(pad_token_id=tokenizer.pad_token_id),
                   examples=examples, settings=settings, output=args.output, metrics_path=args.metrics,
                   run_settings=run_settings, accelerator=accelerator,
                   config_extra={"stage": "sft", "data": args.data, "attention_implementation": attention,
                                 "counts": stats.as_dict()})
    if accelerator.is_main_process and not result.stopped_early:
        from gsil.modelcard import write_training_card

        write_training_card(args.output)  # README.md: Hugging Face model card (metadata, command, data sha256)
    return 0
