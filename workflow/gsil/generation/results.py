"""What a backend returns, and how its raw output becomes a response.

Post-processing: the generated ids are cut at the first stop token (`split_at_stop`; EOS and the chat template's
end-of-turn token, `stop_token_ids_for`), decoded without special tokens, and stripped of surrounding whitespace
(`clean_generation`). An empty generation is KEPT (the row's `generated` is ""), counted in the log and in the meta
sidecar. Generation does not decide what to do with it: the trainer does (it may keep it as a negative, which pushes
the model away from stopping at once, or drop it and count it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

# Called after each completed batch with (prompts in the batch, tokens generated in the batch).
BatchCallback = Callable[[int, int], None]


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


def stop_token_ids_for(tokenizer, model_generation_config=None) -> list[int]:
    """EOS and the chat template's end-of-turn token(s), plus any EOS the model's generation config names."""
    from gsil.tokenization import end_of_turn_token_ids

    ids = list(end_of_turn_token_ids(tokenizer))
    configured = getattr(model_generation_config, "eos_token_id", None)
    if configured is not None:
        ids.extend(configured if isinstance(configured, (list, tuple)) else [configured])
    return list(dict.fromkeys(int(i) for i in ids))
