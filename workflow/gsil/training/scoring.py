"""Summed response log-probs of a frozen model: the reference of every pairwise method.

Run once per (reference model, pair file) by `gsil reference-logps`. Sequences are sorted by length and batched so
padding is small; no autograd state is kept. The precision must be the one the policy trains in (bf16 autocast
over fp32 weights by default), so that at step 0 the policy's log-probs equal the reference's and Δ starts at ~0
rather than at the bf16-vs-fp32 rounding gap (tests/test_reference_logps.py measures both).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch


def autocast_context(precision: str, device: torch.device | str):
    """The same autocast the training loop gets from accelerate for `precision`."""
    device_type = torch.device(device).type
    if precision == "bf16":
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def score_sequences(model, encoded: Sequence, *, pad_token_id: int, batch_size: int, precision: str,
                    full_logits: bool = False, progress: bool = True) -> tuple[list[float], list[int]]:
    """Summed label log-prob and scored-token count of each encoded sequence, in input order."""
    from tqdm.auto import tqdm

    from gsil.logprobs import sequence_logps
    from gsil.tokenization import pad_batch

    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids), reverse=True)
    logps: list[float] = [0.0] * len(encoded)
    counts: list[int] = [0] * len(encoded)
    kwargs = {"full_logits": True} if full_logits else {}
    was_training = model.training
    model.eval()
    with torch.inference_mode(), tqdm(total=len(encoded), desc="reference log-probs", unit="seq",
                                      disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = {k: v.to(device) for k, v in pad_batch([encoded[i] for i in chunk], pad_token_id).items()}
            with autocast_context(precision, device):
                values, tokens = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                                **kwargs)
            for i, value, count in zip(chunk, values.float().tolist(), tokens.tolist()):
                logps[i], counts[i] = value, int(count)
            bar.update(len(chunk))
    model.train(was_training)
    return logps, counts


def score_pairs(model, examples: Sequence, *, pad_token_id: int, batch_size: int, precision: str,
                full_logits: bool = False, progress: bool = True) -> list[dict]:
    """Reference rows {id, positive, negative, positive_tokens, negative_tokens} for PairExamples, in order."""
    encoded = [ex.positive for ex in examples] + [ex.negative for ex in examples]
    logps, counts = score_sequences(model, encoded, pad_token_id=pad_token_id, batch_size=batch_size,
                                    precision=precision, full_logits=full_logits, progress=progress)
    n = len(examples)
    return [{"id": ex.id, "positive": logps[i], "negative": logps[n + i],
             "positive_tokens": counts[i], "negative_tokens": counts[n + i]} for i, ex in enumerate(examples)]
