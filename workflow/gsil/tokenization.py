"""Turning (prompt, response) text into model inputs: one code path for SFT, self-play, DPO, reference scoring and
generation, so a response is scored under exactly the tokens it was trained and generated with.

Rendering (`render_prompt`):
  * `chat` (default): the tokenizer's own chat template with one user turn and the generation prompt
    (`apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)`).
  * `spin`: SPIN's raw template `"### Instruction: {prompt}\\n\\n### Response: "`.

BOS (`prompt_token_ids`): a prompt's ids start with the BOS token exactly once when the tokenizer's default
encoding (`tokenizer(text)`, what the official GSIL/SPIN/DPO pipelines and the model's pretraining used) adds one,
whether or not the chat template writes it: zephyr's template writes none although its Llama/Mistral tokenizer adds
`<s>`, Gemma's and Llama-3's write it and their tokenizers add it too (the official pipelines then get it twice).
Tokenizers whose default encoding adds no BOS (SmolLM2, GPT-2, Qwen) get none added; a BOS their template writes
stays as written. Both templates (`chat`, `spin`) take this one path.

Encoding (`encode_example`): prompt ids + response ids + the template's end-of-turn token (`<|im_end|>` for
SmolLM2's ChatML, EOS for zephyr and for the `spin` template, so a model learns to stop). Labels are -100 on every
prompt token and equal the input ids on the response tokens and the end-of-turn token.

Response ids (`response_token_ids`) are the CONTINUATION of the prompt's ids, not the response tokenized alone: the
rendered prompt text + response text are tokenized together (BOS as above) and the response gets the ids after the
prompt's. That is what a model sees when it writes the response in context (the alignment-handbook SFT, TRL DPO and
SPIN pipelines tokenize prompt + response together too), and what it generates: both generation backends continue
the prompt's ids, so a generated response decoded to text and encoded here gives back the generated ids (where
they are the tokenizer's own segmentation of that text; generation strips surrounding whitespace). Alone, a
sentencepiece (Metaspace) tokenizer such as zephyr's would put its dummy prefix on the first word ("Hello" ->
"▁Hello") where, after "<|assistant|>\\n", the model reads and writes "Hello". Byte-level BPE tokenizers (SmolLM2,
GPT-2) split at the prompt's final newline anyway, so their ids are the same either way.

A boundary merge (the prompt's ids are not a prefix of the joint ids: its last token fuses with the response's
first, e.g. the `spin` template's trailing space with the response's first word) cannot be split at the prompt:
the prompt keeps its own ids (the ones generation used; re-segmenting them would change the prompt, and taking the
joint ids from the first difference would repeat the prompt's tail text). The response is then tokenized as text
that continues after a special token (`continuation_ids`): for byte-level BPE that is the response tokenized alone,
as before; for a Metaspace tokenizer it carries no dummy prefix, so "### Response: " + "The" does not become two
spaces. Merges are counted (`Encoded.boundary_merged`, `TruncationStats.boundary_merges`), never silent.

Truncation, in this order (counted by `TruncationStats`, never silent):
  1. a prompt longer than `max_prompt_length` keeps its END (its last `max_prompt_length` tokens: the question sits
     at the end of a chat prompt, the header at the start); where the tokenizer adds a BOS, the BOS stays first
     (BOS + the last `max_prompt_length - 1` tokens), so a truncated prompt still starts like every other;
  2. the response (plus its end-of-turn token) is then cut from the RIGHT to fit `max_length` in total; a cut
     response does not get the end-of-turn token, because it did not end there.
`max_prompt_length < max_length` is required, so every example keeps at least one response position.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

from gsil.logutil import GsilError

IGNORE_INDEX = -100
TEMPLATES = ("chat", "spin")
SPIN_TEMPLATE = "### Instruction: {prompt}\n\n### Response: "

Template = Literal["chat", "spin"]

# Special tokens that close an assistant turn in common chat templates. Only those that the tokenizer knows AND its
# chat template uses are taken (a vocabulary can hold tokens its template never emits).
_END_OF_TURN_CANDIDATES = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


def render_prompt(tokenizer, prompt: str, *, template: Template = "chat") -> str:
    """The text a model sees before its response."""
    if template == "spin":
        return SPIN_TEMPLATE.format(prompt=prompt)
    if template != "chat":
        raise GsilError(f"unknown prompt template {template!r}; expected one of {', '.join(TEMPLATES)}")
    if not getattr(tokenizer, "chat_template", None):
        raise GsilError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template; use template 'spin'"
        )
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )


def end_of_turn_token_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant turn: the chat template's end-of-turn token(s) first, then EOS.

    Used as the stop ids for generation and (the first one) as the token appended after a response.
    """
    ids: list[int] = []
    chat_template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(chat_template, dict):  # several named templates
        chat_template = " ".join(chat_template.values())
    for token in _END_OF_TURN_CANDIDATES:
        token_id = _token_id(tokenizer, token) if token in chat_template else None
        if token_id is not None:
            ids.append(token_id)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    ids = list(dict.fromkeys(ids))  # de-duplicate, keep order
    if not ids:
        raise GsilError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no EOS/end-of-turn token")
    return ids


def _token_id(tokenizer, token: str) -> int | None:
    """The id of `token` if it is one token of the vocabulary, else None. One lookup, not `get_vocab()`: that builds
    the whole vocabulary dict (about 0.2 s for SmolLM2's 49k tokens) and this runs once per encoded example."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or tokenizer.convert_ids_to_tokens(token_id) != token:
        return None  # unknown tokens map to <unk> (or None)
    return int(token_id)


def response_end_token_id(tokenizer, template: Template = "chat") -> int:
    """The token appended after a response: the end-of-turn token for chat templates, EOS for `spin`."""
    if template == "spin" and tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    return end_of_turn_token_ids(tokenizer)[0]


def _ids(tokenizer, text: str, *, add_special_tokens: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def adds_bos_token(tokenizer) -> bool:
    """Whether the tokenizer's default encoding starts a text with its BOS token.

    Probed by encoding a short text with and without special tokens rather than read from `add_bos_token`: the
    post-processor in tokenizer.json decides, and the attribute is absent on some tokenizer classes and False on a
    reloaded Llama tokenizer whose tokenizer.json still adds `<s>`.
    """
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    with_special = _ids(tokenizer, "a", add_special_tokens=True)
    plain = _ids(tokenizer, "a", add_special_tokens=False)
    return with_special[:1] == [bos] and plain[:1] != [bos]


def prompt_token_ids(tokenizer, text: str, *, add_bos: bool | None = None) -> list[int]:
    """Ids of a rendered prompt: BOS exactly once at the start where the tokenizer's default encoding adds one
    (`add_bos`, probed with `adds_bos_token` when None).

    The text is tokenized without special tokens (a default encoding could also append EOS, which does not belong
    after a prompt) and BOS is put in front unless the rendered text already starts with it.
    """
    if add_bos is None:
        add_bos = adds_bos_token(tokenizer)
    ids = _ids(tokenizer, text, add_special_tokens=False)
    if add_bos and ids[:1] != [tokenizer.bos_token_id]:
        ids.insert(0, tokenizer.bos_token_id)
    return ids


def left_truncate(ids: list[int], max_length: int, *, keep_first: bool) -> list[int]:
    """The last `max_length` ids; with `keep_first` the first id (the BOS) stays in front of the last
    `max_length - 1`."""
    if len(ids) <= max_length:
        return ids
    head = ids[:1] if keep_first else []
    return head + ids[len(ids) - (max_length - len(head)):]


def _truncate_prompt(ids: list[int], max_prompt_length: int | None, *, add_bos: bool) -> tuple[list[int], bool]:
    """Rule 1 of the module docstring: keep the prompt's end (and its BOS first); whether anything was cut."""
    if max_prompt_length is not None and len(ids) > max_prompt_length:
        return left_truncate(ids, max_prompt_length, keep_first=add_bos), True
    return ids, False


def encode_prompt(
    tokenizer, prompt: str, *, max_prompt_length: int | None = None, template: Template = "chat"
) -> tuple[list[int], bool]:
    """Prompt token ids (BOS rule and left truncation to `max_prompt_length` as in the module docstring) and whether
    they were truncated. Training, reference scoring and both generation backends encode prompts here."""
    add_bos = adds_bos_token(tokenizer)
    ids = prompt_token_ids(tokenizer, render_prompt(tokenizer, prompt, template=template), add_bos=add_bos)
    return _truncate_prompt(ids, max_prompt_length, add_bos=add_bos)


def continuation_ids(tokenizer, text: str) -> list[int]:
    """Ids of `text` as it is tokenized after a special token, the fallback for a merged prompt boundary.

    A special token splits the text, so nothing before it can fuse with `text`. A Metaspace tokenizer that puts its
    dummy prefix only at the start of a text (prepend scheme "first", transformers' Llama/Mistral tokenizers) puts
    none here; one that prefixes every segment (legacy Llama) and byte-level BPE give the ids of `text` alone. The
    EOS token is the separator; where it is not an added token, or one that swallows the whitespace after it
    (`rstrip`), `text` is tokenized alone.
    """
    eos = tokenizer.eos_token_id
    added = (getattr(tokenizer, "added_tokens_decoder", None) or {}).get(eos)
    if added is None or getattr(added, "rstrip", False):
        return _ids(tokenizer, text, add_special_tokens=False)
    ids = _ids(tokenizer, tokenizer.eos_token + text, add_special_tokens=False)
    if ids[:1] != [eos]:
        return _ids(tokenizer, text, add_special_tokens=False)
    return ids[1:]


def response_token_ids(
    tokenizer, rendered_prompt: str, prompt_ids: Sequence[int], response: str, *, add_bos: bool
) -> tuple[list[int], bool]:
    """(ids of `response` as the continuation of `prompt_ids`, whether the prompt boundary merged).

    `prompt_ids` are the untruncated ids of `rendered_prompt` (`prompt_token_ids` with the same `add_bos`); the
    split is made before any truncation, so a truncated prompt's response ids are those of the whole prompt.
    """
    if not response:
        return [], False
    joint = prompt_token_ids(tokenizer, rendered_prompt + response, add_bos=add_bos)
    n = len(prompt_ids)
    if joint[:n] == list(prompt_ids):
        return joint[n:], False
    return continuation_ids(tokenizer, response), True


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    prompt_length: int  # prompt tokens kept (labels are -100 on exactly these)
    prompt_truncated: bool
    response_truncated: bool
    empty_response: bool
    boundary_merged: bool = False  # the prompt's last token fused with the response's (see `response_token_ids`)

    @property
    def truncated(self) -> bool:
        return self.prompt_truncated or self.response_truncated

    @property
    def response_length(self) -> int:
        return len(self.input_ids) - self.prompt_length


def encode_example(
    tokenizer,
    prompt: str,
    response: str,
    *,
    max_length: int,
    max_prompt_length: int,
    template: Template = "chat",
) -> Encoded:
    """Token ids and labels of `prompt` + `response` + end-of-turn: the response ids continue the prompt's
    (`response_token_ids`), then the truncation rules of the module docstring apply."""
    if max_prompt_length >= max_length:
        raise GsilError(f"max_prompt_length ({max_prompt_length}) must be smaller than max_length ({max_length})")
    add_bos = adds_bos_token(tokenizer)
    rendered = render_prompt(tokenizer, prompt, template=template)
    full_prompt_ids = prompt_token_ids(tokenizer, rendered, add_bos=add_bos)
    response_ids, merged = response_token_ids(tokenizer, rendered, full_prompt_ids, response, add_bos=add_bos)
    response_ids.append(response_end_token_id(tokenizer, template))
    prompt_ids, prompt_truncated = _truncate_prompt(full_prompt_ids, max_prompt_length, add_bos=add_bos)
    room = max_length - len(prompt_ids)
    response_truncated = len(response_ids) > room
    if response_truncated:
        response_ids = response_ids[:room]  # drops the end-of-turn token first: a cut response did not end
    return Encoded(
        input_ids=prompt_ids + response_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + list(response_ids),
        prompt_length=len(prompt_ids),
        prompt_truncated=prompt_truncated,
        response_truncated=response_truncated,
        empty_response=not response.strip(),
        boundary_merged=merged,
    )


def pad_batch(encoded: Sequence[Encoded], pad_token_id: int, *, side: str = "right") -> dict[str, Any]:
    """Stack examples into `input_ids`, `attention_mask` and `labels` tensors (labels padded with -100)."""
    import torch

    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', not {side!r}")
    if not encoded:
        raise ValueError("pad_batch needs at least one example")
    width = max(len(e.input_ids) for e in encoded)
    input_ids = torch.full((len(encoded), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(encoded):
        n = len(example.input_ids)
        cols = slice(0, n) if side == "right" else slice(width - n, width)
        input_ids[row, cols] = torch.tensor(example.input_ids, dtype=torch.long)
        attention_mask[row, cols] = 1
        labels[row, cols] = torch.tensor(example.labels, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@dataclass
class TruncationStats:
    """Counts of what truncation did to a data set, for the stage log and the stage's metadata."""

    examples: int = 0
    prompt_truncated: int = 0
    response_truncated: int = 0
    empty_responses: int = 0
    boundary_merges: int = 0
    by_name: dict[str, int] = field(default_factory=dict)

    def add(self, example: Encoded, name: str | None = None) -> Encoded:
        """Count one encoded example (`name`, e.g. 'real'/'generated', also counts its truncations per name)."""
        self.examples += 1
        self.prompt_truncated += example.prompt_truncated
        self.response_truncated += example.response_truncated
        self.empty_responses += example.empty_response
        self.boundary_merges += example.boundary_merged
        if name is not None and example.truncated:
            self.by_name[name] = self.by_name.get(name, 0) + 1
        return example

    def as_dict(self) -> dict[str, Any]:
        return {
            "examples": self.examples,
            "prompt_truncated": self.prompt_truncated,
            "response_truncated": self.response_truncated,
            "empty_responses": self.empty_responses,
            "boundary_merges": self.boundary_merges,
            "truncated_by_name": dict(self.by_name),
        }

    def summary(self) -> str:
        text = (
            f"{self.examples} sequences: {self.prompt_truncated} prompts left-truncated, "
            f"{self.response_truncated} responses cut at max length, {self.empty_responses} empty responses, "
            f"{self.boundary_merges} responses after a merged prompt boundary"
        )
        if self.by_name:
            text += " (truncated: " + ", ".join(f"{k} {v}" for k, v in sorted(self.by_name.items())) + ")"
        return text

    def log(self, logger: logging.Logger, what: str = "tokenization") -> None:
        level = logging.WARNING if (self.prompt_truncated or self.response_truncated) else logging.INFO
        logger.log(level, "%s: %s", what, self.summary())
