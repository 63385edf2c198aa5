"""Masked sequence log-probs and the SFT loss against a naive full-logits computation on tiny random models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gsil.logprobs import sequence_logps, sft_loss
from gsil.tokenization import IGNORE_INDEX

transformers = pytest.importorskip("transformers")

VOCAB = 97


def _tiny_llama(tie: bool = True, seed: int = 0):
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tiny_llama():
    return _tiny_llama()


def _batch(padding_side: str, seed: int = 0, batch: int = 5, length: int = 14):
    """Random token ids with a random prompt length and a random amount of padding per row; labels are the ids on
    the response tokens and −100 on prompt and padding (HF convention: aligned with input_ids)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, (batch, length), generator=generator)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    labels = torch.full((batch, length), IGNORE_INDEX)
    for row in range(batch):
        padding = int(torch.randint(0, 5, (), generator=generator))
        prompt = int(torch.randint(1, 6, (), generator=generator))
        real = slice(padding, length) if padding_side == "left" else slice(0, length - padding)
        start = real.start
        attention_mask[row] = 0
        attention_mask[row, real] = 1
        labels[row, start + prompt : real.stop] = input_ids[row, start + prompt : real.stop]
    labels[-1] = IGNORE_INDEX  # one row with nothing to score
    return input_ids, attention_mask, labels


def _naive_logps(model, input_ids, attention_mask, labels):
    """The textbook computation: every position's full-vocabulary float32 log-softmax, then mask and sum."""
    log_probs = model(input_ids=input_ids, attention_mask=attention_mask).logits.float().log_softmax(-1)
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    picked = log_probs[:, :-1].gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    return (picked * mask).sum(-1), mask.sum(-1)


PATHS = [
    pytest.param({"full_logits": False}, id="head"),
    pytest.param({"full_logits": False, "chunk_size": 4}, id="head-chunked"),
    pytest.param({"full_logits": True}, id="full"),
    pytest.param({"full_logits": True, "chunk_size": 4}, id="full-chunked"),
    pytest.param({}, id="auto"),
]


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("options", PATHS)
def test_masked_logps_equal_naive_full_logits(tiny_llama, padding_side, options):
    batch = _batch(padding_side)
    expected, expected_counts = _naive_logps(tiny_llama, *batch)
    logps, counts = sequence_logps(tiny_llama, *batch, **options)
    assert logps.dtype == torch.float32 and logps.shape == (5,)
    assert torch.equal(counts, expected_counts)
    assert counts[-1] == 0 and logps[-1] == 0
    torch.testing.assert_close(logps, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("options", PATHS)
def test_masked_logps_under_bf16_autocast(tiny_llama, options):
    batch = _batch("right", seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, _ = _naive_logps(tiny_llama, *batch)
        logps, _ = sequence_logps(tiny_llama, *batch, **options)
    assert logps.dtype == torch.float32
    # Both sides use bf16 matmuls; they differ only in how the matmuls are blocked. Sums of ~10 tokens of
    # log-probs around −4.6 (log 97): 0.05 is well below one token's bf16 rounding of a logit.
    torch.testing.assert_close(logps, expected, rtol=0, atol=5e-2)
    full_precision, _ = _naive_logps(tiny_llama, *batch)
    torch.testing.assert_close(logps, full_precision, rtol=0, atol=0.2)


def _parameter_gradients(model, compute):
    model.zero_grad(set_to_none=True)
    weights = torch.linspace(0.5, 1.5, 5)  # distinct per-sequence weights, as a loss would give
    (compute() * weights).sum().backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("options", PATHS)
def test_gradients_equal_naive(tie, options):
    # chunk_size 4 < the batch's scored tokens, so the chunked cases run the checkpointed backward.
    model = _tiny_llama(tie=tie)
    batch = _batch("left", seed=2)
    expected = _parameter_gradients(model, lambda: _naive_logps(model, *batch)[0])
    actual = _parameter_gradients(model, lambda: sequence_logps(model, *batch, **options)[0])
    assert set(actual) == set(expected)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_checkpointed_chunks_backward_under_bf16_autocast():
    # The recomputation in the backward pass must run under the forward's autocast state, or the recomputed
    # logits (and so the gradients) would differ from the ones the forward used.
    model = _tiny_llama(seed=8)
    batch = _batch("right", seed=8)

    def under_autocast(compute):
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return compute()

        return run

    expected = _parameter_gradients(model, under_autocast(lambda: _naive_logps(model, *batch)[0]))
    actual = _parameter_gradients(model, under_autocast(lambda: sequence_logps(model, *batch, chunk_size=4)[0]))
    assert set(actual) == set(expected)
    for name in expected:
        scale = expected[name].abs().max().item()
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0.01 * scale + 1e-6, msg=name)


def test_no_grad_chunks_match(tiny_llama):
    batch = _batch("right", seed=3)
    with torch.no_grad():
        whole, _ = sequence_logps(tiny_llama, *batch)
        chunked, _ = sequence_logps(tiny_llama, *batch, chunk_size=3)
    assert not chunked.requires_grad
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-5)


def test_sft_loss_is_token_mean_cross_entropy(tiny_llama):
    input_ids, attention_mask, labels = _batch("right", seed=4)
    loss, count = sft_loss(tiny_llama, input_ids, attention_mask, labels)
    logits = tiny_llama(input_ids=input_ids, attention_mask=attention_mask).logits
    expected = F.cross_entropy(
        logits[:, :-1].reshape(-1, VOCAB).float(), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )
    assert count == (labels[:, 1:] != IGNORE_INDEX).sum()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_sft_loss_without_labelled_tokens_is_zero_not_nan(tiny_llama):
    input_ids, attention_mask, labels = _batch("right")
    loss, count = sft_loss(tiny_llama, input_ids, attention_mask, torch.full_like(labels, IGNORE_INDEX))
    assert count == 0 and loss.item() == 0.0


def test_bad_shapes_and_labels_are_rejected(tiny_llama):
    input_ids, attention_mask, labels = _batch("right")
    with pytest.raises(ValueError, match="one shape"):
        sequence_logps(tiny_llama, input_ids, attention_mask, labels[:, :-1])
    bad = labels.clone()
    bad[0, -1] = VOCAB
    with pytest.raises(ValueError, match=r"\[0, 97\)"):
        sequence_logps(tiny_llama, input_ids, attention_mask, bad)
    with pytest.raises(ValueError, match="chunk_size"):
        sequence_logps(tiny_llama, input_ids, attention_mask, labels, chunk_size=0)


def test_logit_softcapping_model_takes_the_full_path_automatically():
    # Gemma 2 soft-caps its logits after the head; the head path would miss the cap, so auto must avoid it.
    config = transformers.Gemma2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        final_logit_softcapping=0.5,  # small, so capping changes every log-prob noticeably
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = transformers.Gemma2ForCausalLM(config).eval()
    batch = _batch("right", seed=5)
    with torch.no_grad():
        expected, _ = _naive_logps(model, *batch)
        automatic, _ = sequence_logps(model, *batch)
        forced_head, _ = sequence_logps(model, *batch, full_logits=False)
    torch.testing.assert_close(automatic, expected, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(forced_head, expected, atol=1e-2), "the cap must matter in this test"


def test_lora_wrapped_model():
    peft = pytest.importorskip("peft")
    model = _tiny_llama(seed=6)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = peft.get_peft_model(model, lora)
    batch = _batch("left", seed=6)
    expected = _parameter_gradients(model, lambda: _naive_logps(model, *batch)[0])
    actual = _parameter_gradients(model, lambda: sequence_logps(model, *batch)[0])
    assert set(actual) == set(expected) and all("lora_" in name for name in actual)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_ddp_wrapped_model_keeps_gradient_sync(tmp_path):
    # One-process gloo group: DDP's reducer still checks, at the next forward, that the previous backward gave
    # every parameter a gradient; applying the head outside the forward must not break that.
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        plain = _tiny_llama(seed=7)
        wrapped = torch.nn.parallel.DistributedDataParallel(_tiny_llama(seed=7))
        reduced_numel = []

        def count_reduced(state, bucket):  # an identity all-reduce that records what was synchronised
            reduced_numel.append(bucket.buffer().numel())
            future = torch.futures.Future()
            future.set_result(bucket.buffer())
            return future

        wrapped.register_comm_hook(None, count_reduced)
        trainable_numel = sum(p.numel() for p in wrapped.module.parameters() if p.requires_grad)
        batch = _batch("right", seed=7)
        for _ in range(2):  # the second forward raises if the first backward left a reduction unfinished
            reduced_numel.clear()
            expected = _parameter_gradients(plain, lambda: sequence_logps(plain, *batch)[0])
            actual = _parameter_gradients(wrapped.module, lambda: sequence_logps(wrapped, *batch)[0])
            assert sum(reduced_numel) == trainable_numel, "every gradient must go through DDP's all-reduce"
        assert set(actual) == set(expected)
        for name in expected:
            torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)
    finally:
        dist.destroy_process_group()


def test_wrappers_are_unwrapped_and_data_parallel_takes_the_full_path(tiny_llama):
    from gsil.logprobs import _unwrap
    from gsil.modeling import model_wrappers, unwrap_model

    compiled = torch.compile(tiny_llama)  # wraps only; nothing compiles until it is called
    assert unwrap_model(tiny_llama) is tiny_llama and model_wrappers(tiny_llama) == [tiny_llama]
    assert model_wrappers(compiled) == [compiled, tiny_llama] and unwrap_model(compiled) is tiny_llama
    assert _unwrap(tiny_llama) == (tiny_llama, False) and _unwrap(compiled) == (tiny_llama, False)
    if not torch.cuda.is_available():  # without CUDA, DataParallel only wraps
        data_parallel = torch.nn.DataParallel(compiled)
        assert model_wrappers(data_parallel) == [data_parallel, compiled, tiny_llama]
        assert _unwrap(data_parallel) == (tiny_llama, True)  # replicas of the body: one hook cannot see them all
