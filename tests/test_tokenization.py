"""Prompt rendering, prompt masking, end-of-turn tokens, truncation rules and padding, on the SmolLM2 tokenizer."""

from __future__ import annotations

import logging

import pytest

from gsil import tokenization as tk
from gsil.logutil import GsilError
from gsil.modeling import smollm2_tokenizer

PROMPT = "Maya has 5 stickers. She buys 3 packs with 4 stickers in each pack. How many stickers does Maya have now?"
RESPONSE = "The packs hold 3 * 4 = 12 stickers.\nNow Maya has 5 + 12 = 17 stickers.\n#### 17"


@pytest.fixture(scope="module")
def tokenizer():
    return smollm2_tokenizer()


def test_chat_prompt_is_the_tokenizers_template(tokenizer):
    text = tk.render_prompt(tokenizer, PROMPT)
    assert text == tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=False
    )
    assert text.endswith("<|im_start|>assistant\n") and PROMPT in text


def test_spin_prompt_template(tokenizer):
    assert tk.render_prompt(tokenizer, "Hi?", template="spin") == "### Instruction: Hi?\n\n### Response: "
    with pytest.raises(GsilError, match="unknown prompt template"):
        tk.render_prompt(tokenizer, "Hi?", template="alpaca")


def test_end_of_turn_tokens(tokenizer):
    ids = tk.end_of_turn_token_ids(tokenizer)
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token_id in ids
    assert tk.response_end_token_id(tokenizer, "chat") == ids[0]
    assert tk.response_end_token_id(tokenizer, "spin") == tokenizer.eos_token_id


def test_end_of_turn_lookup_does_not_build_the_vocabulary(tokenizer, monkeypatch):
    """`get_vocab()` costs ~0.2 s on a 49k vocabulary and end-of-turn ids are looked up once per encoded example."""
    expected = tk.end_of_turn_token_ids(tokenizer)

    def forbidden():
        raise AssertionError("get_vocab called")

    monkeypatch.setattr(tokenizer, "get_vocab", forbidden)
    assert tk.end_of_turn_token_ids(tokenizer) == expected
    tk.encode_example(tokenizer, PROMPT, RESPONSE, max_length=512, max_prompt_length=256)


def test_smollm2_prompt_gets_no_bos(tokenizer):
    """SmolLM2's bos_token is <|im_start|>, which its default encoding never adds: the ids are the rendered text's."""
    rendered = tk.render_prompt(tokenizer, PROMPT)
    ids, _ = tk.encode_prompt(tokenizer, PROMPT)
    assert not tk.adds_bos_token(tokenizer)
    assert ids == tokenizer(rendered, add_special_tokens=False)["input_ids"] == tokenizer(rendered)["input_ids"]


@pytest.mark.parametrize("template", ["chat", "spin"])
def test_labels_mask_exactly_the_prompt(tokenizer, template):
    enc = tk.encode_example(tokenizer, PROMPT, RESPONSE, max_length=512, max_prompt_length=256, template=template)
    prompt_ids, _ = tk.encode_prompt(tokenizer, PROMPT, template=template)
    n = len(prompt_ids)
    assert enc.prompt_length == n
    assert enc.input_ids[:n] == prompt_ids
    assert enc.labels[:n] == [tk.IGNORE_INDEX] * n
    assert enc.labels[n:] == enc.input_ids[n:]
    assert tk.IGNORE_INDEX not in enc.labels[n:]
    # the response, then the end-of-turn token
    assert enc.input_ids[-1] == tk.response_end_token_id(tokenizer, template)
    assert tokenizer.decode(enc.input_ids[n:-1]) == RESPONSE
    assert not enc.truncated and not enc.empty_response


def test_prompt_keeps_its_end(tokenizer):
    full, _ = tk.encode_prompt(tokenizer, PROMPT)
    enc = tk.encode_example(tokenizer, PROMPT, RESPONSE, max_length=200, max_prompt_length=10)
    assert enc.prompt_truncated and not enc.response_truncated
    assert enc.prompt_length == 10
    assert enc.input_ids[:10] == full[-10:]
    assert enc.labels[:10] == [tk.IGNORE_INDEX] * 10
    assert enc.input_ids[-1] == tk.response_end_token_id(tokenizer)


def test_response_cut_from_the_right_without_end_token(tokenizer):
    prompt_ids, _ = tk.encode_prompt(tokenizer, PROMPT)
    response_ids = tokenizer(RESPONSE, add_special_tokens=False)["input_ids"]
    max_length = len(prompt_ids) + 5
    enc = tk.encode_example(tokenizer, PROMPT, RESPONSE, max_length=max_length, max_prompt_length=len(prompt_ids))
    assert enc.response_truncated and not enc.prompt_truncated
    assert len(enc.input_ids) == max_length
    assert enc.input_ids[len(prompt_ids):] == response_ids[:5]
    assert tk.response_end_token_id(tokenizer) not in enc.input_ids[len(prompt_ids):]


def test_response_that_exactly_fits_keeps_end_token(tokenizer):
    prompt_ids, _ = tk.encode_prompt(tokenizer, PROMPT)
    response_ids = tokenizer(RESPONSE, add_special_tokens=False)["input_ids"]
    max_length = len(prompt_ids) + len(response_ids) + 1
    enc = tk.encode_example(tokenizer, PROMPT, RESPONSE, max_length=max_length, max_prompt_length=len(prompt_ids))
    assert not enc.truncated and len(enc.input_ids) == max_length
    assert enc.input_ids[-1] == tk.response_end_token_id(tokenizer)


def test_empty_response_labels_only_the_end_token(tokenizer):
    enc = tk.encode_example(tokenizer, PROMPT, "", max_length=256, max_prompt_length=128)
    assert enc.empty_response and enc.response_length == 1
    assert [label for label in enc.labels if label != tk.IGNORE_INDEX] == [tk.response_end_token_id(tokenizer)]


def test_prompt_limit_must_leave_room_for_the_response(tokenizer):
    with pytest.raises(GsilError, match="max_prompt_length"):
        tk.encode_example(tokenizer, PROMPT, RESPONSE, max_length=64, max_prompt_length=64)


def test_pad_batch_right_and_left(tokenizer):
    a = tk.encode_example(tokenizer, "Hi", "Hello there.", max_length=128, max_prompt_length=64)
    b = tk.encode_example(tokenizer, PROMPT, RESPONSE, max_length=128, max_prompt_length=64)
    width = max(len(a.input_ids), len(b.input_ids))
    right = tk.pad_batch([a, b], pad_token_id=0)
    assert right["input_ids"].shape == (2, width)
    assert right["attention_mask"][0].tolist() == [1] * len(a.input_ids) + [0] * (width - len(a.input_ids))
    assert right["input_ids"][0, : len(a.input_ids)].tolist() == a.input_ids
    assert right["labels"][0, len(a.input_ids):].tolist() == [tk.IGNORE_INDEX] * (width - len(a.input_ids))
    left = tk.pad_batch([a, b], pad_token_id=0, side="left")
    assert left["input_ids"][0, width - len(a.input_ids):].tolist() == a.input_ids
    assert left["attention_mask"][0, : width - len(a.input_ids)].sum().item() == 0
    assert left["labels"][0, width - len(a.input_ids):].tolist() == a.labels


def test_truncation_stats_count_and_log(tokenizer, caplog):
    stats = tk.TruncationStats()
    stats.add(tk.encode_example(tokenizer, PROMPT, RESPONSE, max_length=512, max_prompt_length=256), "real")
    stats.add(tk.encode_example(tokenizer, PROMPT, RESPONSE, max_length=40, max_prompt_length=10), "generated")
    stats.add(tk.encode_example(tokenizer, PROMPT, "", max_length=512, max_prompt_length=256), "generated")
    assert stats.as_dict() == {
        "examples": 3, "prompt_truncated": 1, "response_truncated": 1, "empty_responses": 1,
        "boundary_merges": 0, "truncated_by_name": {"generated": 1},
    }
    with caplog.at_level(logging.INFO):
        stats.log(logging.getLogger("test"), "pairs")
    assert ("3 sequences: 1 prompts left-truncated, 1 responses cut at max length, 1 empty responses, "
            "0 responses after a merged prompt boundary") in caplog.text
    assert caplog.records[-1].levelno == logging.WARNING
