"""Summed response log-probs of a batch of sequences, and the SFT loss: the hot path of every training step.

`labels` follow the Hugging Face convention: aligned with `input_ids`, the label at position t is the token the
model predicts from position t − 1, and −100 marks what is not scored (prompt and padding). The first position's
label is never scored (nothing predicts it).

Two ways to get there, chosen per call (`full_logits`):

* **head path** (default where it is safe): run the model's own forward with `logits_to_keep=1`, so the output
  head sees one position per sequence, and capture the final hidden states (after the final norm) with a forward
  hook on the model body. Then apply the output head to the rows whose next-token label is real, in chunks of
  `chunk_size` rows, with log-softmax statistics in float32. Prompt and padding positions never reach the head, and
  full-vocabulary float32 logits never exist for more than one chunk. With gradients on and more rows than one
  chunk, each chunk is recomputed in the backward pass (non-reentrant activation checkpointing), so memory stays
  at one chunk's logits instead of all of them. Calling the model itself (not its body) keeps wrappers working:
  DistributedDataParallel sees an ordinary forward and its gradient sync is untouched; PEFT/LoRA adapters run
  where they are (a LoRA on the head is applied too, because the head module itself is called).
  The final hidden state is taken from a hook on the body rather than from `output_hidden_states=True`: in
  transformers 5, `hidden_states[-1]` is the body's `last_hidden_state` (post final norm; `capture_outputs`
  ties them), but asking for it also keeps every layer's hidden state alive until the call returns, which under
  `no_grad` (reference scoring) costs more memory than the logits it saves.
* **full-logits path** (`full_logits=True`): an ordinary forward that returns all logits, then the same chunked
  float32 log-softmax over the real positions only. Use it when the output head's weight is not a usable tensor
  outside the forward: DeepSpeed ZeRO-3 and FSDP shard parameters and gather them only inside the forward. It is
  also needed for models whose logits are post-processed after the head (Gemma-2's final soft-capping, Cohere's
  `logit_scale`, Granite's `logits_scaling`) and under `nn.DataParallel` (replicated bodies). With
  `full_logits=None` (the default) these cases are detected and the full path is taken automatically; otherwise
  the head path. DDP, DeepSpeed ZeRO-1/2, torch.compile and PEFT keep the head path.

Autocast: the head path applies the output head in the caller's autocast context. Call `sequence_logps` inside
the same context as the forward (`with accelerator.autocast():` or `torch.autocast(...)`); if the forward alone is
autocast (accelerate's `prepare` patches `forward` that way) the head runs in the parameters' dtype, which is
correct but slower.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from gsil.modeling import model_wrappers, packed_sliding_window, unwrap_model
from gsil.packing import PackedPairs, attention_mask_4d
from gsil.tokenization import IGNORE_INDEX

__all__ = ["packed_pair_logps", "sequence_logps", "sft_loss"]

DEFAULT_CHUNK_SIZE = 1024

# Config attributes of models that transform the logits after the output head; their logits need the full path.
_LOGIT_POSTPROCESSING = {
    "final_logit_softcapping": None,  # Gemma 2/3: tanh soft cap, disabled when None
    "logit_scale": 1.0,  # Cohere: multiplies the logits
    "logits_scaling": 1.0,  # Granite: divides the logits
}


def sequence_logps(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    labels: Tensor,
    *,
    full_logits: bool | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[Tensor, Tensor]:
    """Summed log-probs [B] (float32) of the tokens whose label is not −100, and their count [B] (int64).

    `model` is a Hugging Face causal LM, possibly wrapped (DDP, PEFT). `full_logits`: None picks the head path
    unless the model is sharded or post-processes its logits (module docstring), True forces the plain-forward
    path, False forces the head path. `chunk_size` bounds how many rows of full-vocabulary float32 logits exist at
    once. Differentiable with respect to the model's parameters when gradients are enabled.
    """
    if input_ids.shape != labels.shape or input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
        raise ValueError(
            "input_ids, attention_mask and labels must be [batch, length] of one shape, got "
            f"{tuple(input_ids.shape)}, {tuple(attention_mask.shape)}, {tuple(labels.shape)}"
        )
    # Position t − 1 predicts label t: drop the first label and the last position.
    targets = labels[:, 1:]
    scored = targets != IGNORE_INDEX
    counts = scored.sum(dim=-1)
    rows, cols = scored.nonzero(as_tuple=True)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    logps = _scored_logps(model, inputs, rows, cols, targets[scored], rows, input_ids.shape[0],
                          full_logits=full_logits, chunk_size=chunk_size)
    return logps, counts


def packed_pair_logps(
    model: nn.Module,
    packed: PackedPairs,
    *,
    full_logits: bool | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[Tensor, Tensor]:
    """`sequence_logps` of the [firsts; seconds] sequences of pairs packed by `gsil.packing.pack_pairs`: one row
    per pair, the shared prompt run once. Same return values, in the separate layout's order. The model must
    support the layout (`gsil.modeling.resolve_pair_layout`)."""
    language_model = unwrap_model(model)
    config = language_model.config
    mask = attention_mask_4d(packed, implementation=config._attn_implementation,
                             dtype=language_model.get_input_embeddings().weight.dtype,
                             sliding_window=packed_sliding_window(config))
    inputs = {"input_ids": packed.input_ids, "attention_mask": mask, "position_ids": packed.position_ids}
    n = packed.num_sequences
    logps = _scored_logps(model, inputs, packed.score_rows, packed.score_cols, packed.score_targets,
                          packed.score_sequences, n, full_logits=full_logits, chunk_size=chunk_size)
    counts = torch.bincount(packed.score_sequences, minlength=n)
    return logps, counts


def sft_loss(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    labels: Tensor,
    *,
    full_logits: bool | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[Tensor, Tensor]:
    """Token-mean negative log-likelihood over all labelled tokens of the batch (scalar, float32), and their count.

    The mean is over tokens, not sequences (as Hugging Face's causal-LM loss); a batch with no labelled token gives
    0 rather than NaN. With gradient accumulation the caller can reweight micro-batches by the returned count.
    """
    logps, counts = sequence_logps(
        model, input_ids, attention_mask, labels, full_logits=full_logits, chunk_size=chunk_size
    )
    total = counts.sum()
    return -logps.sum() / total.clamp(min=1), total


# ----------------------------------------------------------------------------------------------------------------


def _scored_logps(
    model: nn.Module,
    inputs: dict[str, Tensor],
    rows: Tensor,
    cols: Tensor,
    targets: Tensor,
    sequences: Tensor,
    num_sequences: int,
    *,
    full_logits: bool | None,
    chunk_size: int,
) -> Tensor:
    """Summed log-prob per sequence [num_sequences] (float32) of each `targets[i]` predicted by the position at
    (rows[i], cols[i]) of the forward over `inputs`, added into sequence `sequences[i]`."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    language_model, wrapper_needs_full_logits = _unwrap(model)
    if full_logits is None:
        full_logits = wrapper_needs_full_logits or _needs_full_logits(language_model)
    vocab_size = _vocab_size(language_model)
    if targets.numel() and (int(targets.min()) < 0 or (vocab_size and int(targets.max()) >= vocab_size)):
        raise ValueError(
            f"labels must be token ids in [0, {vocab_size}) or {IGNORE_INDEX}, got values in "
            f"[{int(targets.min())}, {int(targets.max())}]"
        )
    length = inputs["input_ids"].shape[1]
    if full_logits:
        logits = model(**inputs, use_cache=False).logits
        # Prefix-style adapters (prompt tuning) prepend virtual positions; the input's own are the last `length`.
        selected = logits[:, -length:][rows, cols]
        token_logps = _target_logps(selected, targets, lambda chunk: chunk, chunk_size)
    else:
        hidden = _final_hidden_states(model, language_model, inputs)
        selected = hidden[:, -length:][rows, cols]
        head = language_model.get_output_embeddings()
        token_logps = _target_logps(selected, targets, _head_fn(head), chunk_size)
    logps = torch.zeros(num_sequences, dtype=torch.float32, device=token_logps.device)
    return logps.index_add(0, sequences.to(token_logps.device), token_logps)


def _unwrap(model: nn.Module) -> tuple[nn.Module, bool]:
    """The Hugging Face model inside DDP / DataParallel / DeepSpeed / FSDP / torch.compile / PEFT wrappers
    (`gsil.modeling.model_wrappers`), and whether the head path is unsafe because of a wrapper: FSDP shards the
    parameters outside the forward, and DataParallel runs replicas of the body, whose hidden states one hook cannot
    put back together. (DeepSpeed ZeRO-3 is caught by `_head_is_sharded`.)"""
    chain = model_wrappers(model)
    inner = chain[-1]
    unsafe = any(isinstance(wrapper, nn.DataParallel) or type(wrapper).__name__ == "FullyShardedDataParallel"
                 for wrapper in chain[:-1])
    return inner, unsafe or _head_is_sharded(inner)


def _head_is_sharded(language_model: nn.Module) -> bool:
    """True when the output head's weight is a placeholder outside the forward (ZeRO-3: an empty tensor with a
    `ds_id`; FSDP2: a DTensor), so only the model's own forward can apply it."""
    get_head = getattr(language_model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    weight = getattr(head, "weight", None)
    if not isinstance(weight, Tensor):
        return True  # no head we can apply ourselves
    if hasattr(weight, "ds_id") or weight.numel() == 0 or weight.dim() != 2:
        return True
    return type(weight).__name__ == "DTensor"


def _needs_full_logits(language_model: nn.Module) -> bool:
    """True when the head path cannot reproduce the model's logits: the logits are post-processed after the head,
    the model has no separate body to hook, or its forward cannot skip the head (no `logits_to_keep`)."""
    config = getattr(language_model, "config", None)
    for attribute, neutral in _LOGIT_POSTPROCESSING.items():
        value = getattr(config, attribute, neutral)
        if value is not None and value != neutral:
            return True
    body = getattr(language_model, "base_model", None)
    if not isinstance(body, nn.Module) or body is language_model:
        return True
    return "logits_to_keep" not in inspect.signature(language_model.forward).parameters


def _vocab_size(language_model: nn.Module) -> int | None:
    head = language_model.get_output_embeddings() if hasattr(language_model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if isinstance(weight, Tensor) and weight.dim() == 2 and weight.numel():
        return weight.shape[0]
    return getattr(getattr(language_model, "config", None), "vocab_size", None)


def _final_hidden_states(model: nn.Module, language_model: nn.Module, inputs: dict[str, Tensor]) -> Tensor:
    """[B, T, H] output of the model body (after its final norm), from a forward of the (possibly wrapped) model
    that applies the head to the last position only."""
    captured: list[Tensor] = []

    def keep_last_hidden_state(module: nn.Module, args: tuple, output) -> None:
        hidden = getattr(output, "last_hidden_state", None)
        captured.append(hidden if hidden is not None else output[0])

    handle = language_model.base_model.register_forward_hook(keep_last_hidden_state)
    try:
        model(**inputs, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(
            f"the body of {type(language_model).__name__} did not run during its forward; use full_logits=True"
        )
    return captured[-1]


def _head_fn(head: nn.Module):
    """The output head as a function of hidden rows, casting the rows to the head's dtype when no autocast is
    active (a bf16 model body under an fp32 head, or the reverse, would otherwise fail in the matmul)."""
    weight = getattr(head, "weight", None)

    def apply(rows: Tensor) -> Tensor:
        if (
            isinstance(weight, Tensor)
            and rows.dtype != weight.dtype
            and not torch.is_autocast_enabled(rows.device.type)
        ):
            rows = rows.to(weight.dtype)
        return head(rows)

    return apply


def _target_logps(rows: Tensor, targets: Tensor, to_logits, chunk_size: int) -> Tensor:
    """log softmax(to_logits(rows))[targets] in float32, `chunk_size` rows at a time.

    Without gradients each chunk's logits are freed before the next. With gradients and more than one chunk, each
    chunk is checkpointed: only its input rows are kept and its logits are recomputed in the backward pass, so the
    saved float32 logits never exceed one chunk (the price: one more head matmul per chunk). A single chunk is not
    checkpointed, because its saved logits are already within the bound.
    """

    def chunk_logps(chunk_rows: Tensor, chunk_targets: Tensor) -> Tensor:
        # cross_entropy runs log-softmax and its backward as single fused kernels (about 25% faster here than
        # gather minus logsumexp, whose backward takes several passes over the logits).
        return -torch.nn.functional.cross_entropy(to_logits(chunk_rows).float(), chunk_targets, reduction="none")

    if rows.shape[0] <= chunk_size:
        return chunk_logps(rows, targets)
    pieces = zip(rows.split(chunk_size), targets.split(chunk_size))
    if torch.is_grad_enabled():
        return torch.cat([checkpoint(chunk_logps, r, t, use_reentrant=False) for r, t in pieces])
    return torch.cat([chunk_logps(r, t) for r, t in pieces])
