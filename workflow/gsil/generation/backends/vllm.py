"""The GPU backend: `vllm.LLM` + one `SamplingParams` per prompt (the prompt's own seed), tensor parallel,
imported only when chosen.

`VllmGenerator.stream` queues ALL of the job's remaining prompts in the engine at once (vLLM's
`LLMEngine.add_request`/`step`, the loop `LLM.generate` itself runs) and yields each result as its request finishes,
so the engine never idles at a shard's tail and shards are still written as soon as they are complete. The request
list and sampling arguments are built by pure functions (`vllm_requests`, `vllm_sampling_kwargs`) so they are tested
without vLLM. vLLM and the transformers backend use different noise, so their samples differ; each is reproducible.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

from gsil.generation.results import BatchCallback, GenerationResult, clean_generation
from gsil.generation.settings import SamplingSettings, positional_seeds
from gsil.logutil import GsilError

VLLM_EXTRA_HINT = "pip install -e .[vllm]"


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
