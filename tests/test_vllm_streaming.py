"""The vLLM backend's job-wide request queue and per-prompt seeds, against a stand-in `vllm` module (vLLM is not
installed here): every remaining prompt is queued in the engine before the first step, shards are written as they
complete (in any order), a killed run resumes with only the unfinished shards, and the output is byte-identical
whether the job ran in one go, was resumed, or was resharded. Uses the zephyr-style tokenizer (BOS in front)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from tokenizer_fixtures import zephyr_style_tokenizer

from gsil.generation import (
    SEEDING,
    GenerateConfig,
    SamplingSettings,
    VllmGenerator,
    meta_path_for,
    prompt_seed,
    run_generation,
    shard_dir_for,
)
from gsil.logutil import GsilError

PROMPTS = [f"Question {i}: what is {i} + {i + 2}?" for i in range(7)]
SETTINGS = SamplingSettings(max_new_tokens=8, temperature=0.8, top_p=0.95, seed=11)


class FakeEngine:
    """A stand-in `LLMEngine`: records every call; each `step` finishes the `per_step` most recently added requests
    (so later shards finish first) and reports one still-running request as unfinished. A completion's text and
    tokens are a function of the prompt ids and the request's seed only, like a seeded sampler."""

    def __init__(self, calls: list, per_step: int = 2, id_suffix: str = ""):
        self.calls = calls
        self.per_step = per_step
        self.id_suffix = id_suffix
        self.queue: list[tuple[str, dict, dict]] = []

    def add_request(self, request_id, prompt, params):
        self.calls.append(("add", request_id, list(prompt["prompt_token_ids"]), dict(params)))
        self.queue.append((request_id, prompt, params))

    def has_unfinished_requests(self):
        return bool(self.queue)

    def step(self):
        self.calls.append(("step",))
        finished, self.queue = self.queue[-self.per_step:], self.queue[:-self.per_step]
        outputs = [self._output(request_id, prompt, params, True) for request_id, prompt, params in finished]
        if self.queue:
            outputs.append(self._output(*self.queue[0], False))
        return outputs

    def abort_request(self, request_ids):
        self.calls.append(("abort", list(request_ids)))
        self.queue = [entry for entry in self.queue if entry[0] not in set(request_ids)]

    def _output(self, request_id, prompt, params, finished):
        ids = prompt["prompt_token_ids"]
        completion = types.SimpleNamespace(text=f" tokens={len(ids)} seed={params['seed']} ",
                                           token_ids=[1 + params["seed"] % 5] * 3,
                                           finish_reason="stop" if finished else None)
        return types.SimpleNamespace(request_id=request_id + self.id_suffix, finished=finished, outputs=[completion])


class FakeLLM:
    def __init__(self, engine: FakeEngine | None):
        if engine is not None:
            self.llm_engine = engine
        self.generate_calls: list[tuple[list, list]] = []

    def generate(self, requests, sampling_params, use_tqdm=True):
        self.generate_calls.append((list(requests), list(sampling_params)))
        return [FakeEngine([])._output(f"x{i}", r, p, True) for i, (r, p) in enumerate(zip(requests, sampling_params))]


@pytest.fixture(autouse=True)
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM = lambda **kwargs: pytest.fail("tests pass their own llm")
    module.SamplingParams = lambda **kwargs: kwargs
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


@pytest.fixture(scope="module")
def tokenizer():
    return zephyr_style_tokenizer()


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i:02d}", "prompt": p, "response": f"r{i}"}) + "\n"
                            for i, p in enumerate(PROMPTS)), encoding="utf-8")
    return path


def generator_with(calls: list, **engine_kwargs) -> VllmGenerator:
    return VllmGenerator("model", SETTINGS, stop_token_ids=[2], llm=FakeLLM(FakeEngine(calls, **engine_kwargs)))


def config(prompts_file, output, shard_size=3) -> GenerateConfig:
    return GenerateConfig(model=str(output.parent / "model"), prompts=str(prompts_file), output=str(output),
                          backend="vllm", sampling=SETTINGS, shard_size=shard_size, progress=False)


def added(calls) -> list[tuple]:
    return [c for c in calls if c[0] == "add"]


def test_all_remaining_prompts_are_queued_before_the_first_step(tmp_path, prompts_file, tokenizer):
    calls: list = []
    written: list[tuple[int, int]] = []  # (shard, engine steps run when it was written)
    output = tmp_path / "one_go.jsonl"
    meta = run_generation(config(prompts_file, output), tokenizer=tokenizer, generator=generator_with(calls),
                          after_shard=lambda k: written.append((k, calls.count(("step",)))))
    first_step = calls.index(("step",))
    assert len(added(calls[:first_step])) == len(PROMPTS) == len(added(calls))  # one queue for the whole job
    # shards are written as soon as they are complete, in completion order, before the engine is done
    assert [k for k, _ in written] == [2, 1, 0]
    assert written[0][1] < calls.count(("step",))
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"p{i:02d}" for i in range(len(PROMPTS))]
    # BOS exactly once in front of every vLLM prompt (zephyr-style tokenizer)
    from gsil.tokenization import encode_prompt

    assert [c[2] for c in added(calls)] == [encode_prompt(tokenizer, p)[0] for p in PROMPTS]
    assert all(c[2][0] == tokenizer.bos_token_id and c[2].count(tokenizer.bos_token_id) == 1 for c in added(calls))
    assert meta["seeding"] == SEEDING and json.loads(meta_path_for(output).read_text())["seeding"] == SEEDING


def test_every_prompt_has_its_own_seed(tmp_path, prompts_file, tokenizer):
    calls: list = []
    run_generation(config(prompts_file, tmp_path / "out.jsonl"), tokenizer=tokenizer,
                   generator=generator_with(calls))
    seeds = [c[3]["seed"] for c in added(calls)]
    assert seeds == [prompt_seed(SETTINGS.seed, f"p{i:02d}") for i in range(len(PROMPTS))]
    assert len(set(seeds)) == len(PROMPTS)
    params = [c[3] for c in added(calls)]
    assert all({k: v for k, v in p.items() if k != "seed"} == {k: v for k, v in params[0].items() if k != "seed"}
               for p in params)


def test_resumed_and_resharded_runs_write_identical_output(tmp_path, prompts_file, tokenizer):
    reference = tmp_path / "one_go.jsonl"
    first_calls: list = []
    run_generation(config(prompts_file, reference), tokenizer=tokenizer, generator=generator_with(first_calls))
    seed_of = {c[1].rsplit("-", 1)[1]: c[3]["seed"] for c in added(first_calls)}  # position -> seed

    class Killed(Exception):
        pass

    def kill_after_first_shard(index):
        raise Killed

    output = tmp_path / "resumed.jsonl"
    killed_calls: list = []
    with pytest.raises(Killed):
        run_generation(config(prompts_file, output), tokenizer=tokenizer, generator=generator_with(killed_calls),
                       after_shard=kill_after_first_shard)
    assert [p.name for p in shard_dir_for(output).glob("shard-*.jsonl")] == ["shard-00002.jsonl"]
    aborted = [c for c in killed_calls if c[0] == "abort"]
    # the engine is left with none of our requests (p05 finished in the same step as p06, shard 2)
    assert len(aborted) == 1 and len(aborted[0][1]) == 5

    resumed_calls: list = []
    meta = run_generation(config(prompts_file, output), tokenizer=tokenizer, generator=generator_with(resumed_calls))
    assert len(added(resumed_calls)) == 6 and meta["counts"]["shards_resumed"] == 1  # only shards 0 and 1
    assert [c[3]["seed"] for c in added(resumed_calls)] == [seed_of[str(i)] for i in range(6)]
    assert output.read_bytes() == reference.read_bytes()

    resharded = tmp_path / "resharded.jsonl"
    run_generation(config(prompts_file, resharded, shard_size=2), tokenizer=tokenizer,
                   generator=generator_with([], per_step=3))
    assert resharded.read_bytes() == reference.read_bytes()


def test_request_ids_with_an_engine_suffix_are_matched(tmp_path, prompts_file, tokenizer):
    """Newer vLLM versions may append `-<random>` to request ids internally."""
    output = tmp_path / "suffix.jsonl"
    reference = tmp_path / "plain.jsonl"
    run_generation(config(prompts_file, output), tokenizer=tokenizer,
                   generator=generator_with([], id_suffix="-1a2b3c4d"))
    run_generation(config(prompts_file, reference), tokenizer=tokenizer, generator=generator_with([]))
    assert output.read_bytes() == reference.read_bytes()


def test_unknown_request_id_is_an_error(tokenizer):
    generator = generator_with([], id_suffix="x")  # "gsil-1-0x": no known id, no "-suffix" to strip
    with pytest.raises(GsilError, match="unknown request id"):
        generator.generate([[1, 5, 6], [1, 7]], seeds=[1, 2])


def test_llm_without_engine_interface_gets_one_generate_call(tmp_path, prompts_file, tokenizer):
    llm = FakeLLM(None)
    generator = VllmGenerator("model", SETTINGS, stop_token_ids=[2], llm=llm)
    output = tmp_path / "fallback.jsonl"
    run_generation(config(prompts_file, output), tokenizer=tokenizer, generator=generator)
    [(requests, params)] = llm.generate_calls
    assert len(requests) == len(params) == len(PROMPTS)
    assert [p["seed"] for p in params] == [prompt_seed(SETTINGS.seed, f"p{i:02d}") for i in range(len(PROMPTS))]
    reference = tmp_path / "engine.jsonl"
    run_generation(config(prompts_file, reference), tokenizer=tokenizer, generator=generator_with([]))
    assert output.read_bytes() == reference.read_bytes()
