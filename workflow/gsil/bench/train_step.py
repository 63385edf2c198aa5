"""Optimizer-step throughput of `gsil align` against TRL's DPOTrainer, side by side, on the same model and pairs.

Setup (the issue's): a randomly initialised model of the demo model's shape (SmolLM2-135M: hidden 576, 30 layers,
9 heads, 3 KV heads, MLP 1536, vocab 49152, tied embeddings), pairs of about 130 tokens per sequence, 4 pairs per
optimizer step, bf16 autocast over fp32 weights on both sides, RMSprop, SPIN's loss (TRL's "sigmoid").

Each contender runs in its own subprocess so its peak RSS is its own:
  * `gsil`: the reference pass over all pairs (timed, amortised per step), then `gsil.training.loop.train`, in the
    pair layout `gsil align` picks for this model (shared-prompt: one packed row per pair, the prompt run once);
  * `gsil-separate`: the same with `--pair-layout separate` (both sequences padded in their own rows), to show
    what the packing is worth;
  * `trl`: DPOTrainer with its reference model in memory (a reference forward inside every step);
  * `trl-precompute`: DPOTrainer with `precompute_ref_log_probs=True` (timed, amortised per step);
  * `trl-no-ckpt`, `trl-precompute-no-ckpt`: the same with `gradient_checkpointing=False`. TRL 1.x turns gradient
    checkpointing on by default (its DPOConfig), which recomputes the forward during the backward; ours is off, so
    these are TRL's fastest settings here (at a higher peak memory).
The first `warmup` steps of each run are not timed (one-off allocation and kernel selection). Per-step time =
median step wall time + reference seconds / steps. The figures are noisy when other work shares the CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEMO_SHAPE = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
              "intermediate_size": 1536, "vocab_size": 49152, "tie_word_embeddings": True}
CONTENDERS = ("gsil", "gsil-separate", "trl", "trl-precompute", "trl-no-ckpt", "trl-precompute-no-ckpt")
WORDS = ("apples", "baskets", "each", "holds", "more", "than", "how", "many", "total", "after", "gives", "away",
         "twice", "half", "the", "farmer", "sells", "buys", "price", "dollars", "week", "days", "students", "books")


# ------------------------------------------------------------------------------------------------ fixtures


def make_pairs(tokenizer, n: int, *, prompt_tokens: int = 60, response_tokens: int = 70, seed: int = 0) -> list[dict]:
    """Text pairs whose sequences are about prompt_tokens + response_tokens long (lengths jitter by ±15%)."""
    rng = random.Random(seed)

    def text(target: int) -> str:
        words = []
        while len(tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) < target:
            words.extend(rng.choice(WORDS) for _ in range(4))
        return " ".join(words)

    jitter = lambda t: max(8, int(t * rng.uniform(0.85, 1.15)))  # noqa: E731
    return [{"id": f"bench-{i}", "prompt": text(jitter(prompt_tokens)), "chosen": " " + text(jitter(response_tokens)),
             "rejected": " " + text(jitter(response_tokens))} for i in range(n)]


def build_fixture(folder: Path, *, n_pairs: int, seed: int = 0) -> tuple[Path, Path]:
    """A random demo-shape model (saved, so TRL can build its reference from the path) and the pairs file."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from gsil.modeling import smollm2_tokenizer

    tokenizer = smollm2_tokenizer()
    model_dir = folder / "model"
    config = LlamaConfig(**DEMO_SHAPE, max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    del model
    pairs_path = folder / "pairs.json"
    pairs_path.write_text(json.dumps(make_pairs(tokenizer, n_pairs, seed=seed)))
    return model_dir, pairs_path


# ------------------------------------------------------------------------------------------------ workers


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def _encode_like_trl(tokenizer, prompt: str, response: str):
    """Prompt ids + response ids + EOS, prompt masked: the tokens TRL's DPOTrainer scores for a text pair."""
    from gsil.tokenization import IGNORE_INDEX, Encoded

    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return Encoded(input_ids=prompt_ids + response_ids, labels=[IGNORE_INDEX] * len(prompt_ids) + response_ids,
                   prompt_length=len(prompt_ids), prompt_truncated=False, response_truncated=False,
                   empty_response=False)


def _matmul_parameters(model) -> dict:
    """Weights of the body's linear layers (they run on every position) and of the output head (it runs on the
    scored positions only), for the FLOP count of `gsil bench flops`."""
    from torch import nn

    head = model.get_output_embeddings()
    body = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear) and m is not head)
    return {"body_linear_parameters": body, "head_parameters": head.weight.numel()}


def worker_gsil(model_dir: str, pairs: list[dict], *, steps: int, batch: int, warmup: int, threads: int,
                layout: str = "auto") -> dict:
    import torch

    from gsil.modeling import load_model_for_training, load_tokenizer, resolve_pair_layout
    from gsil.records import as_pairs
    from gsil.training.data import PairExample, response_token_count
    from gsil.training.loop import TrainHooks, train
    from gsil.training.objectives import PairObjective
    from gsil.training.scoring import score_pairs
    from gsil.training.settings import TrainSettings

    if threads:
        torch.set_num_threads(threads)
    settings = TrainSettings(lr=5e-7, optimizer="rmsprop", lr_scheduler="linear", warmup_ratio=0.1,
                             global_batch_size=batch, max_steps=steps, checkpoint_every=0, resume="never",
                             max_length=512, max_prompt_length=256, precision="bf16")
    tokenizer = load_tokenizer(model_dir)
    # What `gsil align` loads for these settings (the pairs are built untruncated, well under max_length).
    model, attention = load_model_for_training(model_dir, settings.attention, settings.max_length,
                                               logging.getLogger("gsil.bench"))
    model.config.use_cache = False
    layout, _ = resolve_pair_layout(model, layout)
    examples = [PairExample(pair.id, _encode_like_trl(tokenizer, pair.prompt, pair.positive),
                            _encode_like_trl(tokenizer, pair.prompt, pair.negative))
                for pair in as_pairs(pairs, "preference")]
    started = time.perf_counter()
    rows = score_pairs(model, examples, pad_token_id=tokenizer.pad_token_id, batch_size=2 * batch,
                       precision="bf16", progress=False, layout=layout)
    reference_seconds = time.perf_counter() - started
    for ex, row in zip(examples, rows):
        ex.reference_positive, ex.reference_negative = row["positive"], row["negative"]
    step_seconds: list[float] = []
    step_tokens: list[int] = []

    class Record(TrainHooks):
        save_model = False  # the steps are timed, not the writing of the weights

        def after_step(self, metrics: dict) -> bool:
            step_seconds.append(metrics["step_s"])
            step_tokens.append(metrics["tokens"])
            return False

    with tempfile.TemporaryDirectory() as tmp:
        train(model=model, tokenizer=tokenizer,
              objective=PairObjective("spin", beta=0.1, gamma=0.0, pad_token_id=tokenizer.pad_token_id,
                                      layout=layout, kind="preference"),
              examples=examples, settings=settings, output=Path(tmp) / "out", metrics_path=Path(tmp) / "m.jsonl",
              run_settings={}, hooks=Record())
    return {"step_seconds": step_seconds[warmup:], "reference_seconds": reference_seconds,
            "reference_pairs": len(pairs), "peak_rss_mb": _peak_rss_mb(),
            "tokens_per_step": statistics.median(step_tokens[warmup:]), "layout": layout,
            "scored_tokens_per_step": batch * statistics.mean(
                response_token_count(ex.positive.labels) + response_token_count(ex.negative.labels)
                for ex in examples),
            **_matmul_parameters(model),
            "attention": attention,
            "parameters": sum(p.numel() for p in model.parameters())}


def worker_trl(model_dir: str, pairs: list[dict], *, steps: int, batch: int, warmup: int, threads: int,
               precompute: bool, checkpointing: bool = True) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    if threads:
        torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    dataset = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])

    timing = {"reference_seconds": 0.0}
    original = DPOTrainer._precompute_ref_logps

    def timed_precompute(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            timing["reference_seconds"] += time.perf_counter() - start

    DPOTrainer._precompute_ref_logps = timed_precompute

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.samples, self._start = [], None

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.samples.append(time.perf_counter() - self._start)

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        config = DPOConfig(output_dir=tmp, per_device_train_batch_size=batch, gradient_accumulation_steps=1,
                           max_steps=steps, learning_rate=5e-7, optim="rmsprop", lr_scheduler_type="linear",
                           warmup_steps=0.1, bf16=True, use_cpu=True, beta=0.1, loss_type=["sigmoid"],
                           precompute_ref_log_probs=precompute, precompute_ref_batch_size=2 * batch,
                           max_length=4096, save_strategy="no", report_to="none", logging_steps=1,
                           disable_tqdm=True, dataloader_num_workers=0, seed=0,
                           gradient_checkpointing=checkpointing)
        trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                             callbacks=[timer])
        trainer.train()
    return {"step_seconds": timer.samples[warmup:], "reference_seconds": timing["reference_seconds"],
            "reference_pairs": len(pairs) if precompute else 0, "peak_rss_mb": _peak_rss_mb()}


def _worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", choices=CONTENDERS, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--result", required=True)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pairs = json.loads(Path(args.pairs).read_text())[: args.steps * args.batch]
    common = {"steps": args.steps, "batch": args.batch, "warmup": args.warmup, "threads": args.threads}
    if args.worker.startswith("gsil"):
        result = worker_gsil(args.model, pairs, layout="separate" if args.worker == "gsil-separate" else "auto",
                             **common)
    else:
        result = worker_trl(args.model, pairs, precompute=args.worker.startswith("trl-precompute"),
                            checkpointing=not args.worker.endswith("-no-ckpt"), **common)
    Path(args.result).write_text(json.dumps(result))
    return 0


# ------------------------------------------------------------------------------------------------ driver


def _run_worker(name: str, model_dir: Path, pairs_path: Path, *, steps: int, batch: int, warmup: int,
                threads: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        result_path = Path(handle.name)
    cmd = [sys.executable, "-m", "gsil.bench.train_step", "--worker", name, "--model", str(model_dir),
           "--pairs", str(pairs_path), "--steps", str(steps), "--batch", str(batch), "--warmup", str(warmup),
           "--threads", str(threads), "--result", str(result_path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "GSIL_LOG_LEVEL": "WARNING"}
    try:
        subprocess.run(cmd, check=True, env=env)
        return json.loads(result_path.read_text())
    finally:
        result_path.unlink(missing_ok=True)


def per_step_seconds(result: dict, steps_trained: int) -> float:
    """Median step time plus the reference pass amortised over the steps that used it."""
    reference = result["reference_seconds"] / steps_trained if result["reference_pairs"] else 0.0
    return statistics.median(result["step_seconds"]) + reference


def run(*, pairs: int = 4, repeats: int = 1, steps: int = 6, warmup: int = 1, threads: int = 0,
        contenders: tuple[str, ...] = CONTENDERS, workdir: str | None = None) -> dict:
    """Time each contender `repeats` times; returns per-contender seconds/step, peak RSS and gsil/TRL ratios.

    `pairs` is the number of pairs per optimizer step; each run trains `steps` steps (the first `warmup` untimed).
    """
    from gsil.bench.report import format_table, summarise

    if steps <= warmup:
        raise ValueError(f"steps ({steps}) must exceed warmup ({warmup})")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        model_dir, pairs_path = build_fixture(Path(tmp), n_pairs=pairs * steps)
        samples: dict[str, list[float]] = {name: [] for name in contenders}
        rss: dict[str, list[float]] = {name: [] for name in contenders}
        reference: dict[str, list[float]] = {name: [] for name in contenders}
        extras: dict[str, dict] = {}
        for _ in range(repeats):
            for name in contenders:
                result = _run_worker(name, model_dir, pairs_path, steps=steps, batch=pairs, warmup=warmup,
                                     threads=threads)
                samples[name].append(per_step_seconds(result, steps))
                rss[name].append(result["peak_rss_mb"])
                reference[name].append(result["reference_seconds"] / steps if result["reference_pairs"] else 0.0)
                if name == "gsil":
                    extras.update({"gsil_tokens_per_step": result["tokens_per_step"], "gsil_layout": result["layout"],
                                   "gsil_attention": result["attention"],
                                   "gsil_scored_tokens_per_step": result["scored_tokens_per_step"],
                                   **{key: result[key] for key in ("parameters", "body_linear_parameters",
                                                                   "head_parameters")}})
                elif name == "gsil-separate":
                    extras["gsil_separate_tokens_per_step"] = result["tokens_per_step"]
    out: dict = {"settings": {"pairs_per_step": pairs, "steps": steps, "warmup": warmup, "repeats": repeats,
                              "threads": threads or None, "model_shape": DEMO_SHAPE}, **extras}
    rows = []
    for name in contenders:
        key = name.replace("-", "_")
        stats = summarise(samples[name])
        out[f"{key}_s_per_step"] = stats
        out[f"{key}_reference_s_per_step"] = statistics.median(reference[name])
        out[f"{key}_peak_rss_mb"] = max(rss[name])
        rows.append([name, stats["median"], out[f"{key}_reference_s_per_step"], max(rss[name])])
    if "gsil" in contenders:
        gsil = out["gsil_s_per_step"]["median"]
        for name in contenders:
            if name != "gsil":
                key = name.replace("-", "_")
                out[f"speedup_ratio_vs_{key}"] = out[f"{key}_s_per_step"]["median"] / gsil
                out[f"rss_ratio_vs_{key}"] = out["gsil_peak_rss_mb"] / out[f"{key}_peak_rss_mb"]
    print(format_table(["contender", "s/step (incl. ref)", "ref s/step", "peak RSS MB"], rows))
    for key, value in out.items():
        if "ratio" in key:
            print(f"{key}: {value:.2f}")
    return out


if __name__ == "__main__":
    raise SystemExit(_worker_main(sys.argv[1:]))
