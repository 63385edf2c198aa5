"""Generation throughput: `gsil generate`'s transformers path against the official GSIL script's approach.

Both sides run in the same process on the same model folder, the same prompts (the same token ids, from
`gsil.tokenization.encode_prompt`), the same greedy decoding, `max_new_tokens` and stop ids, so they do the same
work and only the way they batch and the precision differ:

* baseline (GSIL@bf269e0 gsil/generate.py, as run on a CPU): prompts in input order, batches of 4, left padding to
  the longest prompt of the batch rounded up to a multiple of 8 (`pad_to_multiple_of=8`), float32, HF `generate`
  greedy;
* suite: `TransformersGenerator` with its defaults (prompts sorted by length, larger batches, `--precision auto`,
  i.e. bf16 where the CPU has native bf16).

tokens/s counts the tokens each response really has (up to and including its stop token; padding after a finished
row is not counted), divided by the wall time of the generation loop (model loading excluded on both sides). The two
are timed alternately, `repeats` times each, and reported as median and spread; the ratio is of the medians.
"""

from __future__ import annotations

import time
from typing import Sequence

from gsil.bench.report import format_table, summarise

OFFICIAL_BATCH_SIZE = 4
OFFICIAL_PAD_MULTIPLE = 8


def baseline_generate(model, prompt_ids: Sequence[Sequence[int]], *, pad_token_id: int,
                      stop_token_ids: Sequence[int], max_new_tokens: int,
                      batch_size: int = OFFICIAL_BATCH_SIZE) -> list:
    """The official script's loop: input order, fixed batches, left padding to a multiple of 8, greedy generate."""
    import torch

    from gsil.generation import GenerationResult, split_at_stop

    results = []
    for start in range(0, len(prompt_ids), batch_size):
        batch = prompt_ids[start:start + batch_size]
        longest = max(len(ids) for ids in batch)
        width = -(-longest // OFFICIAL_PAD_MULTIPLE) * OFFICIAL_PAD_MULTIPLE
        input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, width - len(ids):] = torch.tensor(list(ids))
            attention_mask[row, width - len(ids):] = 1
        with torch.inference_mode():
            output = model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                                    max_new_tokens=max_new_tokens, pad_token_id=pad_token_id,
                                    eos_token_id=list(stop_token_ids))
        for row in output[:, width:].tolist():
            _, n_tokens, finished = split_at_stop(row, stop_token_ids)
            results.append(GenerationResult("", n_tokens, finished))
    return results


def _timed(fn) -> tuple[float, list]:
    start = time.perf_counter()
    results = fn()
    elapsed = time.perf_counter() - start
    return sum(r.n_tokens for r in results) / elapsed, results


def run(model_dir: str, prompts_file: str, limit: int = 24, repeats: int = 3, *, max_new_tokens: int = 64,
        batch_size: int | None = None, template: str = "chat", precision: str = "auto",
        ) -> dict:
    import torch

    from gsil.generation import (
        DEFAULT_BATCH_SIZE,
        SamplingSettings,
        TransformersGenerator,
        resolve_precision,
        stop_token_ids_for,
        torch_dtype,
    )
    from gsil.modeling import load_model, load_tokenizer
    from gsil.records import read_records
    from gsil.tokenization import encode_prompt

    batch_size = batch_size or DEFAULT_BATCH_SIZE
    rows = read_records(prompts_file, "demonstration")[:limit]
    tokenizer = load_tokenizer(model_dir)
    prompt_ids = [encode_prompt(tokenizer, row["prompt"], template=template)[0] for row in rows]
    resolved = resolve_precision(precision, "cpu")
    suite_model = load_model(model_dir, dtype=torch_dtype(resolved))
    baseline_model = load_model(model_dir, dtype=torch.float32)
    stop_ids = stop_token_ids_for(tokenizer, suite_model.generation_config)
    suite = TransformersGenerator(suite_model, tokenizer, SamplingSettings(max_new_tokens=max_new_tokens),
                                  stop_token_ids=stop_ids, batch_size=batch_size)

    def run_suite():
        return suite.generate(prompt_ids)

    def run_baseline():
        return baseline_generate(baseline_model, prompt_ids, pad_token_id=tokenizer.pad_token_id,
                                 stop_token_ids=stop_ids, max_new_tokens=max_new_tokens)

    # One untimed pass of each on two prompts: first calls pay for kernel selection and allocator warm-up.
    suite.generate(prompt_ids[:2])
    baseline_generate(baseline_model, prompt_ids[:2], pad_token_id=tokenizer.pad_token_id, stop_token_ids=stop_ids,
                      max_new_tokens=4)
    suite_rates, baseline_rates, suite_tokens, baseline_tokens = [], [], 0, 0
    suite_texts: list[list[str]] = []  # per repeat: greedy decoding must give the same responses every time
    for repeat in range(repeats):
        # Alternate which side goes first so drifting load from other processes hits both alike.
        order = (("suite", run_suite), ("baseline", run_baseline))
        for name, fn in order if repeat % 2 == 0 else reversed(order):
            rate, results = _timed(fn)
            tokens = sum(r.n_tokens for r in results)
            if name == "suite":
                suite_rates.append(rate)
                suite_tokens = tokens
                suite_texts.append([r.text for r in results])
            else:
                baseline_rates.append(rate)
                baseline_tokens = tokens
            print(f"repeat {repeat + 1}/{repeats} {name}: {rate:.1f} tok/s ({tokens} tokens)", flush=True)

    suite_summary, baseline_summary = summarise(suite_rates), summarise(baseline_rates)
    ratio = suite_summary["median"] / baseline_summary["median"]
    print(format_table(
        ["path", "tok/s median", "min", "max", "tokens/pass"],
        [["gsil generate (sorted, batch %d, %s)" % (batch_size, resolved), suite_summary["median"],
          suite_summary["min"], suite_summary["max"], suite_tokens],
         ["official approach (unsorted, batch 4, fp32)", baseline_summary["median"], baseline_summary["min"],
          baseline_summary["max"], baseline_tokens]],
    ))
    deterministic = all(texts == suite_texts[0] for texts in suite_texts)
    print(f"speed-up: {ratio:.2f}x (median over median, {repeats} repeats, {len(rows)} prompts); "
          f"greedy responses identical across repeats: {deterministic}")
    result = {
        "suite_tokens_per_s": suite_summary,
        "baseline_tokens_per_s": baseline_summary,
        "speedup": ratio,
        "suite_greedy_deterministic": deterministic,
        "tokens_per_pass": {"suite": suite_tokens, "baseline": baseline_tokens},
        "settings": {
            "model": str(model_dir), "prompts": str(prompts_file), "prompts_used": len(rows), "repeats": repeats,
            "max_new_tokens": max_new_tokens, "suite_batch_size": batch_size, "suite_precision": resolved,
            "baseline_batch_size": OFFICIAL_BATCH_SIZE, "baseline_precision": "fp32", "template": template,
            "torch_threads": torch.get_num_threads(),
        },
    }
    return result
