"""Summed response log-probs of a frozen model: the reference of every pairwise method.

Run once per (reference model, pair file) by `gsil reference-logps`. Sequences (or packed pairs) are sorted by
length and batched so padding is small; no autograd state is kept. The numerics must be the policy's (the weights'
dtype is the model's own; `precision` here is the autocast: "bf16" or "fp32" for none), so that at step 0 the
policy's log-probs equal the reference's and Δ starts at ~0 rather than at a rounding gap (gsil.training.numerics;
tests/test_reference_logps.py measures both).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch


def autocast_context(precision: str, device: torch.device | str):
    """bf16 autocast for "bf16", none for "fp32": what accelerate's `autocast()` does where it autocasts."""
    device_type = torch.device(device).type
    if precision == "bf16":
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _scored_batches(model, lengths: Sequence[int], batch_size: int, *, precision: str, progress: bool, unit: str,
                    score: Callable[[list[int]], tuple[torch.Tensor, torch.Tensor]]) -> Iterator[tuple]:
    """Items sorted longest first and cut into batches; yields (item indices, their log-probs, their counts) from
    `score(indices)`, run in eval mode without autograd under the precision's autocast."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), tqdm(total=len(order), desc="reference log-probs", unit=unit,
                                          disable=not progress, dynamic_ncols=True) as bar:
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                with autocast_context(precision, device):
                    values, counts = score(chunk)
                yield chunk, values.float().tolist(), counts.tolist()
                bar.update(len(chunk))
    finally:
        model.train(was_training)


def score_sequences(model, encoded: Sequence, *, pad_token_id: int, batch_size: int, precision: str,
                    full_logits: bool = False, progress: bool = True) -> tuple[list[float], list[int]]:
    """Summed label log-prob and scored-token count of each encoded sequence, in input order."""
    from gsil.logprobs import sequence_logps
    from gsil.tokenization import pad_batch

    device = next(model.parameters()).device
    kwargs = {"full_logits": True} if full_logits else {}

    def score(chunk: list[int]):
        batch = {k: v.to(device) for k, v in pad_batch([encoded[i] for i in chunk], pad_token_id).items()}
        return sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"], **kwargs)

    logps: list[float] = [0.0] * len(encoded)
    counts: list[int] = [0] * len(encoded)
    for chunk, values, tokens in _scored_batches(model, [len(e.input_ids) for e in encoded], batch_size,
                                                 precision=precision, progress=progress, unit="seq", score=score):
        for i, value, count in zip(chunk, values, tokens):
            logps[i], counts[i] = value, int(count)
    return logps, counts


def score_pairs(model, examples: Sequence, *, pad_token_id: int, batch_size: int, precision: str,
                full_logits: bool = False, progress: bool = True, layout: str = "separate") -> list[dict]:
    """Reference rows {id, positive, negative, positive_tokens, negative_tokens} for PairExamples, in order.

    `layout` must be the one the policy trains with ("shared-prompt" or "separate"), for the same reason as the
    precision: the two give the same values up to float rounding, not bit for bit. `batch_size` counts sequences
    (a packed row holds two).
    """
    if layout == "separate":
        encoded = [ex.positive for ex in examples] + [ex.negative for ex in examples]
        logps, counts = score_sequences(model, encoded, pad_token_id=pad_token_id, batch_size=batch_size,
                                        precision=precision, full_logits=full_logits, progress=progress)
        n = len(examples)
        return [_row(ex, logps[i], logps[n + i], counts[i], counts[n + i]) for i, ex in enumerate(examples)]
    if layout != "shared-prompt":
        raise ValueError(f"unknown pair layout {layout!r}")
    from gsil.logprobs import packed_pair_logps
    from gsil.packing import pack_pairs, packed_length

    device = next(model.parameters()).device
    kwargs = {"full_logits": True} if full_logits else {}

    def score(chunk: list[int]):
        packed = pack_pairs([(examples[i].positive, examples[i].negative) for i in chunk], pad_token_id)
        return packed_pair_logps(model, packed.to(device), **kwargs)

    rows: list[dict] = [{}] * len(examples)
    lengths = [packed_length(ex.positive.input_ids, ex.negative.input_ids) for ex in examples]
    for chunk, values, tokens in _scored_batches(model, lengths, max(1, batch_size // 2), precision=precision,
                                                 progress=progress, unit="pair", score=score):
        n = len(chunk)
        for j, i in enumerate(chunk):
            rows[i] = _row(examples[i], values[j], values[n + j], tokens[j], tokens[n + j])
    return rows


def _row(example, positive: float, negative: float, positive_tokens: int, negative_tokens: int) -> dict:
    return {"id": example.id, "positive": positive, "negative": negative, "positive_tokens": int(positive_tokens),
            "negative_tokens": int(negative_tokens)}


def process_share(n_items: int, process_index: int, num_processes: int) -> list[int]:
    """The item indices one data-parallel process scores: every `num_processes`-th, so that the shares have
    similar length mixes (items are length-sorted within a share, not across)."""
    return list(range(process_index, n_items, num_processes))


def merge_shares(n_items: int, shares: Sequence[tuple[Sequence[int], Sequence[dict]]]) -> list[dict]:
    """Rows of every process's share put back in input order; each index must come exactly once."""
    rows: list[dict | None] = [None] * n_items
    for indices, share_rows in shares:
        if len(indices) != len(share_rows):
            raise ValueError(f"a share has {len(indices)} indices but {len(share_rows)} rows")
        for i, row in zip(indices, share_rows):
            if rows[i] is not None:
                raise ValueError(f"item {i} was scored by two processes")
            rows[i] = row
    missing = [i for i, row in enumerate(rows) if row is None]
    if missing:
        raise ValueError(f"{len(missing)} item(s) were scored by no process, first {missing[:5]}")
    return rows  # type: ignore[return-value]
