"""Greedy decoding with finished rows leaving the batch, against Hugging Face `generate` keeping them.

`gsil.generation.decoding` decodes self-play generations and the `hf` evaluation backend's greedy answers
(gsil.evaluation.hflm). Both sides here get the same model, the same prompts (arith test questions through the chat
template, as the `arith` benchmark and self-play ask them), the same length-sorted, left-padded batches, the same
`max_new_tokens` and stop ids; only the decoder differs. They are timed alternately, `repeats` times each (median
and spread of seconds per pass), and their responses compared token for token.
"""

from __future__ import annotations

import time

from gsil.bench.report import format_table, summarise


def _hf_generate(model, input_ids, attention_mask, *, max_new_tokens, stop_ids, pad_token_id):
    output = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                            do_sample=False, eos_token_id=list(stop_ids), pad_token_id=pad_token_id)
    from gsil.generation import split_at_stop

    # Up to and including the stop token, as decode_dropping_finished returns a row.
    return [row[:split_at_stop(row, stop_ids)[1]] for row in output[:, input_ids.shape[1]:].tolist()]


def run(model_dir: str, questions_file: str, *, limit: int = 128, batch_size: int = 64, max_new_tokens: int = 128,
        repeats: int = 3, threads: int = 1, precision: str = "auto") -> dict:
    import torch

    from gsil.generation import resolve_precision, stop_token_ids_for, torch_dtype
    from gsil.generation.backends.transformers import left_pad, length_sorted_batches
    from gsil.generation.decoding import decode_dropping_finished
    from gsil.modeling import load_model, load_tokenizer
    from gsil.records import read_records
    from gsil.tokenization import encode_prompt

    torch.set_num_threads(threads)
    rows = read_records(questions_file, "eval_generation")[:limit]
    tokenizer = load_tokenizer(model_dir)
    prompts = [encode_prompt(tokenizer, row["question"], template="chat")[0] for row in rows]
    resolved = resolve_precision(precision, "cpu")
    model = load_model(model_dir, dtype=torch_dtype(resolved))
    stop_ids = stop_token_ids_for(tokenizer, model.generation_config)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    batches = [left_pad([prompts[i] for i in batch], pad) for batch in length_sorted_batches(
        [len(p) for p in prompts], batch_size)]

    def dropping():
        return [row for ids, mask in batches for row in decode_dropping_finished(
            model, ids, mask, max_new_tokens=max_new_tokens, stop_token_ids=stop_ids)]

    def keeping():
        with torch.inference_mode():
            return [row for ids, mask in batches for row in _hf_generate(
                model, ids, mask, max_new_tokens=max_new_tokens, stop_ids=stop_ids, pad_token_id=pad)]

    # Untimed warm-up of both on the first batch's first rows (kernel selection, allocator).
    decode_dropping_finished(model, batches[0][0][:2], batches[0][1][:2], max_new_tokens=4, stop_token_ids=stop_ids)
    with torch.inference_mode():
        _hf_generate(model, batches[0][0][:2], batches[0][1][:2], max_new_tokens=4, stop_ids=stop_ids,
                     pad_token_id=pad)
    seconds: dict[str, list[float]] = {"drop_finished": [], "generate": []}
    outputs: dict[str, list] = {}
    for repeat in range(repeats):
        order = [("drop_finished", dropping), ("generate", keeping)]
        for name, fn in order if repeat % 2 == 0 else reversed(order):
            start = time.perf_counter()
            outputs[name] = fn()
            seconds[name].append(time.perf_counter() - start)
            print(f"repeat {repeat + 1}/{repeats} {name}: {seconds[name][-1]:.1f} s", flush=True)
    lengths = [len(row) for row in outputs["generate"]]
    identical = sum(a == b for a, b in zip(outputs["drop_finished"], outputs["generate"]))
    ours, theirs = summarise(seconds["drop_finished"]), summarise(seconds["generate"])
    print(format_table(["decoder", "s/pass median", "min", "max"],
                       [["rows leave when they stop (suite)", ours["median"], ours["min"], ours["max"]],
                        ["HF generate (rows kept to the end)", theirs["median"], theirs["min"], theirs["max"]]]))
    print(f"speed-up: {theirs['median'] / ours['median']:.2f}x; {len(prompts)} prompts in batches of {batch_size}, "
          f"{resolved}, {threads} thread(s); responses: mean {sum(lengths) / len(lengths):.1f} tokens, longest "
          f"{max(lengths)}, {sum(n == max_new_tokens for n in lengths)} at the limit of {max_new_tokens}; "
          f"identical token for token: {identical}/{len(prompts)}")
    return {
        "drop_finished_s_per_pass": ours,
        "generate_s_per_pass": theirs,
        "speedup": theirs["median"] / ours["median"],
        "identical_fraction": identical / len(prompts),
        "response_tokens": {"mean": sum(lengths) / len(lengths), "max": max(lengths),
                            "at_limit": sum(n == max_new_tokens for n in lengths)},
        "settings": {"model": str(model_dir), "questions": str(questions_file), "prompts": len(prompts),
                     "batch_size": batch_size, "max_new_tokens": max_new_tokens, "repeats": repeats,
                     "threads": threads, "precision": resolved},
    }
