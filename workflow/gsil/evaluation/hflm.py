"""lm-eval's `hf` model with the suite's batched decoder for greedy generation (protocol `decoder`) and, where a
benchmark asks for it, multiple-choice log-likelihoods that score a shared context once (protocol `loglikelihood`).

lm-eval's HFLM generates each batch with Hugging Face `generate` and stops a batch only when every row has met a
stop string or EOS; its rows that finished early keep decoding padding until then. With `decoder: drop_finished`
(the default) greedy requests decode through gsil.generation.decoding instead, where a row leaves the batch at its
EOS or at the first of the request's stop strings (`until`, looked for in the same window of new tokens as lm-eval's
MultiTokenEOSCriteria). The returned tensor has `generate`'s layout, so lm-eval's own post-processing (decoding, the
cut at the first stop string, the filters and metrics) runs unchanged on it and the text is the same up to float
rounding of smaller batches. Sampled requests, and requests with generation settings that change greedy decoding
(beams, repetition penalty, ...), go to lm-eval's `generate` as before; so does everything with `decoder: generate`.

lm-eval scores every (context, choice) pair of a multiple-choice question as its own sequence, so a question with four
choices runs its context through the model four times. With `loglikelihood: shared_context` the requests that share
a context are scored together: one forward pass over the context (all but its last token) fills the KV cache, which
is repeated for the choices, and one batched pass over [last context token + choice] gives each choice's log-
probabilities (float32 log-softmax; summed, with lm-eval's is-greedy flag). Requests whose context is not shared, or
that exceed the model's length and would be left-truncated, go to lm-eval's own batched scoring; so does everything
with `loglikelihood: lm_eval` (the default: the paper's benchmarks keep lm-eval's exact path). lm-eval is imported
inside the function, after the offline switch.
"""

from __future__ import annotations

from functools import lru_cache

DECODERS = ("drop_finished", "generate")
LOGLIKELIHOODS = ("lm_eval", "shared_context")
# Generation settings that greedy decoding ignores (Hugging Face warns and drops them too).
_GREEDY_NEUTRAL = {"do_sample", "temperature", "top_p", "top_k"}


def is_greedy(generation_kwargs: dict) -> bool:
    """Whether lm-eval would decode these settings greedily, and with nothing but the defaults besides."""
    if set(generation_kwargs) - _GREEDY_NEUTRAL:
        return False
    do_sample = generation_kwargs.get("do_sample")
    if do_sample is None:  # lm-eval: temperature 0 (its default) means greedy
        return float(generation_kwargs.get("temperature", 0.0) or 0.0) == 0.0
    return not do_sample


def stop_string_windows(tokenizer, stop: list[str]) -> list[tuple[str, int]]:
    """(stop string, tokens of new text to look back over): its own token count plus 2, as lm-eval's stopping
    criterion, because a model may spell a stop string in other tokens than the tokenizer does."""
    return [(s, len(tokenizer.encode(s, add_special_tokens=False)) + 2) for s in stop if s]


def stopped_at_string(tokenizer, windows: list[tuple[str, int]], tokens: list[int]) -> bool:
    return any(s in tokenizer.decode(tokens[-width:]) for s, width in windows)


def shared_context_groups(contexts: list[tuple[int, ...]]) -> tuple[list[list[int]], list[int]]:
    """(indices grouped by identical context, in first-seen order, for contexts that occur more than once; the
    indices of contexts that occur once)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, context in enumerate(contexts):
        groups.setdefault(tuple(context), []).append(index)
    shared = [indices for indices in groups.values() if len(indices) > 1]
    single = [indices[0] for indices in groups.values() if len(indices) == 1]
    return shared, single


@lru_cache(maxsize=1)
def suite_hflm_class():
    """The HFLM subclass (built once, on first use, so that importing this module does not import lm-eval)."""
    import torch
    from lm_eval.models.huggingface import HFLM

    from gsil.generation import decoding
    from gsil.generation.decoding import cache_argument, padded_continuations, returned_cache

    class SuiteHFLM(HFLM):
        """HFLM whose greedy generation drops finished rows from the batch and which can score the choices of a
        shared context together (gsil.evaluation.hflm)."""

        drop_finished_rows = True
        shared_context_loglikelihood = False

        def _loglikelihood_tokens(self, requests, disable_tqdm=False, override_bs=None):
            if not self.shared_context_loglikelihood or self.backend != "causal":
                return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
            from tqdm import tqdm

            shared, rest = shared_context_groups([tuple(context) for _, context, _ in requests])
            groups = []
            for group in shared:  # lm-eval left-truncates what exceeds the model's length: it scores those
                longest = len(requests[group[0]][1]) + max(len(requests[i][2]) for i in group) - 1
                if longest <= self.max_length:
                    groups.append(group)
                else:
                    rest.extend(group)
            rest.sort()
            results: list = [None] * len(requests)
            if rest:
                for index, answer in zip(rest, super()._loglikelihood_tokens(
                        [requests[i] for i in rest], disable_tqdm=disable_tqdm, override_bs=override_bs)):
                    results[index] = answer
            progress = tqdm(total=sum(len(g) for g in groups), disable=disable_tqdm or self.rank != 0,
                            desc="Scoring choices of shared contexts")
            for group in groups:
                answers = self._score_shared_context(list(requests[group[0]][1]),
                                                     [list(requests[i][2]) for i in group])
                for index, answer in zip(group, answers):
                    results[index] = answer
                    if requests[index][0] is not None:
                        self.cache_hook.add_partial("loglikelihood", requests[index][0], answer)
                progress.update(len(group))
            progress.close()
            return results

        def _score_shared_context(self, context: list[int], continuations: list[list[int]]):
            """(sum of log-probabilities, whether greedy decoding gives the continuation) of each continuation."""
            rows = len(continuations)
            prefix, inputs = context[:-1], [[context[-1]] + tokens[:-1] for tokens in continuations]
            width = max(len(tokens) for tokens in inputs)
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            input_ids = torch.full((rows, width), pad, dtype=torch.long, device=self.device)
            mask = torch.zeros((rows, len(prefix) + width), dtype=torch.long, device=self.device)
            mask[:, :len(prefix)] = 1
            for row, tokens in enumerate(inputs):  # right padding: it never reaches a real position
                input_ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
                mask[row, len(prefix):len(prefix) + len(tokens)] = 1
            positions = (len(prefix) + torch.arange(width, device=self.device)).expand(rows, width)
            with torch.inference_mode(), torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                                         enabled=self.mixed_precision_dtype is not None):
                cached = {}
                if prefix:
                    output = self.model(input_ids=torch.tensor([prefix], device=self.device), use_cache=True,
                                        logits_to_keep=1)
                    cache = returned_cache(output)
                    cache.batch_repeat_interleave(rows)
                    cached = {cache_argument(self.model): cache}
                logits = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                    use_cache=bool(prefix), **cached).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            answers = []
            for row, tokens in enumerate(continuations):
                target = torch.tensor(tokens, dtype=torch.long, device=self.device)
                scores = logprobs[row, :len(tokens)]
                answers.append((float(scores.gather(1, target[:, None]).sum()),
                                bool((scores.argmax(dim=-1) == target).all())))
            return answers

        def _model_generate(self, context, max_length, stop, **generation_kwargs):
            attention_mask = generation_kwargs.pop("attention_mask", None)
            if not self.drop_finished_rows or not is_greedy(generation_kwargs) or attention_mask is None:
                if attention_mask is not None:
                    generation_kwargs["attention_mask"] = attention_mask
                return super()._model_generate(context, max_length, stop, **generation_kwargs)
            configured = getattr(self.model.generation_config, "eos_token_id", None)
            stop_ids = list(configured) if isinstance(configured, (list, tuple)) else \
                [] if configured is None else [configured]
            if self.tokenizer.eos_token_id is not None:
                stop_ids.append(self.tokenizer.eos_token_id)
            windows = stop_string_windows(self.tokenizer, list(stop or []))
            with torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                enabled=self.mixed_precision_dtype is not None):
                new_tokens = decoding.decode_dropping_finished(
                    self.model, context, attention_mask, max_new_tokens=max_length - context.shape[1],
                    stop_token_ids=stop_ids,
                    row_stopped=(lambda row, tokens: stopped_at_string(self.tokenizer, windows, tokens))
                    if windows else None)
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else stop_ids[0]
            return padded_continuations(context, new_tokens, pad)

    return SuiteHFLM
