"""Shared fixtures of the training tests: a tiny random Llama, tiny pair and demonstration sets."""

from __future__ import annotations

from types import SimpleNamespace

PROMPTS = ["What is 2 + 3?", "Tom has 4 apples and buys 5 more. How many?", "Compute 7 times 6.",
           "A box holds 12 eggs; 3 break. How many are left?", "What is 10 minus 4?", "Half of 18 is?",
           "Add 11 and 13.", "What is 9 + 9?"]


def pair_rows(n: int = 8) -> list[dict]:
    """selfplay records: a gold-like answer and a shorter wrong one."""
    return [{"id": f"q{i}", "prompt": PROMPTS[i % len(PROMPTS)], "real": f"The answer is {i + 5}. #### {i + 5}",
             "generated": f"Maybe {i}."} for i in range(n)]


def demonstration_rows(n: int = 4) -> list[dict]:
    return [{"id": f"d{i}", "prompt": PROMPTS[i % len(PROMPTS)], "response": f"Step: {i} + {i} = {2 * i}. #### {2 * i}"}
            for i in range(n)]


def as_pair_objects(rows: list[dict]) -> list:
    return [SimpleNamespace(id=r["id"], prompt=r["prompt"], positive=r["real"], negative=r["generated"]) for r in rows]
