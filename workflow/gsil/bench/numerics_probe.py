"""Which part of the forward moves the reference log-probs: one set of pairs scored every way the device can run it.

Why it exists: on an H200 under the ZeRO-3 launch, the reference scored the check's pairs about 2 nats per sequence
away from what the policy computed at its first step on the same weights, while the policy agreed with the CPU
(docs/measurements/2026-11-30-h200/README.md). Δ then starts off zero, which shifts `rewards/real`, the quantity of
the paper's Figure 2. GPU time is scarce, so `gsil check-gpu` runs this probe once plainly and once under the ZeRO-3
launch, and one run says which factor matters.

The probe scores the same pairs in one process with the suite's own functions, once per *variant*: the reference as
`gsil reference-logps` runs it; the policy's first forward as `gsil align` runs it (train mode, gradients on,
shuffled batches); and the reference with one thing changed (one pair per batch, i.e. no padding; the other
attention implementation; each SDPA backend; the separate pair layout; the other log-prob path; full-precision bf16
reductions; rotary frequencies rounded to bf16, as DeepSpeed's engine cast leaves them). Each is compared with a
truth computed in float32 with eager attention, one pair at a time.
`reference_minus_policy` is the mean gap, in nats per sequence, that Δ would start at: what `gsil check-gpu` judges.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

from gsil.logutil import GsilError, setup_logging
from gsil.modeling import ATTENTION_CHOICES
from gsil.training.numerics import ENGINES, start_gap

CORE_VARIANTS = ("reference", "policy-step")  # the gap is between these two; every other one may be unavailable
SDPA_BACKENDS = {"math": "MATH", "efficient": "EFFICIENT_ATTENTION", "flash": "FLASH_ATTENTION",
                 "cudnn": "CUDNN_ATTENTION"}


@dataclass(frozen=True)
class Variant:
    """One way of computing the log-probs; every field left at its default is what the reference stage does."""

    name: str
    what: str
    batching: str = "reference"  # "reference": sorted batches of --batch-size; "one pair"; "policy": align's
    attention: str | None = None  # None: the suite's resolved implementation
    sdpa_backend: str | None = None  # a key of SDPA_BACKENDS, or None for torch's own choice
    layout: str | None = None  # None: the suite's layout
    other_logps_path: bool = False  # the full-logits path where the suite takes the head path, and back
    bf16_reductions_in_fp32: bool = False  # cuBLAS: no reduced-precision reductions for bf16 GEMMs (CUDA only)
    rope_in_bf16: bool = False  # rotary inverse frequencies rounded to bf16, as DeepSpeed's engine cast leaves them


def other_attention(attention: str) -> str:
    """The implementation compared with the suite's: eager against any fused one, sdpa against eager."""
    return "eager" if attention != "eager" else "sdpa"


def variants_for(*, attention: str, layout: str, cuda: bool) -> list[Variant]:
    """The variants that make sense for a run whose reference uses `attention` and `layout`."""
    other = other_attention(attention)
    found = [
        Variant("reference", "as gsil reference-logps scores: length-sorted batches, inference mode"),
        Variant("policy-step", "as gsil align's first forward: train mode, gradients on, shuffled batches",
                batching="policy"),
        Variant("one-pair-batches", "the reference with one pair per batch (no padding)", batching="one pair"),
        Variant(f"attention-{other}", f"the reference with {other} attention", attention=other),
    ]
    if attention == "sdpa":
        found += [Variant(f"sdpa-{backend}", f"the reference with SDPA held to its {backend} backend",
                          sdpa_backend=backend) for backend in SDPA_BACKENDS]
    if layout == "shared-prompt":
        found.append(Variant("separate-layout", "the reference with each response a row of its own",
                             layout="separate"))
    found.append(Variant("other-logps-path", "the reference through the other log-prob path (head / full logits)",
                         other_logps_path=True))
    found.append(Variant("rope-bf16", "the reference with its rotary frequencies in bf16, as DeepSpeed's engine cast "
                                      "leaves them unless training restores them", rope_in_bf16=True))
    if cuda:
        found.append(Variant("fp32-bf16-reductions", "the reference with cuBLAS's reduced-precision bf16 "
                                                     "reductions off", bf16_reductions_in_fp32=True))
    return found


def compare(values: Sequence[float], truth: Sequence[float]) -> dict:
    """Mean signed and largest absolute difference (nats per sequence) of `values` from `truth`."""
    gap = start_gap(values, truth)
    return {"bias": gap["mean"], "max_abs": gap["max_abs"], "n": gap["n"]}


def mean_gap(values: Sequence[float], other: Sequence[float]) -> float:
    """Mean of values − other: the offset Δ starts at when `values` is the reference and `other` the policy."""
    return start_gap(values, other)["mean"]


# ---------------------------------------------------------------------------------------------------- scoring


@contextlib.contextmanager
def _kernel_settings(variant: Variant, device_type: str):
    import torch

    with contextlib.ExitStack() as stack:
        if variant.sdpa_backend:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            stack.enter_context(sdpa_kernel(getattr(SDPBackend, SDPA_BACKENDS[variant.sdpa_backend])))
        if variant.bf16_reductions_in_fp32 and device_type == "cuda":
            matmul = torch.backends.cuda.matmul
            before = matmul.allow_bf16_reduced_precision_reduction
            matmul.allow_bf16_reduced_precision_reduction = False
            stack.callback(setattr, matmul, "allow_bf16_reduced_precision_reduction", before)
        yield


@contextlib.contextmanager
def _rope_frequencies_in_bf16(model, enabled: bool):
    """The rotary frequencies rounded to bf16 for the block, then recomputed in float32."""
    if not enabled:
        yield
        return
    import torch

    from gsil.modeling import keep_rope_float32, rotary_modules

    for module in rotary_modules(model):
        module.inv_freq = module.inv_freq.to(torch.bfloat16)
    try:
        yield
    finally:
        keep_rope_float32(model)


def _flatten(rows: list[dict]) -> list[float]:
    return [row["positive"] for row in rows] + [row["negative"] for row in rows]


def score_reference_way(model, examples, *, pad_token_id: int, batch_size: int, precision: str, full_logits: bool,
                        layout: str) -> list[float]:
    """[positives; negatives] as gsil reference-logps computes them."""
    from gsil.training.scoring import score_pairs

    rows = score_pairs(model, examples, pad_token_id=pad_token_id, batch_size=batch_size, precision=precision,
                       full_logits=full_logits, layout=layout, progress=False)
    return _flatten(rows)


def score_policy_way(model, examples, *, pad_token_id: int, global_batch: int, precision: str, full_logits: bool,
                     layout: str, seed: int = 0) -> list[float]:
    """[positives; negatives] as gsil align's forward computes them: the training objective's own log-prob call on
    shuffled batches, in train mode with gradients on (no step is taken)."""
    import torch

    from gsil.training.objectives import PairObjective
    from gsil.training.scoring import autocast_context

    for ex in examples:  # collate carries the reference values; they play no part here
        ex.reference_positive = ex.reference_negative = 0.0
    objective = PairObjective("logistic", beta=0.1, gamma=0.0, pad_token_id=pad_token_id, full_logits=full_logits,
                              layout=layout)
    device = next(model.parameters()).device
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    positive, negative = [0.0] * len(examples), [0.0] * len(examples)
    was_training = model.training
    model.train()
    try:
        with torch.enable_grad():
            for start in range(0, len(order), global_batch):
                chunk = order[start:start + global_batch]
                batch = _to_device(objective.collate([examples[i] for i in chunk]), device)
                with autocast_context(precision, device):
                    pos, neg = objective.policy_logps(model, batch)
                for i, p, n in zip(chunk, pos.detach().float().tolist(), neg.detach().float().tolist()):
                    positive[i], negative[i] = p, n
                model.zero_grad(set_to_none=True)
    finally:
        model.train(was_training)
    return positive + negative


def _to_device(batch: dict, device) -> dict:
    return {key: value.to(device) if hasattr(value, "to") else value for key, value in batch.items()}


def run_variant(variant: Variant, models: dict, examples, *, suite: dict, batch_size: int, global_batch: int,
                device_type: str) -> list[float]:
    model = models[variant.attention or suite["attention"]]
    full_logits = suite["full_logits"] != variant.other_logps_path
    layout = variant.layout or suite["layout"]
    common = {"pad_token_id": suite["pad_token_id"], "precision": suite["autocast"], "full_logits": full_logits,
              "layout": layout}
    with _kernel_settings(variant, device_type), _rope_frequencies_in_bf16(model, variant.rope_in_bf16):
        if variant.batching == "policy":
            return score_policy_way(model, examples, global_batch=global_batch, **common)
        size = 2 if variant.batching == "one pair" else batch_size  # score_pairs counts sequences: 2 per pair
        return score_reference_way(model, examples, batch_size=size, **common)


# ---------------------------------------------------------------------------------------------------- the stage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="the model both sides start from (HF checkpoint folder)")
    parser.add_argument("--pairs", required=True, help="pair file (selfplay or preference records)")
    parser.add_argument("--kind", default="selfplay", choices=("selfplay", "preference"))
    parser.add_argument("--output", required=True, help="the probe's report (JSON)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-prompt-length", type=int, default=256)
    parser.add_argument("--template", choices=("chat", "spin"), default="chat")
    parser.add_argument("--batch-size", type=int, default=16, help="the reference's sequences per forward pass")
    parser.add_argument("--global-batch", type=int, default=8, help="the policy's pairs per forward pass")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--max-pairs", type=int, default=64, help="score at most this many pairs")
    parser.add_argument("--attention", choices=ATTENTION_CHOICES, default="auto",
                        help="the suite's attention implementation (auto: as the stages resolve it)")
    parser.add_argument("--numerics-of", choices=("launch", *ENGINES), default="launch",
                        help="whose numerics the suite's side uses: the launch's engine, or a named engine's "
                             "without launching it (deepspeed: bf16 weights, no autocast)")


def run(args: argparse.Namespace) -> dict:
    import torch

    from gsil.io import write_json
    from gsil.launch import launch_engine, process_state
    from gsil.modeling import choose_pair_layout, load_model_for_training, load_tokenizer, resolve_attention
    from gsil.records import as_pairs, read_records
    from gsil.training.examples import encode_pairs, tokenization_settings
    from gsil.training.numerics import expected_numerics

    log = setup_logging("numerics_probe")
    if args.batch_size < 2 or args.global_batch < 1 or args.max_pairs < 1:
        raise GsilError("--batch-size must be >= 2, --global-batch and --max-pairs >= 1")
    state = process_state()  # as the reference stage: under a DeepSpeed launch this initialises DeepSpeed
    device = state.device
    engine = launch_engine() if args.numerics_of == "launch" else args.numerics_of
    numerics = expected_numerics(args.precision, engine)
    tokenizer = load_tokenizer(args.model)
    pairs = as_pairs(read_records(args.pairs, args.kind), args.kind)[: args.max_pairs]
    examples, _ = encode_pairs(pairs, tokenizer, validate=False, skip_empty=True,
                               **tokenization_settings(args.max_length, args.max_prompt_length, args.template))
    if not examples:
        raise GsilError(f"{args.pairs}: no pair with two non-empty responses to score")
    attention = resolve_attention(args.attention, args.max_length, cuda=device.type == "cuda")

    def load(implementation: str, dtype):
        model, _ = load_model_for_training(args.model, implementation, args.max_length, log, dtype=dtype)
        model.config.use_cache = False
        return model.to(device)

    truth_model = load("eager", torch.float32)
    truth = score_reference_way(truth_model, examples, pad_token_id=tokenizer.pad_token_id, batch_size=2,
                                precision="fp32", full_logits=False, layout="separate")
    del truth_model
    models = {attention: load(attention, numerics.torch_dtype())}
    other = other_attention(attention)
    models[other] = load(other, numerics.torch_dtype())
    suite = {"attention": attention, "layout": choose_pair_layout(models[attention], "auto", log),
             "full_logits": engine in ("deepspeed", "fsdp"), "autocast": "bf16" if numerics.autocast_dtype else "fp32",
             "pad_token_id": tokenizer.pad_token_id}
    log.info("%d pairs on %s; numerics %s; suite attention %s, layout %s, full logits %s", len(examples), device,
             numerics.describe(), attention, suite["layout"], suite["full_logits"])
    results, values = [], {}
    for variant in variants_for(attention=attention, layout=suite["layout"], cuda=device.type == "cuda"):
        started = time.perf_counter()
        entry = {"name": variant.name, "what": variant.what}
        try:
            values[variant.name] = run_variant(variant, models, examples, suite=suite, batch_size=args.batch_size,
                                               global_batch=args.global_batch, device_type=device.type)
        except Exception as err:  # noqa: BLE001 - a backend that cannot run this shape or device: say so, go on
            if variant.name in CORE_VARIANTS:
                raise
            entry.update(status="unavailable", error=f"{type(err).__name__}: {str(err).splitlines()[0][:300]}")
        else:
            figures = compare(values[variant.name], truth)
            entry.update(status="ran", **{k: _rounded(v) for k, v in figures.items()})
        entry["seconds"] = round(time.perf_counter() - started, 3)
        log.info("%-22s %s", variant.name, {k: v for k, v in entry.items() if k not in ("name", "what")})
        results.append(entry)
    gap = mean_gap(values["reference"], values["policy-step"])
    report = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
              else None, "engine": engine, "launched_engine": launch_engine(), "numerics": numerics.to_dict(),
              "attention": attention, "layout": suite["layout"], "full_logits": suite["full_logits"], "pairs": len(examples),
              "sequences": 2 * len(examples), "batch_size": args.batch_size, "global_batch": args.global_batch,
              "truth": "float32 weights, no autocast, eager attention, one pair per batch, separate rows",
              "truth_mean_logp": _rounded(sum(truth) / len(truth)), "reference_minus_policy": _rounded(gap),
              "torch": torch.__version__, "variants": results}
    log.info("reference − policy at step 0: %.4f nats per sequence", gap)
    if state.is_main_process:
        write_json(args.output, report)
    return report


def _rounded(value: float, digits: int = 5) -> float:
    return round(value, digits) if isinstance(value, float) and math.isfinite(value) else value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gsil.bench.numerics_probe", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run(args)
    except GsilError as err:
        parser.exit(1, f"{parser.prog}: error: {err}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
