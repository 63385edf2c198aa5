"""Batched decoding that lets each row leave the batch as soon as it stops.

Hugging Face `generate` keeps every row of a batch until the last one stops, so one answer that runs to the token
limit makes all rows of its batch pay for every step. Here a stopped row leaves the batch (and the KV cache) at
once, so a batch costs about the sum of its answers' lengths rather than its size times the longest one. The steps
are otherwise `generate`'s: one forward pass over the left-padded prompts (logits of the last position only), then
one token per step with the KV cache, positions counted from each row's first real token, the logits processors
applied to the scores and the next token taken by argmax (greedy; the suite samples by adding Gumbel noise in a
processor, see backends/transformers.py).

Greedy outputs are the tokens `generate` gives up to the rounding of smaller batches: a matrix product over fewer
rows can round differently, which flips an argmax only between near-tied tokens. `gsil bench decoding` measures
the time and the agreement on a real model. Both the self-play generator and the `hf` evaluation backend
(gsil.evaluation.hflm) decode through `decode_dropping_finished`. torch is imported inside the functions.
"""

from __future__ import annotations

import inspect
from typing import Callable, Sequence

from gsil.logutil import GsilError

# (row in the caller's batch, the row's new tokens so far) -> whether the row has stopped (e.g. at a stop string).
RowStop = Callable[[int, list[int]], bool]


def cache_argument(model) -> str:
    """The forward keyword that takes the KV cache: `cache` in recent transformers, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def returned_cache(output):
    """The KV cache a forward pass returned (`cache`, or `past_key_values` before transformers renamed it)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def decode_dropping_finished(model, input_ids, attention_mask, *, max_new_tokens: int,
                             stop_token_ids: Sequence[int], logits_processor=None,
                             row_stopped: RowStop | None = None) -> list[list[int]]:
    """The new token ids of every row of a left-padded batch, each ending at its first stop token (kept) or after
    `max_new_tokens`, or where `row_stopped` says so.

    `logits_processor` (a Hugging Face LogitsProcessorList, a list of processors or one callable (sequences,
    scores) -> scores) sees the rows still decoding; a processor with a `select_rows(indices)` method is told which rows stay whenever rows
    leave, so per-row state (a sampling generator) follows its row.
    """
    import torch

    if max_new_tokens < 1:
        raise GsilError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    device = input_ids.device
    stops = torch.tensor(sorted({int(i) for i in stop_token_ids}), dtype=torch.long, device=device)
    new_tokens: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    rows = list(range(input_ids.shape[0]))  # the caller's row of each row still decoding
    sequences = input_ids
    mask = attention_mask
    cache_key = cache_argument(model)
    # A LogitsProcessorList is a list (applied in order, as its own __call__ does); a single processor a callable.
    processors = list(logits_processor) if isinstance(logits_processor, (list, tuple)) else \
        [] if logits_processor is None else [logits_processor]
    with torch.inference_mode():
        # Left padding: a row's first real token is position 0 (what `generate` computes from the mask).
        positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
        output = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                       logits_to_keep=1)
        for step in range(max_new_tokens):
            scores = output.logits[:, -1, :]
            for processor in processors:
                scores = processor(sequences, scores)
            next_ids = scores.argmax(dim=-1)
            at_stop = torch.isin(next_ids, stops).tolist() if len(stops) else [False] * len(rows)
            keep = []
            for position, (row, token, stopped) in enumerate(zip(rows, next_ids.tolist(), at_stop)):
                new_tokens[row].append(token)
                if not stopped and not (row_stopped is not None and row_stopped(row, new_tokens[row])):
                    keep.append(position)
            if not keep or step == max_new_tokens - 1:
                break
            cache = returned_cache(output)
            if len(keep) < len(rows):
                index = torch.tensor(keep, dtype=torch.long, device=device)
                cache.batch_select_indices(index)
                mask, next_ids, sequences = mask[index], next_ids[index], sequences[index]
                rows = [rows[position] for position in keep]
                for processor in processors:
                    if hasattr(processor, "select_rows"):
                        processor.select_rows(keep)
            sequences = torch.cat([sequences, next_ids[:, None]], dim=1)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            output = model(input_ids=next_ids[:, None], attention_mask=mask,
                           position_ids=mask.long().sum(-1, keepdim=True) - 1, use_cache=True,
                           **{cache_key: cache})
    return new_tokens


def padded_continuations(input_ids, new_tokens: Sequence[Sequence[int]], pad_token_id: int):
    """`generate`'s output layout: each row's prompt (as given, left padding included) followed by its new tokens
    and then `pad_token_id` up to the longest row."""
    import torch

    width = max((len(tokens) for tokens in new_tokens), default=0)
    tail = torch.full((input_ids.shape[0], width), pad_token_id, dtype=input_ids.dtype, device=input_ids.device)
    for row, tokens in enumerate(new_tokens):
        if tokens:
            tail[row, :len(tokens)] = torch.tensor(list(tokens), dtype=input_ids.dtype, device=input_ids.device)
    return torch.cat([input_ids, tail], dim=1)
