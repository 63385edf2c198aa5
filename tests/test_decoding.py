"""Batched decoding in which stopped rows leave the batch (gsil.generation.decoding): the same greedy tokens as
Hugging Face `generate`, stop tokens and stop callbacks, per-row processor state, and `generate`'s output layout."""

from __future__ import annotations

import pytest

from gsil.generation.backends.transformers import left_pad
from gsil.generation.decoding import decode_dropping_finished, padded_continuations
from gsil.logutil import GsilError

PROMPTS = ["What is 2 + 3?", "Tom has 4 apples and buys 7 more. How many now?", "Half of 18?", "9 - 4 = ?",
           "A train travels 8 miles every hour for 3 hours. How far?"]
NEVER = [10**9]  # a stop id no model produces


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from gsil.modeling import build_random_model, load_model, load_tokenizer

    path = tmp_path_factory.mktemp("decoding") / "tiny"
    build_random_model(path, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, seed=3)
    return load_model(path), load_tokenizer(path)


def _batch(tokenizer):
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    return left_pad(prompts, 0)


def _hf_greedy(model, input_ids, attention_mask, max_new_tokens, stops):
    output = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                            do_sample=False, eos_token_id=list(stops), pad_token_id=0)
    rows = []
    for row in output[:, input_ids.shape[1]:].tolist():
        cut = next((i + 1 for i, token in enumerate(row) if token in stops), len(row))
        rows.append(row[:cut])
    return rows


def test_same_tokens_as_generate_without_stops(tiny):
    model, tokenizer = tiny
    input_ids, attention_mask = _batch(tokenizer)
    expected = _hf_greedy(model, input_ids, attention_mask, 7, NEVER)
    assert decode_dropping_finished(model, input_ids, attention_mask, max_new_tokens=7,
                                    stop_token_ids=NEVER) == expected
    assert all(len(row) == 7 for row in expected)


def test_rows_leave_at_their_stop_token_and_the_rest_decode_on(tiny):
    model, tokenizer = tiny
    input_ids, attention_mask = _batch(tokenizer)
    free = _hf_greedy(model, input_ids, attention_mask, 8, NEVER)
    # A stop id that some row produces early: that row ends there while the others run on.
    stop = free[0][2]
    expected = _hf_greedy(model, input_ids, attention_mask, 8, [stop])
    got = decode_dropping_finished(model, input_ids, attention_mask, max_new_tokens=8, stop_token_ids=[stop])
    assert got == expected
    assert got[0] == free[0][:free[0].index(stop) + 1]
    running_on = [row for row in range(len(PROMPTS)) if stop not in free[row]]
    assert running_on  # with this seed some row never produces the stop id and decodes to the limit
    assert all(got[row] == free[row] for row in running_on)


def test_row_stopped_callback_ends_rows_separately(tiny):
    model, tokenizer = tiny
    input_ids, attention_mask = _batch(tokenizer)
    free = decode_dropping_finished(model, input_ids, attention_mask, max_new_tokens=6, stop_token_ids=NEVER)
    calls = []

    def two_for_odd_rows(row, tokens):
        calls.append((row, len(tokens)))
        return row % 2 == 1 and len(tokens) == 2

    got = decode_dropping_finished(model, input_ids, attention_mask, max_new_tokens=6, stop_token_ids=NEVER,
                                   row_stopped=two_for_odd_rows)
    assert got == [row if index % 2 == 0 else row[:2] for index, row in enumerate(free)]
    # Odd rows are asked twice, then never again; even rows at every step but the last.
    assert sorted(length for row, length in calls if row == 1) == [1, 2]
    assert sorted(length for row, length in calls if row == 0) == [1, 2, 3, 4, 5, 6]


def test_processors_see_the_rows_still_decoding_and_follow_them(tiny):
    import torch

    model, tokenizer = tiny
    input_ids, attention_mask = _batch(tokenizer)

    class Tracking:
        """Records the batch it scores and the rows it is told to keep; changes nothing."""

        def __init__(self, rows):
            self.rows = list(rows)
            self.shapes = []

        def select_rows(self, indices):
            self.rows = [self.rows[i] for i in indices]

        def __call__(self, sequences, scores):
            assert sequences.shape[0] == scores.shape[0] == len(self.rows)
            self.shapes.append(tuple(sequences.shape))
            return scores

    tracking = Tracking(range(len(PROMPTS)))
    free = decode_dropping_finished(model, input_ids, attention_mask, max_new_tokens=5, stop_token_ids=NEVER)
    stop = free[1][0]  # row 1 stops at its first token
    got = decode_dropping_finished(model, input_ids, attention_mask, max_new_tokens=5, stop_token_ids=[stop],
                                   logits_processor=[tracking])
    stopped_at_once = {row for row, tokens in enumerate(got) if len(tokens) == 1}
    assert 1 in stopped_at_once
    assert tracking.shapes[0] == (len(PROMPTS), input_ids.shape[1])
    assert tracking.shapes[1] == (len(PROMPTS) - len(stopped_at_once), input_ids.shape[1] + 1)
    assert 1 not in tracking.rows
    assert torch.equal(input_ids, _batch(tokenizer)[0])  # the caller's tensors are not modified


def test_padded_continuations_has_generates_layout():
    import torch

    input_ids = torch.tensor([[0, 5, 6], [7, 8, 9]])
    out = padded_continuations(input_ids, [[1], [2, 3, 4]], pad_token_id=0)
    assert out.tolist() == [[0, 5, 6, 1, 0, 0], [7, 8, 9, 2, 3, 4]]
    assert padded_continuations(input_ids, [[], []], pad_token_id=0).tolist() == input_ids.tolist()


def test_max_new_tokens_must_be_positive(tiny):
    model, tokenizer = tiny
    input_ids, attention_mask = _batch(tokenizer)
    with pytest.raises(GsilError, match="max_new_tokens"):
        decode_dropping_finished(model, input_ids, attention_mask, max_new_tokens=0, stop_token_ids=NEVER)
