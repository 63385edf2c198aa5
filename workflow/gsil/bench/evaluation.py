"""Evaluation cost against the model work it needs: is scoring a model as cheap as its generation and forward passes?

One model (the demo's base model) on the demo's two lm-eval benchmarks, `arith` (greedy generation) and `arith_mc`
(log-likelihood multiple choice), three ways:

* per model: one `gsil evaluate` process for both benchmarks, as the workflow's evaluate_model job runs it (process
  start, imports, one model load, both benchmarks);
* per benchmark: one process per benchmark, as the workflow ran before (the sum of both);
* model work: the same work at the suite's own speed, in this process after a warm-up: the suite's batched
  generator (`TransformersGenerator`: length-sorted batches, KV cache) on the exact prompts lm-eval built (read from
  its samples file), scaled to the tokens lm-eval's responses hold, plus one forward pass over every
  (context, choice) sequence of the multiple choice, length-sorted, in batches.

The ratio per model / model work is what issue 17 bounds (<= 1.5); per benchmark / per model is what one process
per model saves. Every side runs in the weights dtype the evaluation resolved (`native`: bf16 where the CPU has it).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gsil.bench.report import format_table, summarise
from gsil.logutil import GsilError

log = logging.getLogger("gsil.bench")

BENCHMARKS = ("arith", "arith_mc")
MC_BATCH_SIZE = 64


def _evaluate(model_dir: Path, data_dir: Path, benchmarks: tuple[str, ...], protocols: dict[str, dict],
              output_dir: Path, threads: int) -> tuple[float, dict[str, dict]]:
    """Wall seconds of one `gsil evaluate` process (start to exit) and its results by benchmark."""
    command = [sys.executable, "-m", "gsil", "evaluate", "--model", str(model_dir), "--benchmark",
               ",".join(benchmarks), "--data-dir", str(data_dir), "--output-dir", str(output_dir),
               "--protocols-json", json.dumps({b: protocols[b] for b in benchmarks}), "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise GsilError(f"gsil evaluate failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, {b: json.loads((output_dir / f"{b}.json").read_text()) for b in benchmarks}


def _samples(output_dir: Path, result: dict) -> list[dict]:
    path = output_dir / result["samples_file"]
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def generation_work(model, tokenizer, samples: list[dict], filter_name: str, batch_size: int) -> dict[str, Any]:
    """Seconds the suite's generator needs for lm-eval's generation requests: its tokens/s on the same prompts,
    applied to the tokens lm-eval's responses hold (lm-eval stops at the task's stop strings as well)."""
    from gsil.generation import SamplingSettings, TransformersGenerator, stop_token_ids_for

    rows = [s for s in samples if s.get("filter") == filter_name]
    contexts = [row["arguments"][0][0] for row in rows]
    max_new_tokens = int(rows[0]["arguments"][0][1].get("max_gen_toks", 256))
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in contexts]
    responses = [row["resps"][0][0] if isinstance(row["resps"][0], list) else row["resps"][0] for row in rows]
    harness_tokens = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1 for text in responses)
    generator = TransformersGenerator(model, tokenizer, SamplingSettings(max_new_tokens=max_new_tokens),
                                      stop_token_ids=stop_token_ids_for(tokenizer, model.generation_config),
                                      batch_size=batch_size)
    generator.generate(prompts[:2])  # kernel selection and allocator warm-up
    started = time.perf_counter()
    results = generator.generate(prompts)
    seconds = time.perf_counter() - started
    suite_tokens = sum(r.n_tokens for r in results)
    rate = suite_tokens / seconds
    return {"prompts": len(prompts), "suite_tokens": suite_tokens, "suite_seconds": seconds,
            "suite_tokens_per_s": rate, "harness_tokens": harness_tokens, "seconds": harness_tokens / rate}


def loglikelihood_work(model, tokenizer, samples: list[dict], batch_size: int = MC_BATCH_SIZE) -> dict[str, Any]:
    """Seconds of one forward pass over every (context, continuation) sequence, length-sorted, in batches."""
    import torch

    from gsil.generation.backends.transformers import length_sorted_batches

    sequences = []
    for row in samples:
        for context, continuation in row["arguments"]:
            sequences.append(tokenizer(context + continuation, add_special_tokens=False)["input_ids"])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = length_sorted_batches([len(s) for s in sequences], batch_size)

    def forward_all() -> None:
        with torch.inference_mode():
            for batch in batches:
                width = max(len(sequences[i]) for i in batch)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, index in enumerate(batch):
                    ids[row, :len(sequences[index])] = torch.tensor(sequences[index])
                    mask[row, :len(sequences[index])] = 1
                model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)

    with torch.inference_mode():  # warm-up on one small batch
        model(input_ids=torch.tensor([sequences[0]])).logits.float()
    started = time.perf_counter()
    forward_all()
    return {"sequences": len(sequences), "tokens": sum(map(len, sequences)),
            "seconds": time.perf_counter() - started}


def run(model_dir: str, data_dir: str, *, arith_limit: int | None = None, mc_limit: int | None = None,
        threads: int = 1, repeats: int = 1, max_gen_toks: int = 128) -> dict[str, Any]:
    import torch

    from gsil.evaluation.harness import concrete_dtype
    from gsil.modeling import load_model, load_tokenizer

    model_path, data_path = Path(model_dir), Path(data_dir)
    protocols = {"arith": {"limit": arith_limit, "gen_kwargs": {"max_gen_toks": max_gen_toks}},
                 "arith_mc": {"limit": mc_limit}}
    per_model_s, per_benchmark_s = [], []
    with tempfile.TemporaryDirectory(prefix="gsil-bench-eval-") as tmp:
        for repeat in range(repeats):
            # alternate the order so drifting load from other processes hits both alike
            order = ("per_model", "per_benchmark") if repeat % 2 == 0 else ("per_benchmark", "per_model")
            for way in order:
                out = Path(tmp) / f"{way}-{repeat}"
                if way == "per_model":
                    seconds, results = _evaluate(model_path, data_path, BENCHMARKS, protocols, out, threads)
                    per_model_s.append(seconds)
                    kept_results, kept_dir = results, out
                else:
                    seconds = sum(_evaluate(model_path, data_path, (b,), protocols, out / b, threads)[0]
                                  for b in BENCHMARKS)
                    per_benchmark_s.append(seconds)
                print(f"repeat {repeat + 1}/{repeats} {way}: {seconds:.1f} s", flush=True)
        dtype_name = kept_results["arith"]["protocol"]["dtype"]
        torch.set_num_threads(threads)
        tokenizer = load_tokenizer(model_path)
        model = load_model(model_path, dtype=getattr(torch, dtype_name))
        arith = kept_results["arith"]
        generation = generation_work(model, tokenizer, _samples(kept_dir, arith), arith["protocol"]["filter"],
                                     int(arith["protocol"]["batch_size"]))
        loglikelihood = loglikelihood_work(model, tokenizer, _samples(kept_dir, kept_results["arith_mc"]))
    per_model, per_benchmark = summarise(per_model_s), summarise(per_benchmark_s)
    work_s = generation["seconds"] + loglikelihood["seconds"]
    in_harness = {b: r["seconds"] for b, r in kept_results.items()}
    print(format_table(
        ["way", "wall s median", "min", "max"],
        [["one process per model (workflow)", per_model["median"], per_model["min"], per_model["max"]],
         ["one process per benchmark (before)", per_benchmark["median"], per_benchmark["min"], per_benchmark["max"]],
         ["model work at the suite's speed", work_s, work_s, work_s]]))
    print(f"inside gsil evaluate: arith {in_harness['arith']:.1f} s ({arith['n_samples']} problems, model load "
          f"included), arith_mc {in_harness['arith_mc']:.1f} s ({kept_results['arith_mc']['n_samples']} questions); "
          f"suite generator {generation['suite_tokens_per_s']:.1f} tok/s on lm-eval's prompts, lm-eval's responses "
          f"{generation['harness_tokens']} tokens -> {generation['seconds']:.1f} s; multiple-choice forwards "
          f"{loglikelihood['sequences']} sequences in {loglikelihood['seconds']:.1f} s; dtype {dtype_name} "
          f"({concrete_dtype({'dtype': 'native', 'device': 'cpu'})} is native here), {threads} thread(s)")
    ratio = per_model["median"] / work_s
    saving = per_benchmark["median"] / per_model["median"]
    print(f"evaluation / model work: {ratio:.2f}x (target <= 1.5); one process per benchmark / per model: "
          f"{saving:.2f}x")
    return {
        "per_model_s": per_model, "per_benchmark_s": per_benchmark, "model_work_s": work_s,
        "evaluation_over_work_ratio": ratio, "per_benchmark_over_per_model_ratio": saving,
        "inside_evaluate_s": in_harness, "generation_work": generation, "loglikelihood_work": loglikelihood,
        "settings": {"model": str(model_path), "data": str(data_path), "arith_limit": arith_limit,
                     "mc_limit": mc_limit, "threads": threads, "repeats": repeats, "max_gen_toks": max_gen_toks,
                     "dtype": dtype_name, "benchmarks": list(BENCHMARKS),
                     "n_samples": {b: r["n_samples"] for b, r in kept_results.items()}},
    }
