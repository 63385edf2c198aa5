"""From records to encoded training examples, with the counts of what was truncated, skipped or dropped.

The same encoding (gsil.tokenization.encode_example with the run's max lengths and template) is used by the
reference stage and by align, so a reference row and a training example score exactly the same tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from gsil.logutil import GsilError
from gsil.tokenization import IGNORE_INDEX
from gsil.training.data import EncodeStats, PairExample, SFTExample

log = logging.getLogger("gsil.training")


def tokenization_settings(max_length: int, max_prompt_length: int, template: str) -> dict:
    """What a reference file must share with the training run that reads it."""
    return {"max_length": int(max_length), "max_prompt_length": int(max_prompt_length), "template": str(template)}


def _empty_problem(encoded, what: str, example_id: str) -> str | None:
    if getattr(encoded, "empty_response", False):
        return f"pair {example_id!r}: the {what} response is empty"
    if not any(token != IGNORE_INDEX for token in encoded.labels):
        return f"pair {example_id!r}: every token of the {what} response is masked (the prompt fills max length)"
    return None


def encode_pairs(pairs: Sequence, tokenizer, *, max_length: int, max_prompt_length: int, template: str,
                 drop_identical: bool = False, skip_empty: bool = False, validate: bool = True,
                 names: tuple[str, str] = ("positive", "negative")) -> tuple[list[PairExample], EncodeStats]:
    """Encode (id, prompt, positive, negative) pairs.

    An empty or all-masked response is an error naming the pair, unless `skip_empty` (then it is counted and
    left out). With `drop_identical`, pairs whose two responses are equal up to whitespace are counted and left out.
    `validate=False` keeps every pair (the reference stage scores them all; align decides what to do with them).
    """
    from gsil.records import is_identical_pair
    from gsil.tokenization import TruncationStats, encode_example

    stats, truncation = EncodeStats(), TruncationStats()
    examples = []
    for pair in pairs:
        if drop_identical and is_identical_pair(pair):
            stats.dropped_identical += 1
            continue
        encoded = []
        problem = None
        for text, name in ((pair.positive, names[0]), (pair.negative, names[1])):
            enc = encode_example(tokenizer, pair.prompt, text, max_length=max_length,
                                 max_prompt_length=max_prompt_length, template=template)
            truncation.add(enc, name)
            if validate:
                problem = problem or _empty_problem(enc, name, pair.id)
            encoded.append(enc)
        if problem:
            if not skip_empty:
                raise GsilError(problem + " (pass --skip-empty-responses to count and leave such pairs out)")
            stats.skipped_empty += 1
            stats.skipped_ids.append(pair.id)
            continue
        stats.truncated += any(e.truncated for e in encoded)
        examples.append(PairExample(pair.id, encoded[0], encoded[1]))
    stats.examples = len(examples)
    truncation.log(log, "pair tokenization")
    log.info("pairs: %d kept, %d identical dropped, %d with an empty response skipped",
             stats.examples, stats.dropped_identical, stats.skipped_empty)
    return examples, stats


def encode_demonstrations(rows: Sequence[dict], tokenizer, *, max_length: int, max_prompt_length: int, template: str,
                          skip_empty: bool = False) -> tuple[list[SFTExample], EncodeStats]:
    from gsil.tokenization import TruncationStats, encode_example

    stats, truncation = EncodeStats(), TruncationStats()
    examples = []
    for row in rows:
        enc = truncation.add(encode_example(tokenizer, row["prompt"], row["response"], max_length=max_length,
                                            max_prompt_length=max_prompt_length, template=template))
        problem = _empty_problem(enc, "demonstration", row["id"])
        if problem:
            if not skip_empty:
                raise GsilError(problem.replace("pair", "demonstration", 1)
                                + " (pass --skip-empty-responses to count and leave such rows out)")
            stats.skipped_empty += 1
            stats.skipped_ids.append(row["id"])
            continue
        stats.truncated += enc.truncated
        examples.append(SFTExample(row["id"], enc))
    stats.examples = len(examples)
    truncation.log(log, "demonstration tokenization")
    return examples, stats
