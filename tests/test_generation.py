"""Self-generation (`gsil generate`): row/id bookkeeping, determinism, resume, stop tokens, empty generations, the
vLLM request building (without vLLM) and the transformers backend on a tiny random Llama."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from gsil.generation import (
    VLLM_EXTRA_HINT,
    DistributedInfo,
    GenerateConfig,
    GenerationResult,
    SamplingSettings,
    TransformersGenerator,
    check_ids,
    clean_generation,
    import_vllm,
    left_pad,
    length_sorted_batches,
    meta_path_for,
    prompt_seed,
    result_from_vllm,
    run_generation,
    shard_dir_for,
    shard_path,
    shard_ranges,
    split_at_stop,
    vllm_requests,
    vllm_sampling_kwargs,
)
from gsil.logutil import GsilError

PROMPTS = [
    "What is 2 + 3?",
    "Tom has 4 apples and buys 7 more. How many apples does he have now?",
    "Add 10 and 5.",
    "A train travels 8 miles every hour for 3 hours. How far does it go?",
    "Half of 18?",
    "Nora shares 12 candies equally among 3 friends. How many does each get?",
    "9 - 4 = ?",
]


# --------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from gsil.modeling import build_random_model

    path = tmp_path_factory.mktemp("generation") / "tiny"
    build_random_model(path, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, seed=0)
    return path


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from gsil.modeling import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from gsil.modeling import load_model

    return load_model(tiny_model_dir)


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "selfplay.jsonl"
    rows = [{"id": f"p{i:02d}", "prompt": p, "response": f"answer {i}", "extra": i} for i, p in enumerate(PROMPTS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class CountingGenerator:
    """Wraps a generator and records the prompts it was asked for (to prove finished shards are not redone)."""

    def __init__(self, inner):
        self.inner = inner
        self.backend = inner.backend
        self.calls: list[int] = []

    def generate(self, prompts, on_batch=None, seeds=None):
        self.calls.append(len(prompts))
        return self.inner.generate(prompts, on_batch=on_batch, seeds=seeds)


def make_generator(model, tokenizer, *, max_new_tokens=5, stop_token_ids=None, batch_size=3, **sampling):
    from gsil.generation import stop_token_ids_for

    settings = SamplingSettings(max_new_tokens=max_new_tokens, **sampling)
    stops = stop_token_ids if stop_token_ids is not None else stop_token_ids_for(tokenizer)
    return TransformersGenerator(model, tokenizer, settings, stop_token_ids=stops, batch_size=batch_size)


def config_for(tiny_model_dir, prompts_file, output, **kwargs) -> GenerateConfig:
    kwargs.setdefault("sampling", SamplingSettings(max_new_tokens=5))
    kwargs.setdefault("shard_size", 3)
    kwargs.setdefault("batch_size", 3)
    kwargs.setdefault("progress", False)
    return GenerateConfig(model=str(tiny_model_dir), prompts=str(prompts_file), output=str(output), **kwargs)


# --------------------------------------------------------------------------------------------------- pure helpers


def test_split_at_stop_cuts_at_first_stop_and_counts_it():
    assert split_at_stop([5, 6, 2, 2, 2], [2]) == ([5, 6], 3, True)
    assert split_at_stop([5, 6, 7], [2, 0]) == ([5, 6, 7], 3, False)
    assert split_at_stop([0, 9], [2, 0]) == ([], 1, True)


def test_clean_generation_strips_special_tokens_and_whitespace():
    assert clean_generation("  Hello</s>\n", ["</s>"]) == "Hello"
    assert clean_generation("<|im_end|>  ", ["<|im_end|>"]) == ""
    assert clean_generation(" a b ") == "a b"


def test_length_sorted_batches_longest_first_ties_in_input_order():
    assert length_sorted_batches([3, 9, 3, 5, 9], 2) == [[1, 4], [3, 0], [2]]
    with pytest.raises(GsilError):
        length_sorted_batches([1], 0)


def test_left_pad_right_aligns_rows():
    ids, mask = left_pad([[7, 8, 9], [4]], pad_token_id=0)
    assert ids.tolist() == [[7, 8, 9], [0, 0, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_shard_ranges_and_paths(tmp_path):
    assert [list(r) for r in shard_ranges(7, 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert shard_path(tmp_path, 3).name == "shard-00003.jsonl"
    assert shard_dir_for(tmp_path / "gen.jsonl").name == "gen.jsonl.shards"
    assert meta_path_for(tmp_path / "g" / "sft.jsonl") == tmp_path / "g" / "sft.meta.json"


def test_check_ids_names_duplicates_and_missing():
    check_ids(["a", "b"], ["a", "b"], "x")
    with pytest.raises(GsilError, match=r"1 duplicate id\(s\) \(e.g. 'a'\); 1 missing id\(s\) \(e.g. 'b'\)"):
        check_ids(["a", "a"], ["a", "b"], "merge")


def test_sampling_settings_validate():
    assert SamplingSettings().greedy
    assert not SamplingSettings(temperature=0.7).greedy
    for bad in ({"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"max_new_tokens": 0}):
        with pytest.raises(GsilError):
            SamplingSettings(**bad)


# --------------------------------------------------------------------------------------------------- vLLM (no GPU)


def test_vllm_sampling_kwargs_greedy_and_sampled():
    greedy = vllm_sampling_kwargs(SamplingSettings(max_new_tokens=256, top_p=0.5, seed=3), [2, 0], seed=77)
    assert greedy == {"n": 1, "temperature": 0.0, "top_p": 1.0, "top_k": -1, "max_tokens": 256,
                      "stop_token_ids": [2, 0], "seed": 77, "skip_special_tokens": True}
    sampled = vllm_sampling_kwargs(SamplingSettings(max_new_tokens=8, temperature=0.7, top_p=0.9), [2], seed=5)
    assert (sampled["temperature"], sampled["top_p"], sampled["max_tokens"], sampled["seed"]) == (0.7, 0.9, 8, 5)


def test_vllm_requests_are_token_prompts():
    assert vllm_requests([[1, 2, 3], (4,)]) == [{"prompt_token_ids": [1, 2, 3]}, {"prompt_token_ids": [4]}]
    with pytest.raises(GsilError, match="prompt 1 has no tokens"):
        vllm_requests([[1], []])


def test_result_from_vllm_reads_text_tokens_and_finish_reason():
    def output(text, token_ids, reason):
        return types.SimpleNamespace(outputs=[types.SimpleNamespace(text=text, token_ids=token_ids,
                                                                    finish_reason=reason)])

    assert result_from_vllm(output(" 7 </s>", [5, 6, 2], "stop"), ["</s>"]) == GenerationResult("7", 3, True)
    assert result_from_vllm(output("abc", [1] * 4, "length")) == GenerationResult("abc", 4, False)


def _vllm_importable() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(_vllm_importable(), reason="vllm is installed here")
def test_missing_vllm_gives_clear_error(tmp_path, prompts_file, tiny_model_dir, capsys):
    with pytest.raises(GsilError, match=r"pip install -e \.\[vllm\]"):
        import_vllm()
    from gsil.cli import main

    rc = main(["generate", "--model", str(tiny_model_dir), "--prompts", str(prompts_file),
               "--output", str(tmp_path / "out.jsonl"), "--backend", "vllm", "--no-progress"])
    assert rc == 1
    assert VLLM_EXTRA_HINT in capsys.readouterr().err


def test_vllm_backend_wiring_with_a_stand_in_module(monkeypatch, tmp_path, prompts_file, tiny_model_dir, tokenizer):
    """The whole vllm path of `run_generation` against a stand-in `vllm` module that records what it is given (an
    `LLM` without the engine interface: one `generate` call with every prompt; tests/test_vllm_streaming.py covers
    the engine path)."""
    seen: dict = {"calls": 0}

    class FakeLLM:
        def __init__(self, **kwargs):
            seen["llm"] = kwargs

        def generate(self, requests, sampling_params, use_tqdm=True):
            seen["calls"] += 1
            seen.setdefault("requests", []).extend(requests)
            seen["params"] = sampling_params
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(
                text=f" out {len(r['prompt_token_ids'])} ", token_ids=[11, 12], finish_reason="stop")])
                for r in requests]

    fake = types.ModuleType("vllm")
    fake.LLM = FakeLLM
    fake.SamplingParams = lambda **kwargs: kwargs
    monkeypatch.setitem(sys.modules, "vllm", fake)

    output = tmp_path / "vllm.jsonl"
    config = config_for(tiny_model_dir, prompts_file, output, backend="vllm", tensor_parallel_size=2,
                        precision="bf16", sampling=SamplingSettings(max_new_tokens=16, seed=5))
    meta = run_generation(config, tokenizer=tokenizer)
    assert seen["llm"] == {"model": str(tiny_model_dir), "tokenizer": str(tiny_model_dir),
                           "tensor_parallel_size": 2, "dtype": "bfloat16", "seed": 5}
    assert seen["calls"] == 1  # all 3 shards' prompts in one call
    params = seen["params"]
    assert len(params) == len(PROMPTS)  # one SamplingParams per prompt
    assert all(p["max_tokens"] == 16 and p["temperature"] == 0.0 for p in params)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in params[0]["stop_token_ids"]
    assert [p["seed"] for p in params] == [prompt_seed(5, f"p{i:02d}") for i in range(len(PROMPTS))]
    from gsil.tokenization import encode_prompt

    expected_ids = [encode_prompt(tokenizer, p)[0] for p in PROMPTS]
    assert [r["prompt_token_ids"] for r in seen["requests"]] == expected_ids
    rows = read_rows(output)
    assert [r["generated"] for r in rows] == [f"out {len(ids)}" for ids in expected_ids]
    assert meta["backend"] == "vllm" and meta["tensor_parallel_size"] == 2
    assert meta["tokens_generated"] == 2 * len(PROMPTS)


# --------------------------------------------------------------------------------------------------- transformers


def test_rows_match_input_ids_in_order(tmp_path, prompts_file, tiny_model_dir, tokenizer, tiny_model):
    output = tmp_path / "gen" / "sft.jsonl"
    config = config_for(tiny_model_dir, prompts_file, output)
    meta = run_generation(config, tokenizer=tokenizer, generator=make_generator(tiny_model, tokenizer))
    rows = read_rows(output)
    inputs = read_rows(prompts_file)
    assert [r["id"] for r in rows] == [r["id"] for r in inputs]
    assert [(r["prompt"], r["real"], r["extra"]) for r in rows] == [(r["prompt"], r["response"], r["extra"])
                                                                    for r in inputs]
    assert all(isinstance(r["generated"], str) and 1 <= r["generated_tokens"] <= 5 for r in rows)
    from gsil.records import read_records

    read_records(output, "selfplay")  # valid records
    assert not shard_dir_for(output).exists()
    on_disk = json.loads(meta_path_for(output).read_text())
    assert on_disk["counts"]["rows"] == len(PROMPTS)
    assert on_disk["counts"]["shards"] == 3
    assert on_disk["sampling"] == {"max_new_tokens": 5, "temperature": 0.0, "top_p": 1.0, "seed": 0, "greedy": True}
    assert on_disk["tokens_generated"] == sum(r["generated_tokens"] for r in rows)
    assert on_disk["counts"]["truncated_at_max_tokens"] == sum(not r["finished"] for r in rows)
    assert "packages" in on_disk["run_info"]


def test_greedy_is_deterministic_and_batch_independent(tmp_path, prompts_file, tiny_model_dir, tokenizer,
                                                       tiny_model):
    outputs = []
    for name, batch_size in (("a", 3), ("b", 3), ("c", 1)):
        output = tmp_path / f"{name}.jsonl"
        run_generation(config_for(tiny_model_dir, prompts_file, output, batch_size=batch_size),
                       tokenizer=tokenizer, generator=make_generator(tiny_model, tokenizer, batch_size=batch_size))
        outputs.append([r["generated"] for r in read_rows(output)])
    assert outputs[0] == outputs[1]
    # Left padding with the attention mask must not change what a prompt generates (fp32).
    assert outputs[0] == outputs[2]


def test_sampling_is_seeded(tmp_path, prompts_file, tiny_model_dir, tokenizer, tiny_model):
    def sample(name, seed):
        settings = SamplingSettings(max_new_tokens=5, temperature=1.0, seed=seed)
        output = tmp_path / f"{name}.jsonl"
        run_generation(config_for(tiny_model_dir, prompts_file, output, sampling=settings), tokenizer=tokenizer,
                       generator=make_generator(tiny_model, tokenizer, temperature=1.0, seed=seed))
        return [r["generated"] for r in read_rows(output)]

    first = sample("s1", 1)
    assert sample("s1b", 1) == first
    assert sample("s2", 2) != first


def test_prompt_seed_is_a_stable_31_bit_hash_of_seed_and_id():
    import hashlib

    assert prompt_seed(0, "p00") == int(hashlib.sha256(b"0:p00").hexdigest()[:8], 16) & 0x7FFFFFFF
    seeds = [prompt_seed(7, f"p{i:02d}") for i in range(100)]
    assert len(set(seeds)) == 100 and all(0 <= s < 2**31 for s in seeds)
    assert prompt_seed(7, "p03") == seeds[3] and prompt_seed(8, "p03") != seeds[3]


def test_gumbel_noise_rows_depend_only_on_their_own_seed():
    import torch

    from gsil.generation import PerPromptGumbelNoise

    scores = torch.zeros(2, 50)
    both = PerPromptGumbelNoise([5, 9], "cpu")
    alone = PerPromptGumbelNoise([9], "cpu")
    for _ in range(3):  # every decoding step draws the next noise of each row's own stream
        pair, single = both(None, scores), alone(None, scores[:1])
        assert torch.equal(pair[1], single[0]) and not torch.equal(pair[0], pair[1])


def test_sampling_is_per_prompt_whatever_the_batches_and_shards(tmp_path, prompts_file, tiny_model_dir, tokenizer,
                                                                tiny_model):
    """A prompt's sample depends on (seed, its id) only: batch size, shard size and OOM retries change nothing."""
    settings = SamplingSettings(max_new_tokens=5, temperature=1.0, top_p=0.9, seed=3)
    files = []
    for name, batch_size, shard_size in (("a", 3, 3), ("b", 1, 2), ("c", 7, 7)):
        output = tmp_path / f"{name}.jsonl"
        run_generation(config_for(tiny_model_dir, prompts_file, output, sampling=settings, batch_size=batch_size,
                                  shard_size=shard_size), tokenizer=tokenizer,
                       generator=make_generator(tiny_model, tokenizer, batch_size=batch_size, temperature=1.0,
                                                top_p=0.9, seed=3))
        files.append(output.read_bytes())
        meta = json.loads(meta_path_for(output).read_text())
        assert meta["seeding"]["scheme"] == "per-prompt"
    assert files[0] == files[1] == files[2]
    greedy = run_generation(config_for(tiny_model_dir, prompts_file, tmp_path / "g.jsonl"), tokenizer=tokenizer,
                            generator=make_generator(tiny_model, tokenizer))
    assert greedy is not None and read_rows(tmp_path / "g.jsonl") != read_rows(tmp_path / "a.jsonl")


def test_same_prompt_under_different_ids_samples_differently(tmp_path, tiny_model_dir, tokenizer, tiny_model):
    path = tmp_path / "same.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": PROMPTS[0], "response": "5"}) + "\n"
                            for i in range(4)), encoding="utf-8")
    output = tmp_path / "out.jsonl"
    run_generation(config_for(tiny_model_dir, path, output, sampling=SamplingSettings(max_new_tokens=5,
                                                                                       temperature=1.0)),
                   tokenizer=tokenizer, generator=make_generator(tiny_model, tokenizer, temperature=1.0))
    texts = [r["generated"] for r in read_rows(output)]
    assert len(set(texts)) > 1  # one noise stream per prompt, not one shared by all


def test_resume_after_kill_skips_finished_shards(tmp_path, prompts_file, tiny_model_dir, tokenizer, tiny_model):
    reference_output = tmp_path / "uninterrupted.jsonl"
    run_generation(config_for(tiny_model_dir, prompts_file, reference_output), tokenizer=tokenizer,
                   generator=make_generator(tiny_model, tokenizer))

    class Killed(Exception):
        pass

    def kill_after_two(index):
        if index == 1:
            raise Killed

    output = tmp_path / "resumed.jsonl"
    config = config_for(tiny_model_dir, prompts_file, output)
    first = CountingGenerator(make_generator(tiny_model, tokenizer))
    with pytest.raises(Killed):
        run_generation(config, tokenizer=tokenizer, generator=first, after_shard=kill_after_two)
    assert not output.exists()
    shards = shard_dir_for(output)
    assert sorted(p.name for p in shards.glob("shard-*.jsonl")) == ["shard-00000.jsonl", "shard-00001.jsonl"]
    assert first.calls == [3, 3]

    second = CountingGenerator(make_generator(tiny_model, tokenizer))
    meta = run_generation(config, tokenizer=tokenizer, generator=second)
    assert second.calls == [1]  # only the last shard (1 prompt) was generated
    rows = read_rows(output)
    assert [r["id"] for r in rows] == [f"p{i:02d}" for i in range(len(PROMPTS))]
    assert rows == read_rows(reference_output)
    assert meta["counts"]["shards_resumed"] == 2
    assert not shards.exists()


def test_shards_of_other_settings_are_discarded(tmp_path, prompts_file, tiny_model_dir, tokenizer, tiny_model):
    output = tmp_path / "gen.jsonl"

    def stop_after_first(index):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        run_generation(config_for(tiny_model_dir, prompts_file, output), tokenizer=tokenizer,
                       generator=make_generator(tiny_model, tokenizer), after_shard=stop_after_first)
    changed = SamplingSettings(max_new_tokens=3)
    counting = CountingGenerator(make_generator(tiny_model, tokenizer, max_new_tokens=3))
    meta = run_generation(config_for(tiny_model_dir, prompts_file, output, sampling=changed), tokenizer=tokenizer,
                          generator=counting)
    assert counting.calls == [3, 3, 1]
    assert meta["counts"]["shards_resumed"] == 0
    assert all(r["generated_tokens"] <= 3 for r in read_rows(output))


def test_stop_token_ends_generation(tokenizer, tiny_model):
    prompt_ids = [tokenizer("What is 2 + 3?", add_special_tokens=False)["input_ids"]]
    never = [len(tokenizer) + 5]  # an id the model cannot produce: nothing stops early
    free = make_generator(tiny_model, tokenizer, max_new_tokens=8, stop_token_ids=never)
    input_ids, attention_mask = left_pad(prompt_ids, 0)
    free_run = free.model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=8,
                                   do_sample=False, eos_token_id=never, pad_token_id=0)
    tokens = free_run[0, len(prompt_ids[0]):].tolist()
    assert len(tokens) == 8
    stop = tokens[3]
    cut = tokens.index(stop)  # its first occurrence
    [result] = make_generator(tiny_model, tokenizer, max_new_tokens=8, stop_token_ids=[stop]).generate(prompt_ids)
    assert result.finished
    assert result.n_tokens == cut + 1
    assert result.text == tokenizer.decode(tokens[:cut], skip_special_tokens=True).strip()
    [unstopped] = free.generate(prompt_ids)
    assert (unstopped.n_tokens, unstopped.finished) == (8, False)


def test_out_of_memory_halves_the_batch_and_keeps_results(tokenizer, tiny_model):
    import torch

    class SmallMemoryModel(torch.nn.Module):
        """The tiny model, but any batch of more than 2 rows runs out of memory."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.batch_sizes = []

        def forward(self, input_ids, cache=None, **kwargs):
            from gsil.generation.decoding import cache_argument

            if cache is None:  # the prompt's forward pass: where a batch starts
                self.batch_sizes.append(input_ids.shape[0])
                if input_ids.shape[0] > 2:
                    raise torch.OutOfMemoryError("simulated")
                return self.inner(input_ids=input_ids, **kwargs)
            return self.inner(input_ids=input_ids, **{cache_argument(self.inner): cache}, **kwargs)

    from gsil.tokenization import encode_prompt

    prompt_ids = [encode_prompt(tokenizer, p)[0] for p in PROMPTS]
    expected = make_generator(tiny_model, tokenizer, batch_size=1).generate(prompt_ids)
    small = SmallMemoryModel(tiny_model)
    generator = make_generator(small, tokenizer, batch_size=5)
    assert generator.generate(prompt_ids) == expected
    assert small.batch_sizes == [5, 3, 2, 1, 2, 2]  # 5 fails, then 3 fails, then batches of at most 2
    assert generator.batch_size == 2


def test_empty_generation_is_kept_and_counted(tmp_path, prompts_file, tiny_model_dir, tokenizer, tiny_model, caplog):
    # Stop on whatever greedy decoding emits first for every prompt: every response is then empty.
    from gsil.tokenization import encode_prompt

    prompt_ids = [encode_prompt(tokenizer, p)[0] for p in PROMPTS]
    firsts = set()
    for ids in prompt_ids:
        input_ids, attention_mask = left_pad([ids], 0)
        generated = tiny_model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=1,
                                        do_sample=False, pad_token_id=0)
        firsts.add(generated[0, -1].item())
    output = tmp_path / "empty.jsonl"
    with caplog.at_level("WARNING"):
        meta = run_generation(config_for(tiny_model_dir, prompts_file, output), tokenizer=tokenizer,
                              generator=make_generator(tiny_model, tokenizer, stop_token_ids=sorted(firsts)))
    rows = read_rows(output)
    assert len(rows) == len(PROMPTS)
    assert all(r["generated"] == "" and r["finished"] and r["generated_tokens"] == 1 for r in rows)
    assert meta["counts"]["empty_generations"] == len(PROMPTS)
    assert "empty generation" in caplog.text


def test_data_parallel_ranks_take_strided_shards_and_rank0_merges(tmp_path, prompts_file, tiny_model_dir,
                                                                  tokenizer, tiny_model):
    """Two processes simulated one after the other: rank 0 publishes the plan, does shards 0 and 2 and gives up
    waiting for rank 1's; rank 1 does shards 1 and 3; rank 0 rerun merges without regenerating anything."""
    output = tmp_path / "dp.jsonl"
    config = config_for(tiny_model_dir, prompts_file, output, shard_size=2)  # 4 shards: 2, 2, 2, 1 prompts
    rank0 = CountingGenerator(make_generator(tiny_model, tokenizer))
    with pytest.raises(GsilError, match="never appeared"):
        run_generation(config, tokenizer=tokenizer, generator=rank0, dist=DistributedInfo(0, 2, 0),
                       merge_wait_s=0.1)
    assert rank0.calls == [2, 2]
    assert sorted(p.name for p in shard_dir_for(output).glob("shard-*")) == ["shard-00000.jsonl",
                                                                             "shard-00002.jsonl"]
    rank1 = CountingGenerator(make_generator(tiny_model, tokenizer))
    assert run_generation(config, tokenizer=tokenizer, generator=rank1, dist=DistributedInfo(1, 2, 1)) is None
    assert rank1.calls == [2, 1]
    rerun = CountingGenerator(make_generator(tiny_model, tokenizer))
    meta = run_generation(config, tokenizer=tokenizer, generator=rerun, dist=DistributedInfo(0, 2, 0),
                          merge_wait_s=5)
    assert rerun.calls == []
    assert [r["id"] for r in read_rows(output)] == [f"p{i:02d}" for i in range(len(PROMPTS))]
    assert meta["world_size"] == 2
    assert [p["rank"] for p in meta["this_run"]["processes"]] == [0, 1]
    assert not shard_dir_for(output).exists()


def test_cli_end_to_end_loads_the_model(tmp_path, prompts_file, tiny_model_dir):
    from gsil.cli import main

    output = tmp_path / "cli.jsonl"
    rc = main(["generate", "--model", str(tiny_model_dir), "--prompts", str(prompts_file), "--output", str(output),
               "--max-new-tokens", "3", "--limit", "4", "--batch-size", "2", "--shard-size", "3",
               "--template", "spin", "--precision", "fp32", "--max-prompt-length", "8", "--no-progress"])
    assert rc == 0
    assert [r["id"] for r in read_rows(output)] == ["p00", "p01", "p02", "p03"]
    meta = json.loads(meta_path_for(output).read_text())
    assert (meta["template"], meta["precision"], meta["precision_requested"], meta["counts"]["rows"]) == (
        "spin", "fp32", "fp32", 4)
    assert meta["counts"]["prompts_truncated"] >= 1  # the spin-rendered prompts exceed 8 tokens


def test_cli_sampling_flags():
    import argparse

    from gsil.stages.generate import add_arguments, sampling_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--model", "m", "--prompts", "p", "--output", "o"]
    assert sampling_from_args(parser.parse_args(base)).greedy
    assert sampling_from_args(parser.parse_args(base + ["--do-sample"])).temperature == 1.0
    assert sampling_from_args(parser.parse_args(base + ["--temperature", "0.7"])).temperature == 0.7
    with pytest.raises(GsilError):
        sampling_from_args(parser.parse_args(base + ["--do-sample", "--temperature", "0"]))


@pytest.mark.gpu
@pytest.mark.skipif(shutil.which("accelerate") is None and not Path(sys.executable).with_name("accelerate").exists(),
                    reason="accelerate launcher not found")
def test_accelerate_data_parallel_on_gpus(tmp_path, prompts_file, tiny_model_dir):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA devices")
    output = tmp_path / "dp_gpu.jsonl"
    launcher = str(Path(sys.executable).with_name("accelerate"))
    subprocess.run([launcher, "launch", "--num_processes", "2", "--multi_gpu", "-m", "gsil", "generate",
                    "--model", str(tiny_model_dir), "--prompts", str(prompts_file), "--output", str(output),
                    "--max-new-tokens", "4", "--shard-size", "2", "--no-progress"], check=True, timeout=600)
    assert [r["id"] for r in read_rows(output)] == [f"p{i:02d}" for i in range(len(PROMPTS))]
    assert json.loads(meta_path_for(output).read_text())["world_size"] == 2
