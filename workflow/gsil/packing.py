"""Both sequences of a pair in one row, so their common prefix (the prompt) goes through the model once.

A pair's two sequences share their prompt tokens. Instead of two padded rows [prompt + positive] and
[prompt + negative], a packed row holds

    [ shared prefix | rest of positive | rest of negative ]    (then right padding)

with position ids that restart after the prefix for the second branch, and an attention mask in which each branch
sees the prefix and its own earlier tokens but never the other branch. Every position therefore has exactly the
context and position it has in the unpacked sequence, so its hidden state and log-probs are the same (up to float
rounding); the prefix is simply computed once. With ~60-token prompts and ~70-token responses this removes about a
quarter of the positions the model runs, before counting the padding it also saves.

The shared prefix is the longest common prefix of the two token sequences (normally the rendered prompt; longer when
the responses begin alike, which is just as correct). The packing is plain index bookkeeping that knows nothing of
models; `attention_mask_4d` turns it into the mask form an attention implementation expects (`PACKABLE_ATTENTION`).

Only attention that takes an arbitrary 4D mask and rotary or absolute position ids can run a packed row: the
decoder families listed in `gsil.modeling.PACKABLE_MODEL_TYPES` under the "sdpa" and "eager" implementations.
Anything else (flash-attention kernels, flex attention, ALiBi models) uses the separate layout, which
`gsil.modeling.resolve_pair_layout` picks automatically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from gsil.tokenization import IGNORE_INDEX

PAD, PREFIX, FIRST, SECOND = 0, 1, 2, 3  # segment ids
# The attention implementations `attention_mask_4d` has a mask form for.
PACKABLE_ATTENTION = ("sdpa", "eager")


@dataclass(frozen=True)
class PackedPairs:
    """A batch of pairs packed one pair per row.

    input_ids, position_ids, segments: [R, L]. The score_* vectors list every scored token: the row and column of
    the position that predicts it, the token id, and which output sequence it belongs to (pair i's first sequence is
    i, its second is R + i, the order of the separate layout's [firsts; seconds] batch).
    """

    input_ids: Tensor
    position_ids: Tensor
    segments: Tensor
    score_rows: Tensor
    score_cols: Tensor
    score_targets: Tensor
    score_sequences: Tensor

    @property
    def num_sequences(self) -> int:
        return 2 * self.input_ids.shape[0]

    @property
    def num_positions(self) -> int:
        """Positions the model runs on (padding excluded)."""
        return int((self.segments != PAD).sum())

    def to(self, device) -> "PackedPairs":
        return PackedPairs(*(getattr(self, name).to(device) for name in self.__dataclass_fields__))


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def packed_length(first_ids: Sequence[int], second_ids: Sequence[int]) -> int:
    return len(first_ids) + len(second_ids) - common_prefix_length(first_ids, second_ids)


def pack_pairs(pairs: Sequence[tuple], pad_token_id: int) -> PackedPairs:
    """Pack (first, second) pairs of encoded sequences (objects with `input_ids` and HF-style `labels`)."""
    if not pairs:
        raise ValueError("pack_pairs needs at least one pair")
    n_rows = len(pairs)
    width = max(packed_length(a.input_ids, b.input_ids) for a, b in pairs)
    input_ids = torch.full((n_rows, width), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((n_rows, width), dtype=torch.long)
    segments = torch.full((n_rows, width), PAD, dtype=torch.long)
    rows, cols, targets, sequences = [], [], [], []
    for r, (first, second) in enumerate(pairs):
        for seq in (first, second):
            if len(seq.input_ids) != len(seq.labels):
                raise ValueError(f"pair {r}: input_ids and labels differ in length")
        shared = common_prefix_length(first.input_ids, second.input_ids)
        first_len, second_len = len(first.input_ids), len(second.input_ids)
        # Column of original position t of a sequence whose unshared part starts at column `offset`.
        offsets = (shared, first_len)
        input_ids[r, :first_len] = torch.tensor(first.input_ids)
        position_ids[r, :first_len] = torch.arange(first_len)
        segments[r, :shared] = PREFIX
        segments[r, shared:first_len] = FIRST
        end = first_len + second_len - shared
        input_ids[r, first_len:end] = torch.tensor(second.input_ids[shared:], dtype=torch.long)
        position_ids[r, first_len:end] = torch.arange(shared, second_len)
        segments[r, first_len:end] = SECOND
        for which, (seq, offset) in enumerate(zip((first, second), offsets)):
            for t in range(1, len(seq.labels)):
                if seq.labels[t] == IGNORE_INDEX:
                    continue
                source = t - 1
                rows.append(r)
                cols.append(source if source < shared else offset + source - shared)
                targets.append(seq.labels[t])
                sequences.append(r + which * n_rows)
    as_long = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
    return PackedPairs(input_ids, position_ids, segments, as_long(rows), as_long(cols), as_long(targets),
                       as_long(sequences))


def allowed_attention(segments: Tensor, position_ids: Tensor, sliding_window: int | None = None) -> Tensor:
    """[R, L, L] boolean: may query column q attend to key column k?

    A real position attends to earlier-or-same columns of the prefix and of its own segment; a padding position
    attends only to itself (so no query row is fully masked, which would make attention produce NaN). With a sliding
    window, keys more than `sliding_window - 1` positions back are hidden, as the model's own mask does.
    """
    width = segments.shape[1]
    columns = torch.arange(width, device=segments.device)
    causal = columns[None, :, None] >= columns[None, None, :]
    seg_q, seg_k = segments[:, :, None], segments[:, None, :]
    visible = (seg_k == PREFIX) | (seg_k == seg_q)
    real = (seg_q != PAD) & (seg_k != PAD)
    allowed = causal & visible & real
    if sliding_window:
        allowed &= (position_ids[:, :, None] - position_ids[:, None, :]) < sliding_window
    padding_self = (segments == PAD)[:, :, None] & torch.eye(width, dtype=torch.bool, device=segments.device)
    return allowed | padding_self


def attention_mask_4d(packed: PackedPairs, *, implementation: str, dtype: torch.dtype,
                      sliding_window: int | None = None) -> Tensor:
    """The packed rows' mask [R, 1, L, L] in the form transformers' attention `implementation` consumes:
    boolean (True = attend) for "sdpa", additive float (0 or the dtype's minimum) for "eager"."""
    allowed = allowed_attention(packed.segments, packed.position_ids, sliding_window)[:, None]
    if implementation == "sdpa":
        return allowed
    if implementation == "eager":
        mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        return mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    raise ValueError(f"no packed mask for attention implementation {implementation!r}; use the separate layout")
