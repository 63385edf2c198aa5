"""BOS exactly once: prompts start with the BOS token once where the tokenizer's default encoding adds one (zephyr's
template writes none; a Llama-2/Gemma-style template writes it), never for tokenizers that add none (SmolLM2), also
after left truncation, in the `spin` template, in `encode_example`'s labels and in what both generation backends get.
Tiny tokenizers from tests/tokenizer_fixtures.py, no Hub."""

from __future__ import annotations

import pytest
from tokenizer_fixtures import BOS_CHAT_TEMPLATE, ZEPHYR_CHAT_TEMPLATE, llama_style_tokenizer, zephyr_style_tokenizer

from gsil import tokenization as tk

PROMPT = "Tom has 4 apples and buys 7 more. How many apples does he have now?"
RESPONSE = "He has 4 + 7 = 11 apples now.\n#### 11"


@pytest.fixture(scope="module")
def zephyr():
    return zephyr_style_tokenizer()


@pytest.fixture(scope="module")
def bos_template():
    return llama_style_tokenizer(chat_template=BOS_CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def no_default_bos():
    return llama_style_tokenizer(chat_template=ZEPHYR_CHAT_TEMPLATE, add_bos_token=False)


@pytest.fixture(scope="module")
def smollm2():
    from gsil.modeling import smollm2_tokenizer

    return smollm2_tokenizer()


def bos_count(tokenizer, ids) -> int:
    return sum(1 for i in ids if i == tokenizer.bos_token_id)


def test_fixture_tokenizer_is_llama_like(zephyr, tmp_path):
    assert (zephyr.bos_token, zephyr.eos_token, zephyr.unk_token) == ("<s>", "</s>", "<unk>")
    text = "Maya has 5 stickers; she buys 3 packs (4 each). How many? Ünïcode ✓\n#### 17"
    ids = zephyr(text)["input_ids"]
    assert ids[0] == zephyr.bos_token_id and zephyr.unk_token_id not in ids
    assert zephyr.decode(ids, skip_special_tokens=True) == text
    rendered = tk.render_prompt(zephyr, "Hi")
    assert rendered == "<|user|>\nHi</s>\n<|assistant|>\n"  # zephyr's template: no BOS
    zephyr.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(text)["input_ids"] == ids
    assert reloaded.chat_template == zephyr.chat_template
    assert tk.adds_bos_token(reloaded)  # probed from the encoding: `add_bos_token` reads False after a reload


def test_adds_bos_token_is_probed_from_the_default_encoding(zephyr, bos_template, no_default_bos, smollm2):
    assert tk.adds_bos_token(zephyr) and tk.adds_bos_token(bos_template)
    assert not tk.adds_bos_token(no_default_bos)
    assert not tk.adds_bos_token(smollm2)  # its bos_token is <|im_start|>, which it never adds by itself


@pytest.mark.parametrize("template", ["chat", "spin"])
@pytest.mark.parametrize("name", ["zephyr", "bos_template"])
def test_bos_exactly_once_first(request, name, template):
    tokenizer = request.getfixturevalue(name)
    ids, truncated = tk.encode_prompt(tokenizer, PROMPT, template=template)
    assert not truncated
    assert ids[0] == tokenizer.bos_token_id
    assert bos_count(tokenizer, ids) == 1
    rendered = tk.render_prompt(tokenizer, PROMPT, template=template)
    plain = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    # a BOS the template wrote is the one kept; otherwise it is put in front of the rendered text's ids
    assert ids == (plain if rendered.startswith(tokenizer.bos_token) else [tokenizer.bos_token_id] + plain)


def test_zephyr_prompt_equals_the_default_encoding(zephyr):
    """What the official pipelines feed the model: `tokenizer(rendered_text)`, which adds `<s>` once."""
    rendered = tk.render_prompt(zephyr, PROMPT)
    assert tk.encode_prompt(zephyr, PROMPT)[0] == zephyr(rendered)["input_ids"]


@pytest.mark.parametrize("template", ["chat", "spin"])
def test_no_bos_where_the_default_encoding_adds_none(no_default_bos, smollm2, template):
    ids, _ = tk.encode_prompt(no_default_bos, PROMPT, template=template)
    assert no_default_bos.bos_token_id not in ids
    smol_ids, _ = tk.encode_prompt(smollm2, PROMPT, template=template)
    rendered = tk.render_prompt(smollm2, PROMPT, template=template)
    assert smol_ids == smollm2(rendered, add_special_tokens=False)["input_ids"]
    assert smol_ids == smollm2(rendered)["input_ids"]


@pytest.mark.parametrize("name", ["zephyr", "bos_template"])
@pytest.mark.parametrize("template", ["chat", "spin"])
def test_left_truncation_keeps_the_bos_first(request, name, template):
    tokenizer = request.getfixturevalue(name)
    full, _ = tk.encode_prompt(tokenizer, PROMPT, template=template)
    ids, truncated = tk.encode_prompt(tokenizer, PROMPT, max_prompt_length=12, template=template)
    assert truncated and len(ids) == 12
    assert ids == [tokenizer.bos_token_id] + full[-11:]
    assert bos_count(tokenizer, ids) == 1


def test_left_truncation_without_bos_keeps_only_the_end(no_default_bos):
    full, _ = tk.encode_prompt(no_default_bos, PROMPT)
    ids, truncated = tk.encode_prompt(no_default_bos, PROMPT, max_prompt_length=12)
    assert truncated and ids == full[-12:]


def test_left_truncate_edges():
    assert tk.left_truncate([1, 5, 6, 7], 4, keep_first=True) == [1, 5, 6, 7]
    assert tk.left_truncate([1, 5, 6, 7], 2, keep_first=True) == [1, 7]
    assert tk.left_truncate([1, 5, 6, 7], 1, keep_first=True) == [1]
    assert tk.left_truncate([1, 5, 6, 7], 2, keep_first=False) == [6, 7]


@pytest.mark.parametrize("name", ["zephyr", "bos_template", "no_default_bos"])
@pytest.mark.parametrize("max_prompt_length", [10, 256])
def test_encode_example_masks_the_prompt_including_the_bos(request, name, max_prompt_length):
    tokenizer = request.getfixturevalue(name)
    enc = tk.encode_example(tokenizer, PROMPT, RESPONSE, max_length=512, max_prompt_length=max_prompt_length)
    prompt_ids, _ = tk.encode_prompt(tokenizer, PROMPT, max_prompt_length=max_prompt_length)
    n = enc.prompt_length
    assert enc.input_ids[:n] == prompt_ids
    assert enc.labels[:n] == [tk.IGNORE_INDEX] * n
    assert enc.labels[n:] == enc.input_ids[n:] and tk.IGNORE_INDEX not in enc.labels[n:]
    expected_bos = 0 if name == "no_default_bos" else 1
    assert bos_count(tokenizer, enc.input_ids) == expected_bos
    assert (enc.input_ids[0] == tokenizer.bos_token_id) == bool(expected_bos)
    # zephyr: the response ends with EOS (its template's end of turn)
    assert enc.input_ids[-1] == tokenizer.eos_token_id


def test_generation_feeds_the_prompt_ids_with_one_bos(zephyr, tmp_path):
    """`run_generation` (either backend) gets its prompt ids from `encode_prompt`: BOS first, once, also when
    left-truncated."""
    import json

    from gsil.generation import GenerateConfig, GenerationResult, SamplingSettings, run_generation

    class Recorder:
        backend = "transformers"

        def __init__(self):
            self.prompts = []

        def generate(self, prompts, on_batch=None, seeds=None):
            self.prompts.extend(list(p) for p in prompts)
            return [GenerationResult("ok", 1, True) for _ in prompts]

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": PROMPT * (i + 1), "response": "r"}) + "\n"
                               for i in range(3)), encoding="utf-8")
    recorder = Recorder()
    config = GenerateConfig(model=str(tmp_path / "model"), prompts=str(prompts), output=str(tmp_path / "out.jsonl"),
                            sampling=SamplingSettings(max_new_tokens=4), max_prompt_length=40, progress=False)
    meta = run_generation(config, tokenizer=zephyr, generator=recorder)
    assert meta["counts"]["prompts_truncated"] >= 1
    assert len(recorder.prompts) == 3
    for i, ids in enumerate(recorder.prompts):
        assert ids == tk.encode_prompt(zephyr, PROMPT * (i + 1), max_prompt_length=40)[0]
        assert ids[0] == zephyr.bos_token_id and bos_count(zephyr, ids) == 1
