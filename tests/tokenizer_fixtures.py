"""Tiny tokenizers built locally (no Hub), shaped like the real ones whose quirks the suite must handle.

`llama_style_tokenizer()` is a Llama/Mistral-layout tokenizer like zephyr's (alignment-handbook/zephyr-7b-sft-full):
`<unk>`=0, `<s>`=1, `</s>`=2, the 256 byte-fallback tokens `<0x00>`..`<0xFF>`, then `▁` (the sentencepiece space),
the printable ASCII characters, word pieces `▁word` of common English words and a few bare pieces (`The`, `He`,
...) for words that start a line. Like Llama's sentencepiece it pre-tokenizes with Metaspace and puts a dummy
prefix `▁` on the first word of a text only ("Hello" alone is `▁Hello`, after "<|assistant|>\n" it is `Hello`),
which is why a response must be tokenized as the prompt's continuation. Every text tokenizes without
`<unk>` (characters outside the table fall back to their UTF-8 bytes), and its default encoding adds `<s>` in front,
as Llama/Mistral tokenizers do. With the default `ZEPHYR_CHAT_TEMPLATE` (zephyr's real template) it reproduces the
"template writes no BOS, tokenizer adds one" case.

`save_pretrained(folder)` writes tokenizer.json, tokenizer_config.json and chat_template.jinja; AutoTokenizer reloads
it with the same encoding (BOS included: the post-processor in tokenizer.json adds it even though the reloaded
object's `add_bos_token` attribute reads False in transformers 5). Used by the BOS tests and reusable for a tiny
zephyr-style checkpoint (a Mistral/Llama config with `vocab_size=len(tokenizer)`, bos 1, eos 2).
"""

from __future__ import annotations

import string

# zephyr-7b-sft-full's chat template, verbatim: it writes no BOS.
ZEPHYR_CHAT_TEMPLATE = (
    "{% for message in messages %}\n"
    "{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n"
    "{% endif %}\n"
    "{% endfor %}"
)

# The same template with the BOS written first, as Llama-2/Gemma-style templates do.
BOS_CHAT_TEMPLATE = "{{ bos_token }}" + ZEPHYR_CHAT_TEMPLATE

SPACE = "▁"  # sentencepiece's word-boundary marker

# Common English and math-word-problem words that get their own word piece (shorter sequences, realistic pieces).
COMMON_WORDS = (
    "the", "a", "an", "and", "or", "of", "to", "in", "on", "at", "for", "with", "by", "from", "as", "is", "are", "was",
    "were", "be", "has", "have", "had", "do", "does", "did", "it", "he", "she", "they", "we", "you", "I", "his",
    "her", "their", "this", "that", "what", "What", "How", "how", "many", "much", "more", "each", "every", "if",
    "then", "than", "so", "not", "no", "yes", "can", "will", "would", "all", "one", "two", "three", "four", "five",
    "ten", "half", "total", "number", "answer", "The", "A", "He", "She", "If", "per", "day", "days", "hour", "hours",
    "apples", "buys", "sells", "left", "now", "times", "equal", "Add", "plus", "minus", "question", "response",
    "Instruction", "Response", "user", "assistant", "system", "Hello", "there", "hi",
)

# Words that also get a piece without `▁`, as a sentencepiece vocabulary has for words that often follow a newline
# or punctuation (Llama's has both `▁The` and `The`). Their merges come after the `▁` ones, so a word that starts
# with `▁` still becomes its `▁word` piece.
BARE_WORDS = ("The", "He", "She", "Now", "So", "If", "Hello", "Yes", "No", "What", "How", "First", "Then")


def llama_style_vocab(words=COMMON_WORDS,
                      bare_words=BARE_WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) in the Llama layout described in the module docstring.

    Each word piece `▁word` (then each bare piece `word`) is built by left-to-right merges (`▁`+`w`, `▁w`+`o`, ...),
    every intermediate piece in the vocabulary, so BPE can always fall back to characters.
    """
    vocab: dict[str, int] = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    merges: list[tuple[str, str]] = []

    def add(piece: str) -> None:
        vocab.setdefault(piece, len(vocab))

    add(SPACE)
    for char in string.printable:
        if not char.isspace():  # whitespace other than the space is a byte token, as in Llama
            add(char)

    def add_chain(word: str, piece: str) -> None:
        for char in word:
            if piece and (piece, char) not in merges:
                merges.append((piece, char))
            piece += char
            add(piece)

    for word in words:
        add_chain(word, SPACE)
    for word in bare_words:
        add_chain(word, "")
    return vocab, merges


def llama_style_tokenizer(*, chat_template: str | None = ZEPHYR_CHAT_TEMPLATE, add_bos_token: bool = True,
                          words=COMMON_WORDS, bare_words=BARE_WORDS):
    """A tiny Llama/Mistral-style (sentencepiece BPE, byte fallback) fast tokenizer; see the module docstring.

    `add_bos_token=False` gives the same vocabulary with a `<s>` token that the default encoding does NOT add (the
    control case: a BOS token exists but the model was not trained with it in front).
    """
    from transformers import LlamaTokenizer

    vocab, merges = llama_style_vocab(words, bare_words)
    return LlamaTokenizer(vocab=vocab, merges=merges, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                          add_bos_token=add_bos_token, add_eos_token=False, chat_template=chat_template)


def zephyr_style_tokenizer():
    """`llama_style_tokenizer` with zephyr's chat template (no BOS in the template, `<s>` added by the tokenizer)."""
    return llama_style_tokenizer(chat_template=ZEPHYR_CHAT_TEMPLATE)
