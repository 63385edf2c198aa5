"""The default backend (CPU and GPU): batched decoding with the KV cache in which a row leaves the batch as soon as
it stops (gsil.generation.decoding), prompts sorted by length (longest first, so the batch that needs the most memory
runs first and padding is small), left padding, greedy or sampled, stopping at EOS and at the chat template's
end-of-turn token.

Hugging Face has no per-row random generator, so this backend samples by the Gumbel-max trick
(`PerPromptGumbelNoise`): it decodes with argmax over the temperature/top-p-processed scores plus Gumbel noise drawn
from one `torch.Generator` per prompt (seeded with the prompt's seed), which is an exact sample from the same
distribution. torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import logging
from typing import Sequence

from gsil.generation.decoding import decode_dropping_finished
from gsil.generation.results import BatchCallback, GenerationResult, clean_generation, split_at_stop
from gsil.generation.settings import DEFAULT_BATCH_SIZE, SamplingSettings, positional_seeds
from gsil.logutil import GsilError

log = logging.getLogger("gsil.generation")  # one logger for the package: log lines name gsil.generation


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


class TransformersGenerator:
    """Batched decoding (KV cache on, stopped rows leave the batch), length-sorted batches, left padding."""

    backend = "transformers"

    def __init__(self, model, tokenizer, settings: SamplingSettings, *, stop_token_ids: Sequence[int],
                 batch_size: int = DEFAULT_BATCH_SIZE, pad_token_id: int | None = None):
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
                new_tokens = decode_dropping_finished(
                    self.model, input_ids.to(device), attention_mask.to(device),
                    max_new_tokens=self.settings.max_new_tokens, stop_token_ids=self.stop_token_ids,
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

    def select_rows(self, indices: Sequence[int]) -> None:
        """Keep the generators of these rows, in this order (rows that stopped have left the batch)."""
        self.generators = [self.generators[i] for i in indices]

    def __call__(self, input_ids, scores):
        import torch

        if scores.shape[0] != len(self.generators):
            raise GsilError(f"{scores.shape[0]} rows of scores for {len(self.generators)} per-prompt generators")
        noise = torch.empty(scores.shape, dtype=torch.float32, device=scores.device)
        for row, generator in enumerate(self.generators):
            noise[row].exponential_(generator=generator)
        gumbel = noise.clamp_min_(torch.finfo(torch.float32).tiny).log_().neg_()
        return scores.float() + gumbel
