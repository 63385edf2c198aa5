"""Final-answer extraction for GSM8K-style solutions (`... #### 42`).

Two readers of a model's answer, mirroring lm-eval's gsm8k filters but as plain, tested functions:

- strict: the number after the first `####` marker, as the gold solutions and SFT demonstrations write it;
- flexible: the strict answer when a marker is present, otherwise the last number in the text (so a model that
  never learned the marker, e.g. the base model, is still scored on what it computed).

Numbers are normalised before comparison: thousands separators, a dollar sign, surrounding spaces and a trailing
full stop are dropped, a unicode minus becomes `-`, and an integral decimal (`42.0`) compares equal to `42`.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

INVALID = "[invalid]"  # what a filter yields when no answer can be read; never equals a gold number

# Optional sign and dollar in either order, digits with optional well-formed thousands groups, optional decimals.
_NUMBER = r"(?:-\s?\$?|\$\s?-?)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
_STRICT_RE = re.compile(r"####\s*(" + _NUMBER + r")")


def normalize_number(text: str | None) -> str | None:
    """Canonical string of a number (`'$1,234.50'` -> `'1234.5'`, `'42.0'` -> `'42'`); None if not a number."""
    if text is None:
        return None
    cleaned = text.strip().replace("\u2212", "-").replace(",", "").replace("$", "").replace(" ", "")
    cleaned = cleaned.rstrip(".")
    if not cleaned:
        return None
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_strict(text: str) -> str | None:
    """The normalised number after the first `####` in `text`, or None when there is none."""
    match = _STRICT_RE.search(text.replace("\u2212", "-"))
    return normalize_number(match.group(1)) if match else None


def extract_last_number(text: str) -> str | None:
    """The normalised last number in `text`, or None when it holds no number."""
    matches = _NUMBER_RE.findall(text.replace("\u2212", "-"))
    return normalize_number(matches[-1]) if matches else None


def extract_flexible(text: str) -> str | None:
    """The strict answer if `text` has a `####` marker followed by a number, else its last number."""
    strict = extract_strict(text)
    return strict if strict is not None else extract_last_number(text)


EXTRACTORS = {"strict-match": extract_strict, "flexible-extract": extract_flexible}


def gold_answer(solution: str) -> str:
    """The gold number of a solution that ends with `#### <number>`; ValueError naming the text otherwise."""
    if "####" not in solution:
        raise ValueError(f"gold solution has no '#### <number>' line: {solution[-80:]!r}")
    answer = normalize_number(solution.rsplit("####", 1)[1])
    if answer is None:
        raise ValueError(f"gold solution's '####' is not followed by a number: {solution[-80:]!r}")
    return answer


def is_correct(response: str, solution: str, mode: str = "strict-match") -> bool:
    """Whether `response`'s answer (read with `mode`) equals the gold number of `solution`."""
    try:
        extractor = EXTRACTORS[mode]
    except KeyError:
        raise ValueError(f"unknown answer extraction {mode!r}; known: {sorted(EXTRACTORS)}") from None
    predicted = extractor(response)
    return predicted is not None and predicted == gold_answer(solution)
