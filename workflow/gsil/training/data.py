"""Training examples, their order, and how one optimizer step is cut into micro-batches.

The order is a pure function of (seed, epoch), so a resumed run replays exactly the batches an uninterrupted run
would have seen, and every process derives the same plan without communicating.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from gsil.tokenization import IGNORE_INDEX
from gsil.training.settings import BatchLayout


def response_token_count(labels: Sequence[int]) -> int:
    return sum(1 for token in labels if token != IGNORE_INDEX)


@dataclass
class SFTExample:
    id: str
    encoded: object  # gsil.tokenization.Encoded

    @property
    def length(self) -> int:
        return len(self.encoded.input_ids)

    @property
    def weight(self) -> int:
        """SFT is a token-mean loss, so an example counts by its response tokens."""
        return response_token_count(self.encoded.labels)


@dataclass
class PairExample:
    id: str
    positive: object  # gsil.tokenization.Encoded
    negative: object
    reference_positive: float = float("nan")
    reference_negative: float = float("nan")

    @property
    def length(self) -> int:
        return max(len(self.positive.input_ids), len(self.negative.input_ids))

    @property
    def weight(self) -> int:
        """Pairwise losses are a mean over pairs."""
        return 1


@dataclass
class EncodeStats:
    examples: int = 0
    truncated: int = 0
    skipped_empty: int = 0
    dropped_identical: int = 0
    skipped_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"examples": self.examples, "truncated": self.truncated, "skipped_empty": self.skipped_empty,
                "dropped_identical": self.dropped_identical}


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def steps_per_epoch(n: int, layout: BatchLayout) -> int:
    """Full global batches plus a last short one when it can still give every micro-batch at least one example."""
    full, rest = divmod(n, layout.global_batch_size)
    micro_batches = layout.accumulation_steps * layout.num_processes
    return full + (1 if rest >= micro_batches else 0)


def plan_epoch(lengths: Sequence[int], layout: BatchLayout, seed: int, epoch: int) -> list[list[list[int]]]:
    """Per optimizer step, the micro-batches of ALL processes: `steps[s][p * k + j]` is process p's j-th.

    Within a step the examples are sorted by length before being cut, so each micro-batch pads to a similar
    length; the gradient of the step is the same whatever the cut. Chunks are dealt to processes round-robin so
    each process gets a mix of long and short ones.
    """
    order = epoch_permutation(len(lengths), seed, epoch)
    g = layout.global_batch_size
    n_micro = layout.accumulation_steps * layout.num_processes
    steps = []
    for start in range(0, len(order), g):
        members = order[start:start + g]
        if len(members) < n_micro:
            break  # counted by steps_per_epoch; too few to give every micro-batch an example
        members.sort(key=lambda i: (lengths[i], i))
        chunks = _split_even(members, n_micro)
        # chunk c goes to process c % P as its (c // P)-th micro-batch
        per_process = [[chunks[c] for c in range(p, n_micro, layout.num_processes)]
                       for p in range(layout.num_processes)]
        steps.append([mb for proc in per_process for mb in proc])
    return steps


def _split_even(items: list[int], parts: int) -> list[list[int]]:
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for part in range(parts):
        end = start + size + (1 if part < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def collate_pairs(examples: Sequence[PairExample], pad_token_id: int, pad_batch, *,
                  layout: str = "separate") -> dict:
    """The micro-batch of pairs for one forward pass that scores both responses, with the reference log-probs.

    layout "separate": one padded batch [positives; negatives]. "shared-prompt": one packed row per pair
    (gsil.packing), under the key "packed". `num_tokens` counts the positions the model runs (padding excluded).
    """
    batch: dict = {}
    if layout == "shared-prompt":
        from gsil.packing import pack_pairs

        packed = pack_pairs([(ex.positive, ex.negative) for ex in examples], pad_token_id)
        batch["packed"] = packed
        batch["num_tokens"] = packed.num_positions
    elif layout == "separate":
        batch.update(pad_batch([ex.positive for ex in examples] + [ex.negative for ex in examples], pad_token_id))
        batch["num_tokens"] = int(batch["attention_mask"].sum())
    else:
        raise ValueError(f"unknown pair layout {layout!r}")
    batch["reference_positive"] = torch.tensor([ex.reference_positive for ex in examples], dtype=torch.float32)
    batch["reference_negative"] = torch.tensor([ex.reference_negative for ex in examples], dtype=torch.float32)
    return batch


def collate_sft(examples: Sequence[SFTExample], pad_token_id: int, pad_batch) -> dict:
    batch = dict(pad_batch([ex.encoded for ex in examples], pad_token_id))
    batch["num_tokens"] = int(batch["attention_mask"].sum())
    return batch
