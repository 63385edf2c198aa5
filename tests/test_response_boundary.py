"""Response ids continue the prompt's ids: `encode_example` tokenizes prompt text + response text together and takes
the ids after the prompt's, so a sentencepiece tokenizer's dummy prefix (zephyr: "The" alone is `▁The`, after
"<|assistant|>\\n" it is `The`) never lands on a response's first token; generated ids survive decoding and
re-encoding; merged boundaries are counted; SmolLM2's (byte-level BPE) ids are exactly the old ones. No Hub."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from tokenizer_fixtures import SPACE, zephyr_style_tokenizer

from gsil import tokenization as tk
from gsil.arithmetic import Sizes, build_demo_records

PROMPT = "Tom has 4 apples and buys 7 more. How many apples does he have now?"
RESPONSE = "He has 4 + 7 = 11 apples now.\n#### 11"
# Edge cases next to the demo rows: leading/trailing whitespace, non-ASCII (byte fallback), a lone space.
ODD_RESPONSES = ("\nHello there", " Hello", "Hello \n", "Ünïcode ✓ — ok", " ", "The end.\n\n#### 3", "")


@pytest.fixture(scope="module")
def zephyr():
    return zephyr_style_tokenizer()


@pytest.fixture(scope="module")
def smollm2():
    from gsil.modeling import smollm2_tokenizer

    return smollm2_tokenizer()


@pytest.fixture(scope="module")
def demo_rows():
    """(prompt, response) pairs like the demo's: gold solutions and slipped (rejected) ones, plus odd responses."""
    records = build_demo_records(0, sizes=Sizes(test=1, fewshot=1, selfplay=24, sft=40, preference=24))
    rows = [(r["prompt"], r["response"]) for r in records["sft"] + records["selfplay"]]
    rows += [(r["prompt"], r["rejected"]) for r in records["preferences"]]
    return rows + [(PROMPT, text) for text in ODD_RESPONSES]


def joint_tail(tokenizer, prompt: str, response: str, template: str = "chat") -> list[int] | None:
    """The ids of `response` in the tokenization of the rendered prompt + response (BOS rule as for prompts); None
    where the prompt's ids are not a prefix of those (a merged boundary)."""
    rendered = tk.render_prompt(tokenizer, prompt, template=template)
    add_bos = tk.adds_bos_token(tokenizer)
    prompt_ids = tk.prompt_token_ids(tokenizer, rendered, add_bos=add_bos)
    joint = tk.prompt_token_ids(tokenizer, rendered + response, add_bos=add_bos)
    return joint[len(prompt_ids):] if joint[: len(prompt_ids)] == prompt_ids else None


def old_encode(tokenizer, prompt, response, *, max_length, max_prompt_length, template):
    """The encoding before this change (response tokenized alone), kept here to pin byte-level BPE ids."""
    prompt_ids, _ = tk.encode_prompt(tokenizer, prompt, max_prompt_length=max_prompt_length, template=template)
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] if response else []
    response_ids = (list(response_ids) + [tk.response_end_token_id(tokenizer, template)])
    return prompt_ids + response_ids[: max_length - len(prompt_ids)], len(prompt_ids)


def test_fixture_tokenizes_like_llama_sentencepiece(zephyr):
    """Metaspace with a dummy prefix on a text's first word only, `▁` word pieces, bare pieces after a newline."""
    pre = zephyr.backend_tokenizer.pre_tokenizer
    assert type(pre).__name__ == "Metaspace" and pre.replacement == SPACE and pre.prepend_scheme == "first"
    assert zephyr.convert_ids_to_tokens(zephyr("Hello there", add_special_tokens=False)["input_ids"]) == [
        SPACE + "Hello", SPACE + "there"]
    in_context = zephyr("<|assistant|>\nHello there", add_special_tokens=False)["input_ids"]
    assert zephyr.convert_ids_to_tokens(in_context)[-3:] == ["<0x0A>", "Hello", SPACE + "there"]
    assert zephyr.decode(in_context[-2:]) == "Hello there"


@pytest.mark.parametrize("template", ["chat", "spin"])
def test_zephyr_response_ids_are_the_joint_tail(zephyr, demo_rows, template):
    changed = 0
    for prompt, response in demo_rows:
        enc = tk.encode_example(zephyr, prompt, response, max_length=512, max_prompt_length=256, template=template)
        prompt_ids, _ = tk.encode_prompt(zephyr, prompt, template=template)
        n = enc.prompt_length
        assert enc.input_ids[:n] == prompt_ids  # the ids generation continues, untouched
        assert enc.input_ids[-1] == zephyr.eos_token_id
        tail = joint_tail(zephyr, prompt, response, template)
        if tail is None:  # the spin template's trailing space: test_merged_boundary_keeps_the_prompt_and_the_text
            assert enc.boundary_merged
            continue
        assert enc.input_ids[n:-1] == tail
        assert not enc.boundary_merged
        changed += enc.input_ids[n:-1] != zephyr(response, add_special_tokens=False)["input_ids"]
    if template == "chat":  # every response lost its dummy prefix, except where it starts with a real space
        assert changed == sum(1 for _, r in demo_rows if r and not r.startswith(" "))


def test_first_response_token_has_no_dummy_prefix(zephyr):
    enc = tk.encode_example(zephyr, PROMPT, RESPONSE, max_length=512, max_prompt_length=256)
    first = zephyr.convert_ids_to_tokens(enc.input_ids[enc.prompt_length])
    assert first == "He" and zephyr(RESPONSE, add_special_tokens=False)["input_ids"][0] == zephyr.convert_tokens_to_ids(
        SPACE + "He")
    assert not enc.boundary_merged


def _backend_texts(zephyr, prompt_ids, generated):
    """The response text both generation backends would return for these new ids (stop token and padding after):
    the transformers backend decodes the new ids alone, vLLM detokenizes them in the prompt's context."""
    from gsil.generation import SamplingSettings, TransformersGenerator, result_from_vllm

    stops = tk.end_of_turn_token_ids(zephyr)
    new_ids = generated + [stops[0], 0, 0]
    generator = TransformersGenerator(None, zephyr, SamplingSettings(), stop_token_ids=stops)
    hf = generator._result(new_ids)
    prefix = zephyr.decode(prompt_ids, skip_special_tokens=True)
    whole = zephyr.decode(prompt_ids + generated, skip_special_tokens=True)
    assert whole.startswith(prefix)
    output = SimpleNamespace(outputs=[SimpleNamespace(text=whole[len(prefix):], token_ids=generated + stops[:1],
                                                      finish_reason="stop")])
    vllm = result_from_vllm(output, zephyr.all_special_tokens)
    assert hf.finished and hf.n_tokens == len(generated) + 1
    return hf.text, vllm.text


@pytest.mark.parametrize("max_prompt_length", [256, 12])
def test_generated_ids_survive_decoding_and_reencoding(zephyr, demo_rows, max_prompt_length):
    """Self-play: ids generated after the prompt ids, decoded as the backends do, encoded again: the same ids."""
    checked = 0
    for prompt, response in demo_rows:
        if response != response.strip() or not response:
            continue  # generation strips surrounding whitespace, so such text never comes back from it
        prompt_ids, _ = tk.encode_prompt(zephyr, prompt, max_prompt_length=max_prompt_length)
        generated = joint_tail(zephyr, prompt, response)  # the tokenizer's own segmentation in context
        assert generated
        for text in _backend_texts(zephyr, prompt_ids, generated):
            assert text == response
            enc = tk.encode_example(zephyr, prompt, text, max_length=1024, max_prompt_length=max_prompt_length)
            assert enc.input_ids[:enc.prompt_length] == prompt_ids
            assert enc.input_ids[enc.prompt_length:] == generated + [zephyr.eos_token_id]
        checked += 1
    assert checked >= 80


def test_merged_boundary_keeps_the_prompt_and_the_text(zephyr):
    """The spin template ends in a space that fuses with the response's first word (`▁He`): the prompt keeps the
    ids generation used, and the response is tokenized as a continuation (no dummy prefix, no doubled space)."""
    enc = tk.encode_example(zephyr, PROMPT, RESPONSE, max_length=512, max_prompt_length=256, template="spin")
    prompt_ids, _ = tk.encode_prompt(zephyr, PROMPT, template="spin")
    rendered = tk.render_prompt(zephyr, PROMPT, template="spin")
    joint = tk.prompt_token_ids(zephyr, rendered + RESPONSE, add_bos=True)
    assert joint[: len(prompt_ids)] != prompt_ids  # the boundary really merges
    assert enc.boundary_merged
    assert enc.input_ids[: enc.prompt_length] == prompt_ids
    response_ids = enc.input_ids[enc.prompt_length:-1]
    assert zephyr.convert_ids_to_tokens(response_ids[:1]) == ["He"]
    assert response_ids == tk.continuation_ids(zephyr, RESPONSE)
    assert zephyr.decode(enc.input_ids[:-1]) == zephyr.decode(joint)  # same text as the joint tokenization


@pytest.mark.parametrize("template", ["chat", "spin"])
def test_smollm2_ids_are_unchanged(smollm2, demo_rows, template):
    """Byte-level BPE splits at the prompt's final newline (chat); the spin template's trailing space merges, and
    the fallback tokenizes the response as before. Either way the demo's ids do not move."""
    merged = set()
    for prompt, response in demo_rows:
        for max_length, max_prompt_length in ((256, 128), (40, 16)):
            enc = tk.encode_example(smollm2, prompt, response, max_length=max_length,
                                    max_prompt_length=max_prompt_length, template=template)
            ids, n = old_encode(smollm2, prompt, response, max_length=max_length,
                                max_prompt_length=max_prompt_length, template=template)
            assert (enc.input_ids, enc.prompt_length) == (ids, n)
            if enc.boundary_merged:
                merged.add(response)
    words = {r for _, r in demo_rows if r[:1].isalnum()}
    if template == "spin":  # "Response: " + "The" -> "Response", ":", " The"
        assert words <= merged
    else:  # only a blank response fuses with the prompt's final "\n" (one whitespace run)
        assert merged == {" "}


def test_smollm2_pinned_ids(smollm2):
    """Ids computed with the encoding before this change."""
    enc = tk.encode_example(smollm2, "Hi", "Hello there.", max_length=128, max_prompt_length=64)
    assert enc.input_ids[enc.prompt_length:] == [19556, 665, 30, 2]
    spin = tk.encode_example(smollm2, "Hi", "Hello there.", max_length=128, max_prompt_length=64, template="spin")
    assert (spin.input_ids, spin.prompt_length) == ([3757, 20880, 42, 21041, 198, 198, 3757, 14212, 42, 216, 19556,
                                                     665, 30, 2], 10)
    demo = tk.encode_example(smollm2, "Maya has 5 stickers.", "The packs hold 3 * 4 = 12 stickers.\n#### 12",
                             max_length=128, max_prompt_length=64)
    assert demo.input_ids[demo.prompt_length:] == [504, 22614, 2205, 216, 35, 1672, 216, 36, 446, 216, 33, 34, 30753,
                                                   30, 198, 1229, 216, 33, 34, 2]


def test_prompt_truncation_happens_after_the_split(zephyr):
    full = tk.encode_example(zephyr, PROMPT, RESPONSE, max_length=512, max_prompt_length=256)
    cut = tk.encode_example(zephyr, PROMPT, RESPONSE, max_length=512, max_prompt_length=12)
    assert cut.prompt_truncated and cut.prompt_length == 12
    assert cut.input_ids[:12] == tk.encode_prompt(zephyr, PROMPT, max_prompt_length=12)[0]
    assert cut.input_ids[12:] == full.input_ids[full.prompt_length:]


def test_boundary_merges_are_counted_and_logged(zephyr, caplog):
    stats = tk.TruncationStats()
    for template in ("chat", "spin"):
        stats.add(tk.encode_example(zephyr, PROMPT, RESPONSE, max_length=512, max_prompt_length=256,
                                    template=template))
    assert stats.boundary_merges == 1 and stats.as_dict()["boundary_merges"] == 1
    with caplog.at_level(logging.INFO):
        stats.log(logging.getLogger("test"), "pairs")
    assert "1 responses after a merged prompt boundary" in caplog.text
