"""Self-generation: a model's responses to the self-play prompts, the negatives of the next SPIN/GSIL round.

One interface, two backends:

* `Generator` (a protocol): `generate(prompts, on_batch=None, seeds=None) -> list[GenerationResult]`, where a prompt
  is the list of token ids produced by `gsil.tokenization.encode_prompt`, the function training and reference scoring
  use to encode the same prompt (BOS included exactly once where the tokenizer adds one). Passing ids (not text)
  makes the generated response continue exactly the tokens it will later be scored and trained after, and lets
  `--max-prompt-length` truncate the same way everywhere. `seeds` holds one sampling seed per prompt.
* `TransformersGenerator` (default, CPU and GPU): batched `model.generate` with the KV cache, prompts sorted by
  length (longest first, so the batch that needs the most memory runs first and padding is small), left padding,
  greedy or sampled, stopping at EOS and at the chat template's end-of-turn token.
* `VllmGenerator` (GPU): `vllm.LLM` + one `SamplingParams` per prompt, tensor parallel, imported only when chosen.
  `stream` queues ALL of the job's remaining prompts in the engine at once (vLLM's `LLMEngine.add_request`/`step`,
  the loop `LLM.generate` itself runs) and yields each result as its request finishes, so the engine never idles at
  a shard's tail and shards are still written as soon as they are complete. The request list and sampling arguments
  are built by pure functions (`vllm_requests`, `vllm_sampling_kwargs`) so they are tested without vLLM.

Large prompt sets run in shards of `shard_size` prompts (input order). Each finished shard is written atomically to
`<output>.shards/shard-00003.jsonl`; a killed run restarts with the shards that are not on disk. `plan.json` in
the shard folder fingerprints the inputs and settings, so shards of a different configuration are never mixed in.
Under `accelerate launch` (or torchrun) each process takes every WORLD_SIZE-th shard on its own GPU, and process 0
merges once all shard files exist. The merge checks that the ids are exactly the input ids (no duplicate, none
missing), writes the output in input order, then removes the shard folder.

Post-processing: the generated ids are cut at the first stop token, decoded without special tokens, and stripped of
surrounding whitespace. An empty generation is KEPT (the row's `generated` is ""), counted in the log and in the
sidecar `<output minus .jsonl>.meta.json`. Generation does not decide what to do with it: the trainer does (it may
keep it as a negative, which pushes the model away from stopping at once, or drop it and count it).

Seeds (`SEEDING`, recorded in the meta file): every prompt samples with its own seed, `prompt_seed(seed, id)` = the
first 32 bits of sha256(f"{seed}:{id}") masked to 31 bits, so a prompt's response depends only on (seed, its id,
the model, the settings): not on its shard, its batch, the other prompts, resuming or resharding. vLLM takes it as
the request's `SamplingParams.seed`. Hugging Face `generate` has no per-row generator, so the transformers backend
samples by the Gumbel-max trick instead: it decodes with argmax over the temperature/top-p-processed scores plus
Gumbel noise drawn from one `torch.Generator` per prompt (seeded with the prompt's seed), which is an exact sample
from the same distribution. The two backends use different noise, so their samples differ; each is reproducible.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

from gsil.io import iter_jsonl, read_json, write_json, write_jsonl
from gsil.logutil import GsilError

log = logging.getLogger(__name__)

BACKENDS = ("transformers", "vllm")
PRECISIONS = ("auto", "bf16", "fp32")
VLLM_EXTRA_HINT = "pip install -e .[vllm]"
SHARD_PLAN_FILE = "plan.json"
# Prompts per generate call of the transformers backend; see gsil/bench/generation.py for the measurement.
DEFAULT_BATCH_SIZE = 16
DEFAULT_SHARD_SIZE = 256

# Called after each completed batch with (prompts in the batch, tokens generated in the batch).
BatchCallback = Callable[[int, int], None]

# How sampling is seeded, recorded in the meta file and in the shard plan (shards of another scheme are discarded).
SEEDING = {
    "scheme": "per-prompt",
    "prompt_seed": "int(sha256(f'{seed}:{id}').hexdigest()[:8], 16) & 0x7FFFFFFF",
    "vllm": "SamplingParams(seed=prompt_seed) per request",
    "transformers": "Gumbel-max: argmax(processed scores + Gumbel noise from one torch.Generator per prompt)",
}


# --------------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class SamplingSettings:
    """Decoding settings shared by both backends. temperature 0 means greedy (top_p is then unused)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise GsilError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise GsilError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise GsilError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "greedy": self.greedy}


@dataclass(frozen=True)
class GenerationResult:
    text: str  # cleaned response (special tokens and surrounding whitespace removed); may be ""
    n_tokens: int  # tokens the model produced, the stop token included, padding excluded
    finished: bool  # True: ended at a stop token; False: cut at max_new_tokens


class Generator(Protocol):
    backend: str

    def generate(self, prompts: Sequence[Sequence[int]], on_batch: BatchCallback | None = None,
                 seeds: Sequence[int] | None = None) -> list[GenerationResult]:
        """One result per prompt (token ids), in the order of `prompts`; `seeds`: one sampling seed per prompt."""
        ...


def prompt_seed(seed: int, prompt_id: str) -> int:
    """The sampling seed of one prompt: stable across processes and Python versions (never `hash()`), 31 bits so
    every backend accepts it."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}".encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


def positional_seeds(seed: int, n: int) -> list[int]:
    """Seeds for callers without prompt ids (benchmarks): the prompt's position stands in for its id."""
    return [prompt_seed(seed, str(i)) for i in range(n)]


# --------------------------------------------------------------------------------------------------- pure helpers


def clean_generation(text: str, special_tokens: Sequence[str] = ()) -> str:
    """Remove literal special-token strings (e.g. a `</s>` spelled out by a backend) and surrounding whitespace."""
    for token in special_tokens:
        if token:
            text = text.replace(token, "")
    return text.strip()


def split_at_stop(token_ids: Sequence[int], stop_token_ids: Sequence[int]) -> tuple[list[int], int, bool]:
    """(response ids before the first stop token, tokens produced incl. that stop token, whether a stop was found).

    `token_ids` are the new positions of one row of a batched `generate`: after a row stops, the rest of its row is
    padding, which is not counted.
    """
    stops = set(stop_token_ids)
    for index, token in enumerate(token_ids):
        if token in stops:
            return list(token_ids[:index]), index + 1, True
    return list(token_ids), len(token_ids), False


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first; ties keep input order (deterministic)."""
    if batch_size < 1:
        raise GsilError(f"batch size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def left_pad(sequences: Sequence[Sequence[int]], pad_token_id: int):
    """`input_ids` and `attention_mask` tensors with every row right-aligned (decoder-only models continue the last
    position, so padding goes on the left)."""
    import torch

    width = max(len(seq) for seq in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if len(seq):
            input_ids[row, width - len(seq):] = torch.tensor(list(seq), dtype=torch.long)
            attention_mask[row, width - len(seq):] = 1
    return input_ids, attention_mask


def stop_token_ids_for(tokenizer, model_generation_config=None) -> list[int]:
    """EOS and the chat template's end-of-turn token(s), plus any EOS the model's generation config names."""
    from gsil.tokenization import end_of_turn_token_ids

    ids = list(end_of_turn_token_ids(tokenizer))
    configured = getattr(model_generation_config, "eos_token_id", None)
    if configured is not None:
        ids.extend(configured if isinstance(configured, (list, tuple)) else [configured])
    return list(dict.fromkeys(int(i) for i in ids))


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 dot products (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: str) -> str:
    """'bf16' or 'fp32' for `precision` in auto|bf16|fp32 on `device` ('cpu' or 'cuda[:n]')."""
    if precision not in PRECISIONS:
        raise GsilError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    # Measured on an AVX512-BF16 EPYC with SmolLM2-135M: bf16 generates ~2.5x faster than fp32.
    return "bf16" if cpu_supports_bf16() else "fp32"


def torch_dtype(precision: str):
    import torch

    return {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]


# --------------------------------------------------------------------------------------------------- transformers


class TransformersGenerator:
    """Batched Hugging Face `generate` (KV cache on), length-sorted batches, left padding."""

    backend = "transformers"

    def __init__(self, model, tokenizer, settings: SamplingSettings, *, stop_token_ids: Sequence[int],
                 batch_size: int = DEFAULT_BATCH_SIZE, pad_token_id: int | None = None):
        from transformers import GenerationConfig

        if batch_size < 1:
            raise GsilError(f"batch size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.stop_token_ids = list(stop_token_ids)
        self.batch_size = batch_size
        self.pad_token_id = pad_token_id if pad_token_id is not None else (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_token_ids[0])
        self.special_tokens = list(getattr(tokenizer, "all_special_tokens", []) or [])
        # A fresh config, not the checkpoint's: what runs is exactly what the meta file records. Sampling runs as
        # argmax over Gumbel-perturbed scores (`_sampling_processors`), so HF's own sampler (and its default
        # top-k 50, which is not a recorded setting) stays off.
        self.generation_config = GenerationConfig(
            max_new_tokens=settings.max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=self.stop_token_ids,
            pad_token_id=self.pad_token_id,
            use_cache=True,
        )

    def _device(self):
        return next(self.model.parameters()).device

    def _sampling_processors(self, seeds: Sequence[int], device):
        """Logits processors that turn greedy decoding into sampling with one noise stream per prompt (rows in
        `seeds` order); None for greedy decoding."""
        if self.settings.greedy:
            return None
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

        processors = [TemperatureLogitsWarper(self.settings.temperature)]
        if self.settings.top_p < 1:
            processors.append(TopPLogitsWarper(self.settings.top_p))
        processors.append(PerPromptGumbelNoise(seeds, device))
        return LogitsProcessorList(processors)

    def generate(self, prompts: Sequence[Sequence[int]], on_batch: BatchCallback | None = None,
                 seeds: Sequence[int] | None = None) -> list[GenerationResult]:
        import torch

        seeds = list(seeds) if seeds is not None else positional_seeds(self.settings.seed, len(prompts))
        if len(seeds) != len(prompts):
            raise GsilError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        results: list[GenerationResult | None] = [None] * len(prompts)
        device = self._device()
        queue = length_sorted_batches([len(p) for p in prompts], self.batch_size)
        while queue:
            indices = queue.pop(0)
            input_ids, attention_mask = left_pad([prompts[i] for i in indices], self.pad_token_id)
            try:
                with torch.inference_mode():
                    output = self.model.generate(
                        input_ids=input_ids.to(device),
                        attention_mask=attention_mask.to(device),
                        generation_config=self.generation_config,
                        # fresh generators per attempt: a batch retried after running out of memory samples the same
                        logits_processor=self._sampling_processors([seeds[i] for i in indices], device),
                    )
            except torch.OutOfMemoryError as err:
                if len(indices) == 1:
                    raise GsilError(f"out of memory generating for a single prompt of {input_ids.shape[1]} tokens; "
                                    "lower --max-prompt-length or --max-new-tokens") from err
                # Longest prompts come first, so a batch that fits after halving fits for the rest of the run too.
                half = (len(indices) + 1) // 2
                self.batch_size = half
                log.warning("out of memory at batch size %d; retrying with batch size %d", len(indices), half)
                del err
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                rest = [i for batch in queue for i in batch]
                queue = [indices[:half], indices[half:]] + [rest[s:s + half] for s in range(0, len(rest), half)]
                continue
            new_tokens = output[:, input_ids.shape[1]:].tolist()
            batch_tokens = 0
            for row, index in enumerate(indices):
                results[index] = self._result(new_tokens[row])
                batch_tokens += results[index].n_tokens
            if on_batch is not None:
                on_batch(len(indices), batch_tokens)
        return results  # type: ignore[return-value]

    def _result(self, new_ids: list[int]) -> GenerationResult:
        response_ids, n_tokens, finished = split_at_stop(new_ids, self.stop_token_ids)
        text = self.tokenizer.decode(response_ids, skip_special_tokens=True)
        return GenerationResult(clean_generation(text, self.special_tokens), n_tokens, finished)


class PerPromptGumbelNoise:
    """A Hugging Face logits processor (the last one) that adds Gumbel noise from one `torch.Generator` per row.

    argmax(scores + Gumbel noise) is an exact sample from softmax(scores) (the Gumbel-max trick), so greedy decoding
    after this processor samples. Row r's t-th step always takes the t-th draw of its own generator, whatever the
    other rows, the padding or the batch size are: a prompt's sample depends on its seed only. The noise is
    -log(E) with E ~ Exponential(1), drawn in float32 over the whole vocabulary.
    """

    def __init__(self, seeds: Sequence[int], device):
        import torch

        self.generators = []
        for seed in seeds:
            generator = torch.Generator(device=device)
            generator.manual_seed(int(seed))
            self.generators.append(generator)

    def __call__(self, input_ids, scores):
        import torch

        if scores.shape[0] != len(self.generators):
            raise GsilError(f"{scores.shape[0]} rows of scores for {len(self.generators)} per-prompt generators")
        noise = torch.empty(scores.shape, dtype=torch.float32, device=scores.device)
        for row, generator in enumerate(self.generators):
            noise[row].exponential_(generator=generator)
        gumbel = noise.clamp_min_(torch.finfo(torch.float32).tiny).log_().neg_()
        return scores.float() + gumbel


# --------------------------------------------------------------------------------------------------- vLLM


def import_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError as err:
        raise GsilError(
            f"the vllm backend needs the vllm package, which is not importable here ({err}); install the extra with "
            f"`{VLLM_EXTRA_HINT}` (GPU machines), or use --backend transformers"
        ) from err
    return vllm


def vllm_sampling_kwargs(settings: SamplingSettings, stop_token_ids: Sequence[int], *, seed: int) -> dict[str, Any]:
    """Keyword arguments of one prompt's `vllm.SamplingParams`, equivalent to `settings` (temperature 0 is vLLM's
    greedy); `seed` is the prompt's own (`prompt_seed`)."""
    return {
        "n": 1,
        "temperature": float(settings.temperature),
        "top_p": 1.0 if settings.greedy else float(settings.top_p),
        "top_k": -1,  # no top-k: the transformers backend uses none either
        "max_tokens": int(settings.max_new_tokens),
        "stop_token_ids": [int(i) for i in stop_token_ids],
        "seed": int(seed),
        "skip_special_tokens": True,
    }


def vllm_requests(prompts: Sequence[Sequence[int]]) -> list[dict[str, list[int]]]:
    """vLLM `TokensPrompt` dicts: the same token ids the transformers backend feeds (no re-tokenization)."""
    requests = []
    for position, ids in enumerate(prompts):
        ids = [int(i) for i in ids]
        if not ids:
            raise GsilError(f"prompt {position} has no tokens")
        requests.append({"prompt_token_ids": ids})
    return requests


def result_from_vllm(request_output, special_tokens: Sequence[str] = ()) -> GenerationResult:
    """A `GenerationResult` from one `vllm.RequestOutput` (its first completion)."""
    completion = request_output.outputs[0]
    finished = getattr(completion, "finish_reason", None) == "stop"
    return GenerationResult(clean_generation(completion.text, special_tokens), len(completion.token_ids), finished)


class VllmGenerator:
    """vLLM offline inference, tensor parallel over `tensor_parallel_size` GPUs, one `SamplingParams` per prompt."""

    backend = "vllm"

    def __init__(self, model_path: str | os.PathLike, settings: SamplingSettings, *, stop_token_ids: Sequence[int],
                 tensor_parallel_size: int = 1, precision: str = "bf16", special_tokens: Sequence[str] = (),
                 llm=None):
        vllm = import_vllm()
        self.settings = settings
        self.stop_token_ids = [int(i) for i in stop_token_ids]
        self.special_tokens = list(special_tokens)
        self.sampling_params_class = vllm.SamplingParams
        self.final_only = _final_only_output_kind()
        self.llm = llm if llm is not None else vllm.LLM(
            model=str(model_path),
            tokenizer=str(model_path),
            tensor_parallel_size=tensor_parallel_size,
            dtype={"bf16": "bfloat16", "fp32": "float32"}[precision],
            seed=settings.seed,
        )
        self._streams = 0  # request ids stay unique across calls on one engine

    def sampling_params(self, seeds: Sequence[int]) -> list:
        """One `SamplingParams` per prompt: the same settings, the prompt's own seed."""
        extra = {"output_kind": self.final_only} if self.final_only is not None else {}
        return [self.sampling_params_class(**vllm_sampling_kwargs(self.settings, self.stop_token_ids, seed=seed),
                                           **extra) for seed in seeds]

    def generate(self, prompts: Sequence[Sequence[int]], on_batch: BatchCallback | None = None,
                 seeds: Sequence[int] | None = None) -> list[GenerationResult]:
        results: list[GenerationResult | None] = [None] * len(prompts)
        for position, result in self.stream(prompts, seeds, on_batch=on_batch):
            results[position] = result
        return results  # type: ignore[return-value]

    def stream(self, prompts: Sequence[Sequence[int]], seeds: Sequence[int] | None = None,
               on_batch: BatchCallback | None = None) -> Iterator[tuple[int, GenerationResult]]:
        """(position in `prompts`, result) for every prompt, as its request finishes.

        All prompts are queued in the engine first (`LLMEngine.add_request`), then `step()` runs until none is left:
        the loop `LLM.generate` runs, minus waiting for the last request before returning anything. An `llm`
        without that engine interface gets one `llm.generate` call with every prompt instead.
        """
        requests = vllm_requests(prompts)
        seeds = list(seeds) if seeds is not None else positional_seeds(self.settings.seed, len(prompts))
        if len(seeds) != len(requests):
            raise GsilError(f"{len(seeds)} seeds for {len(requests)} prompts")
        params = self.sampling_params(seeds)
        engine = getattr(self.llm, "llm_engine", None)
        if not all(hasattr(engine, name) for name in ("add_request", "step", "has_unfinished_requests")):
            outputs = self.llm.generate(requests, params, use_tqdm=False)
            if len(outputs) != len(requests):
                raise GsilError(f"vllm returned {len(outputs)} outputs for {len(requests)} prompts")
            results = [result_from_vllm(output, self.special_tokens) for output in outputs]
            if on_batch is not None:
                on_batch(len(results), sum(r.n_tokens for r in results))
            yield from enumerate(results)
            return
        self._streams += 1
        positions: dict[str, int] = {}
        try:
            for position, (request, param) in enumerate(zip(requests, params)):
                request_id = f"gsil-{self._streams}-{position}"
                positions[request_id] = position
                engine.add_request(request_id, request, param)
            while positions and engine.has_unfinished_requests():
                finished = [(self._position(positions, output.request_id),
                             result_from_vllm(output, self.special_tokens))
                            for output in engine.step() if output.finished]
                if on_batch is not None and finished:
                    on_batch(len(finished), sum(r.n_tokens for _, r in finished))
                yield from finished
            if positions:
                raise GsilError(f"the vllm engine stopped with {len(positions)} request(s) unfinished")
        finally:
            if positions and hasattr(engine, "abort_request"):
                # the consumer stopped early (an error, a simulated kill): leave no requests of ours in the engine
                engine.abort_request(list(positions))

    @staticmethod
    def _position(positions: dict[str, int], request_id: str) -> int:
        """Pop a finished request's position; newer vLLM versions may append `-<suffix>` to request ids."""
        for key in (request_id, request_id.rsplit("-", 1)[0]):
            if key in positions:
                return positions.pop(key)
        raise GsilError(f"the vllm engine returned an unknown request id {request_id!r}")


def _final_only_output_kind():
    """`RequestOutputKind.FINAL_ONLY` where this vLLM has it (what `LLM.generate` sets: no per-step partial
    outputs), else None."""
    try:
        from vllm.sampling_params import RequestOutputKind
    except ImportError:
        return None
    return getattr(RequestOutputKind, "FINAL_ONLY", None)


# --------------------------------------------------------------------------------------------------- files


def meta_path_for(output: str | os.PathLike) -> Path:
    """`generations/sft.jsonl` -> `generations/sft.meta.json`."""
    path = Path(output)
    stem = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.name
    return path.with_name(stem + ".meta.json")


def shard_dir_for(output: str | os.PathLike) -> Path:
    path = Path(output)
    return path.with_name(path.name + ".shards")


def shard_path(shard_dir: Path, index: int) -> Path:
    return shard_dir / f"shard-{index:05d}.jsonl"


def shard_ranges(n_rows: int, shard_size: int) -> list[range]:
    if shard_size < 1:
        raise GsilError(f"shard size must be >= 1, got {shard_size}")
    return [range(start, min(start + shard_size, n_rows)) for start in range(0, n_rows, shard_size)]


def _read_jsonl(path: Path) -> list[dict]:
    return [row for _, row in iter_jsonl(path)]


def check_ids(found: Sequence[str], expected: Sequence[str], where: str) -> None:
    """Raise naming the duplicated, missing or unexpected ids when `found` is not exactly `expected`."""
    seen: set[str] = set()
    duplicates = sorted({i for i in found if i in seen or seen.add(i)})  # type: ignore[func-returns-value]
    missing = sorted(set(expected) - seen)
    unexpected = sorted(seen - set(expected))
    if duplicates or missing or unexpected:
        parts = []
        for name, ids in (("duplicate", duplicates), ("missing", missing), ("unexpected", unexpected)):
            if ids:
                parts.append(f"{len(ids)} {name} id(s) (e.g. {', '.join(map(repr, ids[:5]))})")
        raise GsilError(f"{where}: " + "; ".join(parts))


# --------------------------------------------------------------------------------------------------- the run


@dataclass
class GenerateConfig:
    """Everything `gsil generate` needs; its fields are the stage's CLI flags."""

    model: str
    prompts: str
    output: str
    backend: str = "transformers"
    template: str = "chat"
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    batch_size: int = DEFAULT_BATCH_SIZE
    max_prompt_length: int | None = None
    shard_size: int = DEFAULT_SHARD_SIZE
    precision: str = "auto"
    tensor_parallel_size: int = 1
    limit: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise GsilError(f"unknown backend {self.backend!r}; expected one of {', '.join(BACKENDS)}")
        if self.precision not in PRECISIONS:
            raise GsilError(f"unknown precision {self.precision!r}; expected one of {', '.join(PRECISIONS)}")
        for name in ("batch_size", "shard_size", "tensor_parallel_size"):
            if getattr(self, name) < 1:
                raise GsilError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise GsilError(f"max-prompt-length must be >= 1, got {self.max_prompt_length}")
        if self.limit is not None and self.limit < 1:
            raise GsilError(f"limit must be >= 1, got {self.limit}")

    def settings(self) -> dict[str, Any]:
        out = asdict(self)
        out["sampling"] = self.sampling.to_dict()
        return out


@dataclass(frozen=True)
class DistributedInfo:
    """This process's place under `accelerate launch` / torchrun (from their environment variables)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "DistributedInfo":
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def my_shards(self, n_shards: int) -> list[int]:
        """Strided: process r takes shards r, r + world, r + 2*world, ..."""
        return list(range(self.rank, n_shards, self.world_size))


def _fingerprint(config: GenerateConfig, prompts_sha256: str, ids: Sequence[str], model_identity: str) -> dict:
    # Everything that changes the shards' content; `progress` and `limit` (ids cover it) do not.
    settings = config.settings()
    for key in ("output", "progress", "limit"):
        settings.pop(key)
    return {
        "prompts_sha256": prompts_sha256,
        "ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
        "rows": len(ids),
        "model_identity": model_identity,
        "settings": settings,
        "seeding": SEEDING,
    }


def _model_identity(model_dir: str) -> str:
    """A cheap identity of a checkpoint folder: names, sizes and mtimes of its files (not a content hash)."""
    entries = []
    root = Path(model_dir)
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            if path.is_file():
                stat = path.stat()
                entries.append(f"{path.relative_to(root)}:{stat.st_size}:{int(stat.st_mtime)}")
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def prepare_shard_dir(shard_dir: Path, fingerprint: dict, dist: DistributedInfo, *, wait_s: float = 600.0) -> None:
    """Make `shard_dir` hold shards of this plan only: the main process clears shards of another plan."""
    plan_file = shard_dir / SHARD_PLAN_FILE
    if dist.is_main:
        if plan_file.is_file() and read_json(plan_file) != fingerprint:
            log.warning("%s holds shards of different inputs or settings; discarding them", shard_dir)
            shutil.rmtree(shard_dir)
        elif shard_dir.is_dir() and not plan_file.is_file():
            log.warning("%s has no %s; discarding its content", shard_dir, SHARD_PLAN_FILE)
            shutil.rmtree(shard_dir)
        shard_dir.mkdir(parents=True, exist_ok=True)
        if not plan_file.is_file():
            write_json(plan_file, fingerprint)
        return
    # Other processes wait for the main one to publish this plan (no collective call needed).
    deadline = time.monotonic() + wait_s
    while not (plan_file.is_file() and read_json(plan_file) == fingerprint):
        if time.monotonic() > deadline:
            raise GsilError(f"process {dist.rank}: {plan_file} did not appear with this run's plan in {wait_s:.0f}s")
        time.sleep(1.0)


def completed_shard(path: Path, expected_ids: Sequence[str]) -> list[dict] | None:
    """The rows of a shard file if it is complete for `expected_ids`, else None (stale or foreign shard)."""
    if not path.is_file():
        return None
    try:
        rows = _read_jsonl(path)
    except GsilError as err:
        log.warning("ignoring unreadable shard %s: %s", path, err)
        return None
    if [row.get("id") for row in rows] != list(expected_ids):
        log.warning("ignoring shard %s: its ids do not match the plan", path)
        return None
    return rows


def selfplay_row(demo: dict, result: GenerationResult) -> dict:
    """A `selfplay` record: the demonstration becomes `real`, the model's response `generated`; other fields of the
    input row are kept."""
    extras = {k: v for k, v in demo.items() if k not in ("id", "prompt", "response", "real", "generated")}
    return {
        "id": demo["id"],
        "prompt": demo["prompt"],
        "real": demo["response"],
        "generated": result.text,
        "generated_tokens": result.n_tokens,
        "finished": result.finished,
        **extras,
    }


class _Progress:
    """tqdm over prompts with the running tokens/s of this process."""

    def __init__(self, total: int, enabled: bool, desc: str):
        self.tokens = 0
        self.start = time.perf_counter()
        self.bar = None
        if enabled and total:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="prompt", dynamic_ncols=True)

    def __call__(self, n_prompts: int, n_tokens: int) -> None:
        self.tokens += n_tokens
        if self.bar is not None:
            self.bar.update(n_prompts)
            elapsed = max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix_str(f"{self.tokens / elapsed:.1f} tok/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def shard_results(generator: Generator, shards: dict[int, range], prompt_ids: Sequence[Sequence[int]],
                  seeds: Sequence[int], on_batch: BatchCallback | None = None,
                  ) -> Iterator[tuple[int, list[GenerationResult]]]:
    """(shard index, its results in row order) for each shard of `shards` (index -> row range), as soon as the
    shard is complete.

    A generator with `stream` (vLLM) gets every prompt of these shards in one call, so its engine stays full until
    the job's last request; shards then complete in any order. Others (transformers) are called once per shard.
    Either way each prompt samples with its own seed, so the results do not depend on which shards run together.
    """
    stream = getattr(generator, "stream", None)
    if stream is None:
        for k, rows in shards.items():
            results = generator.generate([prompt_ids[i] for i in rows], on_batch=on_batch,
                                         seeds=[seeds[i] for i in rows])
            if len(results) != len(rows):
                raise GsilError(f"backend returned {len(results)} results for {len(rows)} prompts")
            yield k, list(results)
        return
    flat = [(k, i) for k, rows in shards.items() for i in rows]
    waiting = {k: len(rows) for k, rows in shards.items()}
    done: dict[int, GenerationResult] = {}
    for position, result in stream([prompt_ids[i] for _, i in flat], [seeds[i] for _, i in flat], on_batch=on_batch):
        k, i = flat[position]
        done[i] = result
        waiting[k] -= 1
        if not waiting[k]:
            yield k, [done.pop(j) for j in shards[k]]
    unfinished = [k for k, n in waiting.items() if n]
    if unfinished:
        raise GsilError(f"backend returned no results for some prompts of shard(s) {unfinished[:5]}")


def build_generator(config: GenerateConfig, tokenizer, dist: DistributedInfo) -> tuple[Generator, dict]:
    """The configured backend's generator, loaded on this process's device, and a description for the meta file."""
    import torch

    if config.backend == "vllm":
        if dist.world_size > 1:
            raise GsilError("the vllm backend parallelises with --tensor-parallel-size; launch it as ONE process "
                            "(not under accelerate launch)")
        precision = config.precision if config.precision != "auto" else "bf16"
        from transformers import GenerationConfig

        try:
            model_generation_config = GenerationConfig.from_pretrained(config.model)
        except OSError:
            model_generation_config = None
        stop_ids = stop_token_ids_for(tokenizer, model_generation_config)
        generator = VllmGenerator(config.model, config.sampling, stop_token_ids=stop_ids,
                                  tensor_parallel_size=config.tensor_parallel_size, precision=precision,
                                  special_tokens=getattr(tokenizer, "all_special_tokens", []))
        return generator, {"precision": precision, "device": "cuda", "stop_token_ids": stop_ids}

    from gsil.modeling import load_model

    if torch.cuda.is_available():
        device = f"cuda:{dist.local_rank}" if dist.world_size > 1 else "cuda"
    else:
        if dist.world_size > 1:
            raise GsilError("data-parallel generation (several processes) needs one CUDA device per process")
        device = "cpu"
    precision = resolve_precision(config.precision, device)
    model = load_model(config.model, dtype=torch_dtype(precision)).to(device)
    stop_ids = stop_token_ids_for(tokenizer, model.generation_config)
    generator = TransformersGenerator(model, tokenizer, config.sampling, stop_token_ids=stop_ids,
                                      batch_size=config.batch_size)
    return generator, {"precision": precision, "device": device, "stop_token_ids": stop_ids}


def run_generation(
    config: GenerateConfig,
    *,
    tokenizer=None,
    generator: Generator | None = None,
    generator_info: dict | None = None,
    dist: DistributedInfo | None = None,
    after_shard: Callable[[int], None] | None = None,
    merge_wait_s: float = 24 * 3600.0,
) -> dict | None:
    """Generate, shard by shard, and (on the main process) merge into `config.output` with its meta sidecar.

    `tokenizer`/`generator` may be passed in (tests, benchmarks) to skip loading; `after_shard(index)` runs after
    each shard file is written (tests use it to simulate a crash). Returns the meta dict on the main process, None
    on the others.
    """
    from gsil.modeling import load_tokenizer
    from gsil.records import file_sha256, read_records
    from gsil.tokenization import encode_prompt

    dist = dist or DistributedInfo.from_env()
    rows = read_records(config.prompts, "demonstration")
    if config.limit is not None:
        rows = rows[: config.limit]
    if not rows:
        raise GsilError(f"{config.prompts}: no prompts to generate for")
    ids = [row["id"] for row in rows]
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.model)

    prompts_sha256 = file_sha256(config.prompts)
    fingerprint = _fingerprint(config, prompts_sha256, ids, _model_identity(config.model))
    shard_dir = shard_dir_for(config.output)
    ranges = shard_ranges(len(rows), config.shard_size)
    prepare_shard_dir(shard_dir, fingerprint, dist)

    pending = [k for k in dist.my_shards(len(ranges))
               if completed_shard(shard_path(shard_dir, k), [ids[i] for i in ranges[k]]) is None]
    resumed = len(dist.my_shards(len(ranges))) - len(pending)
    if resumed:
        log.info("process %d: %d of its shards already done, %d to generate", dist.rank, resumed, len(pending))

    # Encoding every prompt (not only this process's) gives the truncation count of the whole set; it is cheap
    # next to generation.
    prompt_ids, prompts_truncated = [], 0
    for row in rows:
        encoded, truncated = encode_prompt(tokenizer, row["prompt"], max_prompt_length=config.max_prompt_length,
                                           template=config.template)
        prompt_ids.append(encoded)
        prompts_truncated += truncated
    if prompts_truncated:
        log.warning("%d of %d prompt(s) longer than %s tokens are left-truncated", prompts_truncated, len(rows),
                    config.max_prompt_length)

    seeds = [prompt_seed(config.sampling.seed, prompt_id) for prompt_id in ids]
    run_tokens, run_seconds = 0, 0.0
    if pending:
        if generator is None:
            generator, generator_info = build_generator(config, tokenizer, dist)
        generator_info = generator_info or {}
        log.info("process %d/%d: %s backend, %s, %d prompts in %d shard(s), batch %d, %s",
                 dist.rank, dist.world_size, generator.backend, generator_info.get("precision", "?"),
                 sum(len(ranges[k]) for k in pending), len(pending), config.batch_size,
                 "greedy" if config.sampling.greedy else f"sampled T={config.sampling.temperature}")
        progress = _Progress(sum(len(ranges[k]) for k in pending), config.progress, desc=f"generate[{dist.rank}]")
        start = time.perf_counter()
        try:
            for k, results in shard_results(generator, {k: ranges[k] for k in pending}, prompt_ids, seeds,
                                            progress):
                run_tokens += sum(r.n_tokens for r in results)
                write_jsonl(shard_path(shard_dir, k), (selfplay_row(rows[i], r) for i, r in zip(ranges[k], results)))
                if after_shard is not None:
                    after_shard(k)
        finally:
            run_seconds = time.perf_counter() - start
            progress.close()

    this_process = {
        "rank": dist.rank,
        "shards_generated": len(pending),
        "shards_resumed": resumed,
        "tokens_generated": run_tokens,
        "generation_seconds": round(run_seconds, 3),
        "tokens_per_second": round(run_tokens / run_seconds, 2) if run_seconds > 0 else None,
    }
    if not dist.is_main:
        # The main process merges once every shard file exists; this one's work is on disk.
        write_json(shard_dir / f"process-{dist.rank:03d}.json", this_process)
        return None

    _wait_for_shards(shard_dir, len(ranges), merge_wait_s)
    merged: list[dict] = []
    for k, shard_range in enumerate(ranges):
        shard_rows = completed_shard(shard_path(shard_dir, k), [ids[i] for i in shard_range])
        if shard_rows is None:
            raise GsilError(f"{shard_path(shard_dir, k)} is missing or does not hold the planned ids")
        merged.extend(shard_rows)
    check_ids([row["id"] for row in merged], ids, f"merge of {shard_dir}")
    others = [read_json(p) for p in sorted(shard_dir.glob("process-*.json"))]

    from gsil.records import write_records

    write_records(config.output, merged, "selfplay")
    meta = _meta(config, merged, generator_info or {}, prompts_sha256, prompts_truncated, this_process, others,
                 dist)
    write_json(meta_path_for(config.output), meta)
    shutil.rmtree(shard_dir)
    meta_summary = meta["counts"]
    log.info("wrote %s: %d rows, %d empty generations, %d cut at max_new_tokens, %d tokens (%s tok/s this run)",
             config.output, meta_summary["rows"], meta_summary["empty_generations"],
             meta_summary["truncated_at_max_tokens"], meta["tokens_generated"], this_process["tokens_per_second"])
    if meta_summary["empty_generations"]:
        empty_ids = [row["id"] for row in merged if not row["generated"]]
        log.warning("%d empty generation(s) kept (the trainer decides what to do with them), e.g. %s",
                    len(empty_ids), ", ".join(empty_ids[:5]))
    return meta


def _wait_for_shards(shard_dir: Path, n_shards: int, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    announced = False
    while True:
        missing = [k for k in range(n_shards) if not shard_path(shard_dir, k).is_file()]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise GsilError(f"{len(missing)} shard(s) of {shard_dir} never appeared (e.g. shard {missing[0]})")
        if not announced:
            log.info("waiting for %d shard(s) from the other processes", len(missing))
            announced = True
        time.sleep(2.0)


def _meta(config: GenerateConfig, rows: list[dict], generator_info: dict, prompts_sha256: str,
          prompts_truncated: int, this_process: dict, others: list[dict], dist: DistributedInfo) -> dict:
    from gsil.runinfo import run_info

    processes = [this_process, *others] if dist.world_size > 1 else [this_process]
    run_tokens = sum(p["tokens_generated"] for p in processes)
    # Processes run side by side, so the run's rate is the sum of their rates.
    rates = [p["tokens_per_second"] for p in processes if p["tokens_per_second"]]
    settings = config.settings()
    return {
        "backend": config.backend,
        "model": str(config.model),
        "prompts": str(config.prompts),
        "prompts_sha256": prompts_sha256,
        "template": config.template,
        "sampling": config.sampling.to_dict(),
        "seeding": SEEDING,
        "batch_size": config.batch_size,
        "max_prompt_length": config.max_prompt_length,
        "shard_size": config.shard_size,
        "precision": config.precision,
        "resolved_precision": generator_info.get("precision"),
        "device": generator_info.get("device"),
        "stop_token_ids": generator_info.get("stop_token_ids"),
        "tensor_parallel_size": config.tensor_parallel_size if config.backend == "vllm" else None,
        "world_size": dist.world_size,
        "counts": {
            "rows": len(rows),
            "empty_generations": sum(1 for row in rows if not row["generated"]),
            "truncated_at_max_tokens": sum(1 for row in rows if not row["finished"]),
            "prompts_truncated": prompts_truncated,
            "shards": -(-len(rows) // config.shard_size),
            "shards_resumed": sum(p["shards_resumed"] for p in processes),
        },
        "tokens_generated": sum(row["generated_tokens"] for row in rows),
        "this_run": {
            "tokens_generated": run_tokens,
            "tokens_per_second": round(sum(rates), 2) if rates else None,
            "processes": processes,
        },
        "empty_generation_policy": "kept with generated == ''; the trainer decides whether to use or drop them",
        "run_info": run_info(settings),
    }
