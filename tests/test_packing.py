"""Shared-prompt packing: the index bookkeeping by hand, and packed log-probs equal to the separate layout's."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest
import torch

from gsil.logprobs import packed_pair_logps, sequence_logps
from gsil.modeling import choose_pair_layout, packed_sliding_window, resolve_pair_layout
from gsil.packing import (FIRST, PAD, PREFIX, SECOND, allowed_attention, attention_mask_4d, common_prefix_length,
                          pack_pairs, packed_length)
from gsil.tokenization import IGNORE_INDEX, pad_batch

transformers = pytest.importorskip("transformers")

VOCAB = 97
X = IGNORE_INDEX


@dataclass
class Seq:
    input_ids: list[int]
    labels: list[int]


def _seq(prompt: list[int], response: list[int]) -> Seq:
    return Seq(prompt + response, [X] * len(prompt) + response)


# ------------------------------------------------------------------------------------------------ bookkeeping


def test_common_prefix_and_packed_length():
    assert common_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix_length([1, 2], [1, 2, 3]) == 2
    assert common_prefix_length([7], [8]) == 0
    assert packed_length([1, 2, 3], [1, 2, 4, 5]) == 5


def test_pack_pairs_hand_worked():
    # prompt [5, 6]; first response [7, 8]; second response [9]. Row: 5 6 | 7 8 | 9, then one pad (width from
    # the other pair: prompt [1], responses [2, 3, 4] and [2, 5] share [1, 2] -> 1 2 | 3 4 | 5 = 5 columns + ...).
    a = (_seq([5, 6], [7, 8]), _seq([5, 6], [9]))
    b = (_seq([1], [2, 3, 4]), _seq([1], [2, 5, 6]))
    packed = pack_pairs([a, b], pad_token_id=0)
    assert packed.input_ids.tolist() == [[5, 6, 7, 8, 9, 0], [1, 2, 3, 4, 5, 6]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 2, 0], [0, 1, 2, 3, 2, 3]]
    assert packed.segments.tolist() == [[PREFIX, PREFIX, FIRST, FIRST, SECOND, PAD],
                                        [PREFIX, PREFIX, FIRST, FIRST, SECOND, SECOND]]
    # (row, predicting column, target, sequence): sequences 0, 1 are the firsts, 2, 3 the seconds.
    scored = list(zip(packed.score_rows.tolist(), packed.score_cols.tolist(), packed.score_targets.tolist(),
                      packed.score_sequences.tolist()))
    assert scored == [
        (0, 1, 7, 0), (0, 2, 8, 0),  # first: 7 predicted by the prompt's last column, 8 by 7's column
        (0, 1, 9, 2),  # second: 9 predicted by the shared prompt's last column too
        (1, 0, 2, 1), (1, 1, 3, 1), (1, 2, 4, 1),  # response token 2 lies in the shared prefix; still scored
        (1, 0, 2, 3), (1, 1, 5, 3), (1, 4, 6, 3),  # 5 from the shared column 1; 6 from 5's column 4
    ]
    assert packed.num_sequences == 4
    assert packed.num_positions == 11


def test_identical_sequences_pack_to_the_prefix_alone():
    seq = _seq([3, 4], [5, 6])
    packed = pack_pairs([(seq, seq)], pad_token_id=0)
    assert packed.input_ids.tolist() == [[3, 4, 5, 6]]
    assert packed.segments.tolist() == [[PREFIX] * 4]
    assert packed.score_sequences.tolist() == [0, 0, 1, 1]


def test_allowed_attention_hides_the_other_branch_and_padding():
    # The second pair is longer, so the first row gets a padding column.
    packed = pack_pairs([(_seq([5, 6], [7, 8]), _seq([5, 6], [9])), (_seq([1], [2, 3, 4]), _seq([1], [5, 6]))],
                        pad_token_id=0)
    allowed = allowed_attention(packed.segments, packed.position_ids)[0].int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0],  # prefix
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],  # first branch: prefix + itself
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],  # second branch: prefix + itself, not the first branch
        [0, 0, 0, 0, 0, 1],  # padding: only itself, so no query row is empty
    ]


def test_sliding_window_limits_how_far_back_a_position_sees():
    packed = pack_pairs([(_seq([1, 2, 3], [4]), _seq([1, 2, 3], [5]))], pad_token_id=0)
    allowed = allowed_attention(packed.segments, packed.position_ids, sliding_window=2)[0].int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 1, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 0, 1],  # position 3 of the second branch sees positions 2 and 3 only
    ]


def test_mask_forms_per_attention_implementation():
    packed = pack_pairs([(_seq([5, 6], [7]), _seq([5, 6], [8, 9]))], pad_token_id=0)
    boolean = attention_mask_4d(packed, implementation="sdpa", dtype=torch.float32)
    additive = attention_mask_4d(packed, implementation="eager", dtype=torch.float32)
    assert boolean.dtype == torch.bool and boolean.shape == (1, 1, 5, 5)
    assert torch.equal(additive == 0, boolean)
    assert float(additive.min()) == torch.finfo(torch.float32).min
    with pytest.raises(ValueError, match="flash_attention_2"):
        attention_mask_4d(packed, implementation="flash_attention_2", dtype=torch.float32)


def test_sliding_window_read_from_the_config():
    config = transformers.MistralConfig(sliding_window=4096)
    assert packed_sliding_window(config) == 4096
    assert packed_sliding_window(transformers.LlamaConfig()) is None
    assert packed_sliding_window(transformers.MistralConfig(sliding_window=None)) is None


# ------------------------------------------------------------------------------------------------ against the model


def _tiny(model_class=None, attn: str = "sdpa", seed: int = 0, **extra):
    model_class = model_class or transformers.LlamaForCausalLM
    config_class = model_class.config_class
    config = config_class(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                          tie_word_embeddings=True, attn_implementation=attn, **extra)
    torch.manual_seed(seed)
    return model_class(config).eval()


def _random_pairs(n: int = 4, seed: int = 0) -> list[tuple[Seq, Seq]]:
    generator = torch.Generator().manual_seed(seed)

    def ints(k: int) -> list[int]:
        return torch.randint(1, VOCAB, (k,), generator=generator).tolist()

    pairs = []
    for i in range(n):
        prompt = ints(3 + i)
        first, second = ints(2 + (i * 3) % 5), ints(1 + (i * 2) % 6)
        if i == 1:
            second = first[:1] + second  # responses that begin alike share more than the prompt
        pairs.append((_seq(prompt, first), _seq(prompt, second)))
    return pairs


def _separate_logps(model, pairs):
    batch = pad_batch([a for a, _ in pairs] + [b for _, b in pairs], pad_token_id=0)
    return sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])


def _assert_packed_equals_separate(model, pairs):
    with torch.no_grad():
        expected, _ = _separate_logps(model, pairs)
        actual, _ = packed_pair_logps(model, pack_pairs(pairs, pad_token_id=0))
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("full_logits", [False, True])
def test_packed_logps_equal_the_separate_layout(attn, full_logits):
    model = _tiny(attn=attn)
    pairs = _random_pairs()
    with torch.no_grad():
        expected, expected_counts = _separate_logps(model, pairs)
        packed = pack_pairs(pairs, pad_token_id=0)
        actual, counts = packed_pair_logps(model, packed, full_logits=full_logits)
    assert torch.equal(counts, expected_counts)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-4)
    assert packed.num_positions < sum(len(a.input_ids) + len(b.input_ids) for a, b in pairs)


@pytest.mark.parametrize("family", ["MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                                    "Phi3ForCausalLM", "GemmaForCausalLM"])
def test_every_packable_family_gives_the_separate_layouts_values(family):
    extra = {"head_dim": 8} if family in ("Qwen3ForCausalLM", "GemmaForCausalLM") else {}
    if family == "Phi3ForCausalLM":
        extra = {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}
    model = _tiny(getattr(transformers, family), **extra)
    assert resolve_pair_layout(model)[0] == "shared-prompt"
    _assert_packed_equals_separate(model, _random_pairs(seed=5))


def test_packed_logps_equal_for_a_sliding_window_model():
    # Windows shorter than the sequences, so the mask's window really cuts.
    _assert_packed_equals_separate(_tiny(transformers.MistralForCausalLM, sliding_window=3), _random_pairs(seed=3))


def test_packed_gradients_equal_the_separate_layout():
    pairs = _random_pairs(seed=1)
    grads = []
    for layout in ("separate", "packed"):
        model = _tiny(attn="eager", seed=2).train()
        if layout == "separate":
            logps, _ = _separate_logps(model, pairs)
        else:
            logps, _ = packed_pair_logps(model, pack_pairs(pairs, pad_token_id=0))
        (logps * torch.linspace(-1, 1, logps.numel())).sum().backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
    for name, expected in grads[0].items():
        torch.testing.assert_close(grads[1][name], expected, rtol=1e-4, atol=1e-5, msg=name)


def test_packed_logps_under_bf16_autocast_stay_close():
    model = _tiny()
    pairs = _random_pairs(seed=4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected, _ = _separate_logps(model, pairs)
        actual, _ = packed_pair_logps(model, pack_pairs(pairs, pad_token_id=0))
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual, expected, rtol=0, atol=0.05)


# ------------------------------------------------------------------------------------------------ layout choice


def test_layout_resolution(caplog):
    assert resolve_pair_layout(_tiny(attn="sdpa")) == ("shared-prompt", "supported")
    assert resolve_pair_layout(_tiny(attn="eager"), "separate") == ("separate", "requested")
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=VOCAB))
    layout, why = resolve_pair_layout(gpt2)
    assert layout == "separate" and "gpt2" in why
    with pytest.raises(ValueError, match="gpt2"):
        resolve_pair_layout(gpt2, "shared-prompt")
    with pytest.raises(ValueError, match="pair layout"):
        resolve_pair_layout(gpt2, "tree")
    from gsil.logutil import GsilError

    with pytest.raises(GsilError, match="--pair-layout shared-prompt"):
        choose_pair_layout(gpt2, "shared-prompt", logging.getLogger("test"))
    with caplog.at_level(logging.INFO):
        assert choose_pair_layout(_tiny(), "auto", logging.getLogger("test")) == "shared-prompt"
    assert "pair layout: shared-prompt" in caplog.text


def test_layers_of_mixed_attention_types_are_not_packed():
    model = _tiny(transformers.Qwen2ForCausalLM, use_sliding_window=True, sliding_window=4, max_window_layers=1)
    layout, why = resolve_pair_layout(model)
    assert layout == "separate" and "attention types" in why
