"""The demo task: seeded grade-school arithmetic word problems with step-by-step gold solutions.

A problem comes from one of a dozen story templates (sharing, ages, shopping, distances, baking, savings, ...) with
one to three steps; every step is one operation `a op b = c` (op in + - * /, division always exact) whose operands
are numbers from the question or results of earlier steps. The gold solution states one step per line in a fixed
phrasing and ends with GSM8K's answer line, e.g.

    The packs hold 3 * 4 = 12 stickers.
    Now Maya has 5 + 12 = 17 stickers.
    #### 17

Design choices (the demo must teach SmolLM2-135M something in a few hundred examples on a CPU):
* short questions, operands in [min_number, max_number], multipliers and divisors at most `max_factor`, every
  intermediate result in [0, max_result]; one consistent sentence per step, so the format is learnt at once and the
  remaining difficulty is the arithmetic itself;
* a problem's identity is its (template, numbers) key; names and items are decoration. Splits are slices of one
  pool of distinct keys, so they are disjoint by key and hence by text;
* the key space is finite: at the default ranges the twelve templates make 188,532 distinct problems (171 to 361
  per one-step template, 624 to 3,249 per two-step one, 57,724 to 60,417 per three-step one; `capacity`). The
  pool can use all of them (a template short of new problems draws from a list of its unused keys), and asking
  for more is an error naming the sizes and the capacity.

Wrong solutions (for DPO's rejected responses and the multiple-choice distractors) are the gold chain with one slip
at one step, propagated fluently through the later steps: `off_by_one` (the step's result is off by one),
`wrong_operation` (the step applies another operation, correctly computed), `digit_swap` (the step's result has two
digits swapped, e.g. 42 -> 24), and, only where those three give too few distinct final answers,
`reversed_operation` (another operation with the operands swapped, e.g. 3 - 2 = 1 for 2 + 3). A slip is kept only if
every later step stays a whole non-negative number and the final answer differs from the gold one, so every wrong
solution is provably wrong by its final answer. The fallback exists for small one-step problems: for 2 * 3 = 6 the
main kinds give only 7, 5 and 2 + 3 = 5 (2 - 3 and 2 / 3 are not whole, 6 has one digit), two answers where the
multiple-choice file needs three; with it, every problem at the default ranges has at least three. Only problems with
at least `--mc-wrong` distinct wrong answers enter the pool, so every test problem can be a multiple-choice item.
"""

from __future__ import annotations

import functools
import math
import random
import re
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from gsil.logutil import GsilError

OPS: dict[str, Callable[[int, int], int | None]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a // b if b and a % b == 0 else None,
}
# The main slip kinds take turns; the fallback kind is used only where they give too few distinct answers.
MAIN_SLIP_KINDS = ("off_by_one", "wrong_operation", "digit_swap")
FALLBACK_SLIP_KINDS = ("reversed_operation",)
SLIP_KINDS = MAIN_SLIP_KINDS + FALLBACK_SLIP_KINDS

_NAMES = (
    ("Maya", "she", "her"), ("Tom", "he", "his"), ("Lena", "she", "her"), ("Sam", "he", "his"),
    ("Nora", "she", "her"), ("Omar", "he", "his"), ("Ivy", "she", "her"), ("Leo", "he", "his"),
    ("Zoe", "she", "her"), ("Ben", "he", "his"), ("Ana", "she", "her"), ("Raj", "he", "his"),
    ("Emma", "she", "her"), ("Kai", "he", "his"), ("Lucy", "she", "her"), ("Max", "he", "his"),
)


@dataclass(frozen=True)
class Config:
    """Generator settings (all recorded in the data manifest)."""

    min_number: int = 2
    max_number: int = 20
    max_factor: int = 10
    max_result: int = 200
    max_steps: int = 3

    def validate(self) -> None:
        if not 1 <= self.max_steps <= 3:
            raise GsilError(f"max_steps must be 1, 2 or 3, got {self.max_steps}")
        if not 0 <= self.min_number < self.max_number:
            raise GsilError(f"need 0 <= min_number < max_number, got {self.min_number}, {self.max_number}")
        if self.max_factor < 2 or self.max_factor < self.min_number:
            raise GsilError(f"max_factor ({self.max_factor}) must be >= 2 and >= min_number ({self.min_number})")
        if self.max_result < self.max_number:
            raise GsilError(f"max_result ({self.max_result}) must be >= max_number ({self.max_number})")


# An operand is a number from the question (int) or the result of an earlier step (StepRef).
@dataclass(frozen=True)
class StepRef:
    index: int


Operand = int | StepRef


@dataclass(frozen=True)
class Step:
    left: Operand
    op: str
    right: Operand
    sentence: str  # "{expr}" is replaced by "a op b = c"


class Slip(NamedTuple):  # a tuple: thousands are made per data set, and tuples are quick to make
    kind: str
    step: int
    value: int | None = None  # the wrong result (off_by_one, digit_swap)
    op: str | None = None  # the wrong operation (wrong_operation, reversed_operation)


@dataclass
class Problem:
    template: str
    numbers: tuple[int, ...]
    question: str
    steps: list[Step]
    meta: dict = field(default_factory=dict)
    # the gold chain and text, worked out once (plain fields: functools.cached_property takes a lock per access)
    _gold: list | bool | None = field(default=None, init=False, repr=False, compare=False)
    _gold_text: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def key(self) -> tuple:
        return (self.template, self.numbers)

    def evaluate(self, slip: Slip | None = None) -> list[tuple[int, str, int, int]] | None:
        """The chain as (a, op, b, result) per step; None if a step is not a whole non-negative number."""
        if slip is not None:
            return self._evaluate(slip)
        if self._gold is None:
            self._gold = self._evaluate(None) or False  # False: the chain breaks
        return self._gold or None

    def _evaluate(self, slip: Slip | None) -> list[tuple[int, str, int, int]] | None:
        rows: list[tuple[int, str, int, int]] = []
        for i, step in enumerate(self.steps):
            a = rows[step.left.index][3] if isinstance(step.left, StepRef) else step.left
            b = rows[step.right.index][3] if isinstance(step.right, StepRef) else step.right
            op = step.op
            if slip is not None and slip.step == i:
                if slip.kind == "reversed_operation":
                    a, b = b, a
                if slip.kind in ("wrong_operation", "reversed_operation"):
                    op = slip.op
            result = OPS[op](a, b)
            if slip is not None and slip.step == i and slip.kind in ("off_by_one", "digit_swap"):
                result = slip.value
            if result is None or result < 0:
                return None
            rows.append((a, op, b, result))
        return rows

    def slipped_answer(self, slip: Slip, gold: list[tuple[int, str, int, int]]) -> int | None:
        """`self.evaluate(slip)[-1][3]` (None where that is None), fast: the steps before the slip are `gold`'s."""
        kind, at, value, op = slip
        a, _, b, _ = gold[at]
        if value is not None:  # off_by_one, digit_swap
            result = value
        elif kind == "reversed_operation":
            result = OPS[op](b, a)
        else:
            result = OPS[op](a, b)
        if result is None or result < 0:
            return None
        if at == len(gold) - 1:
            return result
        results = [row[3] for row in gold[:at]]
        results.append(result)
        for step in self.steps[at + 1:]:
            a = results[step.left.index] if type(step.left) is StepRef else step.left
            b = results[step.right.index] if type(step.right) is StepRef else step.right
            result = OPS[step.op](a, b)
            if result is None or result < 0:
                return None
            results.append(result)
        return result

    @property
    def answer(self) -> int:
        return self.evaluate()[-1][3]

    def solution(self, slip: Slip | None = None) -> str:
        if slip is not None:
            return self._render(slip)
        if self._gold_text is None:
            self._gold_text = self._render(None)
        return self._gold_text

    def _render(self, slip: Slip | None) -> str:
        rows = self.evaluate(slip)
        if rows is None:
            raise ValueError(f"slip {slip} does not give a whole non-negative chain for {self.question!r}")
        lines = [step.sentence.format(expr=f"{a} {op} {b} = {r}") for step, (a, op, b, r) in zip(self.steps, rows)]
        lines.append(f"#### {rows[-1][3]}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- templates
# Each template draws its numbers (returning None to reject a draw) and words the question and the steps.


def _person(rng: random.Random, exclude: tuple[str, ...] = ()) -> tuple[str, str, str]:
    return rng.choice([p for p in _NAMES if p[0] not in exclude] if exclude else _NAMES)


def _num(rng, cfg: Config) -> int:
    return rng.randint(cfg.min_number, cfg.max_number)


def _factor(rng, cfg: Config) -> int:
    return rng.randint(max(2, cfg.min_number), cfg.max_factor)


def _sharing(rng, cfg):
    k, q = _factor(rng, cfg), _num(rng, cfg)
    t = k * q
    if t > cfg.max_result:
        return None
    name, _, _ = _person(rng)
    item = rng.choice(("marbles", "candies", "cards", "grapes", "stickers"))
    question = f"{name} has {t} {item} and shares them equally among {k} friends. How many {item} does each friend get?"
    return (t, k), question, [Step(t, "/", k, f"Each friend gets {{expr}} {item}.")]


def _ages_diff(rng, cfg):
    a, b = _num(rng, cfg), _num(rng, cfg)
    n1 = _person(rng)[0]
    n2 = _person(rng, (n1,))[0]
    question = f"{n1} is {a} years old. {n2} is {b} years older than {n1}. How old is {n2}?"
    return (a, b), question, [Step(a, "+", b, f"{n2} is {{expr}} years old.")]


def _giving(rng, cfg):
    a, b = _num(rng, cfg), _num(rng, cfg)
    if b >= a:
        return None
    name, pron, _ = _person(rng)
    item = rng.choice(("apples", "pencils", "cookies", "balloons", "shells"))
    question = (
        f"{name} has {a} {item}. {pron.capitalize()} gives {b} of them to a friend. "
        f"How many {item} does {name} have left?"
    )
    return (a, b), question, [Step(a, "-", b, f"{name} has {{expr}} {item} left.")]


def _garden(rng, cfg):
    r, p = _factor(rng, cfg), _num(rng, cfg)
    if r * p > cfg.max_result:
        return None
    plant = rng.choice(("tomato plants", "roses", "carrots", "tulips", "bean plants"))
    question = f"A garden has {r} rows with {p} {plant} in each row. How many {plant} are in the garden?"
    return (r, p), question, [Step(r, "*", p, f"The garden has {{expr}} {plant}.")]


def _packs(rng, cfg):
    n, k, m = _factor(rng, cfg), _num(rng, cfg), _num(rng, cfg)
    if n * k + m > cfg.max_result:
        return None
    name, pron, _ = _person(rng)
    item = rng.choice(("stickers", "crayons", "batteries", "buttons", "beads"))
    question = (
        f"{name} has {m} {item}. {pron.capitalize()} buys {n} packs with {k} {item} in each pack. "
        f"How many {item} does {name} have now?"
    )
    steps = [
        Step(n, "*", k, f"The packs hold {{expr}} {item}."),
        Step(m, "+", StepRef(0), f"Now {name} has {{expr}} {item}."),
    ]
    return (m, n, k), question, steps


def _money_left(rng, cfg):
    m, n, c = _num(rng, cfg) * 5, _factor(rng, cfg), _num(rng, cfg)
    if n * c >= m or m > cfg.max_result:
        return None
    name, pron, _ = _person(rng)
    item = rng.choice(("notebooks", "toy cars", "books", "mugs", "kites"))
    question = (
        f"{name} has ${m}. {pron.capitalize()} buys {n} {item} that cost ${c} each. "
        f"How many dollars does {name} have left?"
    )
    steps = [
        Step(n, "*", c, f"The {item} cost {{expr}} dollars."),
        Step(m, "-", StepRef(0), f"{name} has {{expr}} dollars left."),
    ]
    return (m, n, c), question, steps


def _distance(rng, cfg):
    s, h, d = _num(rng, cfg), _factor(rng, cfg), _num(rng, cfg)
    if s * h + d > cfg.max_result:
        return None
    vehicle = rng.choice(("bus", "truck", "boat", "train", "car"))
    question = (
        f"A {vehicle} travels {s} miles every hour. It travels for {h} hours and then another {d} miles. "
        f"How many miles does it travel in total?"
    )
    steps = [
        Step(s, "*", h, f"In {h} hours it travels {{expr}} miles."),
        Step(StepRef(0), "+", d, f"In total it travels {{expr}} miles."),
    ]
    return (s, h, d), question, steps


def _baking(rng, cfg):
    n, k, g = _factor(rng, cfg), _num(rng, cfg), _factor(rng, cfg)
    t = n * k
    if t > cfg.max_result or t % g or t // g < 2:
        return None
    name, pron, _ = _person(rng)
    food = rng.choice(("cookies", "muffins", "cupcakes", "rolls", "pies"))
    question = (
        f"{name} bakes {n} trays of {food} with {k} {food} on each tray. {pron.capitalize()} packs them into boxes "
        f"of {g}. How many boxes does {name} fill?"
    )
    steps = [
        Step(n, "*", k, f"{name} bakes {{expr}} {food}."),
        Step(StepRef(0), "/", g, f"{name} fills {{expr}} boxes."),
    ]
    return (n, k, g), question, steps


def _groups(rng, cfg):
    g, q, n = _factor(rng, cfg), _num(rng, cfg), _num(rng, cfg)
    t = g * q
    if t > cfg.max_result or q + n > cfg.max_result:
        return None
    question = (
        f"A teacher splits {t} students into {g} equal groups. Then {n} more students join each group. "
        f"How many students are in each group now?"
    )
    steps = [
        Step(t, "/", g, "Each group starts with {expr} students."),
        Step(StepRef(0), "+", n, "Each group now has {expr} students."),
    ]
    return (t, g, n), question, steps


def _stickers(rng, cfg):
    a, n, k, c = _num(rng, cfg), _factor(rng, cfg), _num(rng, cfg), _num(rng, cfg)
    if a + n * k > cfg.max_result or c >= a + n * k:
        return None
    name, pron, poss = _person(rng)
    item = rng.choice(("stickers", "stamps", "coins", "cards", "pebbles"))
    question = (
        f"{name} has {a} {item}. {pron.capitalize()} buys {n} packs with {k} {item} in each pack, then gives {c} "
        f"{item} to {poss} brother. How many {item} does {name} have now?"
    )
    steps = [
        Step(n, "*", k, f"The packs hold {{expr}} {item}."),
        Step(a, "+", StepRef(0), f"After buying them {name} has {{expr}} {item}."),
        Step(StepRef(1), "-", c, f"After giving some away {name} has {{expr}} {item}."),
    ]
    return (a, n, k, c), question, steps


def _savings(rng, cfg):
    s, w, c, g = _num(rng, cfg), _factor(rng, cfg), _num(rng, cfg), _num(rng, cfg)
    if s * w > cfg.max_result or c >= s * w or s * w - c + g > cfg.max_result:
        return None
    name, pron, poss = _person(rng)
    thing = rng.choice(("game", "ball", "hat", "puzzle", "book"))
    question = (
        f"{name} saves ${s} each week for {w} weeks. {pron.capitalize()} spends ${c} on a {thing} and then gets "
        f"${g} from {poss} grandmother. How many dollars does {name} have now?"
    )
    steps = [
        Step(s, "*", w, f"{name} saves {{expr}} dollars."),
        Step(StepRef(0), "-", c, f"After buying the {thing} {name} has {{expr}} dollars."),
        Step(StepRef(1), "+", g, f"With the gift {name} has {{expr}} dollars."),
    ]
    return (s, w, c, g), question, steps


def _ages_future(rng, cfg):
    a, k, c, b = _num(rng, cfg), _factor(rng, cfg), _num(rng, cfg), _num(rng, cfg)
    if a * k > cfg.max_result or c >= a * k or a * k - c + b > cfg.max_result:
        return None
    n1 = _person(rng)[0]
    n2 = _person(rng, (n1,))[0]
    n3 = _person(rng, (n1, n2))[0]
    question = (
        f"{n1} is {a} years old. {n2} is {k} times as old as {n1}. {n3} is {c} years younger than {n2}. "
        f"How old will {n3} be in {b} years?"
    )
    steps = [
        Step(a, "*", k, f"{n2} is {{expr}} years old."),
        Step(StepRef(0), "-", c, f"{n3} is {{expr}} years old."),
        Step(StepRef(1), "+", b, f"In {b} years {n3} will be {{expr}} years old."),
    ]
    return (a, k, c, b), question, steps


TEMPLATES: dict[str, Callable] = {
    "sharing": _sharing,
    "ages_difference": _ages_diff,
    "giving_away": _giving,
    "garden_rows": _garden,
    "shopping_packs": _packs,
    "money_left": _money_left,
    "distance": _distance,
    "baking_boxes": _baking,
    "class_groups": _groups,
    "sticker_trade": _stickers,
    "weekly_savings": _savings,
    "ages_future": _ages_future,
}


# Steps per template (checked by the tests against the drawn problems).
TEMPLATE_STEPS: dict[str, int] = {
    "sharing": 1, "ages_difference": 1, "giving_away": 1, "garden_rows": 1,
    "shopping_packs": 2, "money_left": 2, "distance": 2, "baking_boxes": 2, "class_groups": 2,
    "sticker_trade": 3, "weekly_savings": 3, "ages_future": 3,
}


def templates_for(cfg: Config) -> list[str]:
    return [name for name in TEMPLATES if TEMPLATE_STEPS[name] <= cfg.max_steps]


def _make(template: str, rng, cfg: Config) -> Problem | None:
    """One draw of `template`; None if its numbers miss `cfg` (a template may reject, and so may the chain)."""
    drawn = TEMPLATES[template](rng, cfg)
    if drawn is None:
        return None
    numbers, question, steps = drawn
    problem = Problem(template=template, numbers=tuple(numbers), question=question, steps=steps)
    rows = problem.evaluate()
    return problem if rows is not None and rows[-1][3] <= cfg.max_result else None


def draw_problem(template: str, rng: random.Random, cfg: Config, *, max_tries: int = 1000) -> Problem:
    """One problem of `template` (rejection sampling until its numbers meet `cfg`)."""
    for _ in range(max_tries):
        problem = _make(template, rng, cfg)
        if problem is not None:
            return problem
    raise GsilError(f"template {template!r} found no numbers within {cfg} in {max_tries} draws; widen the range")


class _ScriptedRandom:
    """Stands in for `random.Random` inside a template: `randint` returns the scripted numbers (the lower bound once
    the script is used up) and records every call's bounds; `choice` (names, items: decoration) asks `decoration`,
    or takes the first option when there is none."""

    def __init__(self, script: tuple[int, ...] | list[int], decoration: random.Random | None = None):
        self.script = script
        self.bounds: list[tuple[int, int]] = []
        self.decoration = decoration

    def randint(self, low: int, high: int) -> int:
        i = len(self.bounds)
        self.bounds.append((low, high))
        return self.script[i] if i < len(self.script) else low

    def choice(self, options):
        return self.decoration.choice(options) if self.decoration is not None else options[0]


@functools.lru_cache(maxsize=64)
def template_keys(template: str, cfg: Config) -> dict[tuple, tuple[int, ...]]:
    """Every problem key `template` can produce under `cfg`, each with the `randint` values that draw it.

    An exhaustive walk over the template's random numbers (an odometer over the recorded bounds, so bounds that
    depend on earlier numbers are followed too). Seconds for the three-step templates at the default ranges; the
    pool asks for it only when a template runs short of new problems, or to report the capacity.
    """
    keys: dict[tuple, tuple[int, ...]] = {}
    script: list[int] = []
    while True:
        rng = _ScriptedRandom(script)
        problem = _make(template, rng, cfg)
        values = script + [low for low, _ in rng.bounds[len(script):]]
        if problem is not None:
            keys.setdefault(problem.key, tuple(values))
        i = len(values) - 1
        while i >= 0 and values[i] >= rng.bounds[i][1]:
            i -= 1
        if i < 0:
            return keys
        script = values[:i] + [values[i] + 1]


def _replay(template: str, script: tuple[int, ...], rng: random.Random | None, cfg: Config) -> Problem:
    """The problem that `script` draws, worded with names and items from `rng` (the first ones without it)."""
    problem = _make(template, _ScriptedRandom(script, rng), cfg)
    assert problem is not None, (template, script)
    return problem


def capacity_bound(cfg: Config) -> int:
    """An upper bound on the number of distinct problems: the product of each template's number ranges (every
    template draws all its numbers, from fixed ranges, before it checks them). Instant."""
    total = 0
    for template in templates_for(cfg):
        rng = _ScriptedRandom(())
        TEMPLATES[template](rng, cfg)
        total += math.prod(high - low + 1 for low, high in rng.bounds)
    return total


def capacity(cfg: Config, min_wrong: int = 0) -> int:
    """The exact number of distinct problems the templates make under `cfg` (those with at least `min_wrong`
    distinct wrong answers). Seconds at the default ranges (see template_keys)."""
    total = 0
    for template in templates_for(cfg):
        keys = template_keys(template, cfg)
        if min_wrong <= 1:  # off by one at the last step always gives one wrong answer
            total += len(keys)
        else:
            total += sum(
                len(wrong_answers(_replay(template, script, None, cfg), min_wrong)) >= min_wrong
                for script in keys.values()
            )
    return total


class CapacityError(GsilError):
    """More distinct problems were asked for than the templates make (`available`, exactly)."""

    def __init__(self, requested: int, available: int, cfg: Config):
        self.requested, self.available = requested, available
        super().__init__(
            f"only {available} distinct problems exist for {cfg}; asked for {requested}: lower the sizes or widen "
            "--min-number/--max-number/--max-factor/--max-result"
        )


def generate_pool(
    n: int, seed: int, cfg: Config = Config(), *,
    min_wrong: int = 0, saturation_draws: int = 50, max_tries: int = 1000,
) -> list[Problem]:
    """`n` problems with distinct (template, numbers) keys, templates in round-robin order, deterministic per seed.

    Problems are drawn at random (rejecting repeats). A template that gives `saturation_draws` repeats in a row (or
    `max_tries` draws outside `cfg` in a row) has its unused keys listed (template_keys), draws from that list from
    then on, and is retired once it is empty. So the pool can hold every problem the templates make, and asking for
    more is a CapacityError with the exact capacity. With `min_wrong`, problems with fewer distinct wrong answers
    (see wrong_answers) are skipped. Until a template saturates the draws are those of plain rejection sampling, so
    pools that never come near a template's capacity are the same as before the key lists existed.
    """
    cfg.validate()
    # Near or above the bound, count exactly first (seconds at the default ranges; the key lists are kept for the
    # draws): failing after drawing the whole space would take several times longer.
    if n > capacity_bound(cfg) // 2 and n > (available := capacity(cfg, min_wrong)):
        raise CapacityError(n, available, cfg)
    rng = random.Random(seed)
    active = templates_for(cfg)
    rng.shuffle(active)
    seen: set[tuple] = set()
    unused: dict[str, list[tuple[int, ...]]] = {}  # template -> scripts of its unseen keys, once saturated
    pool: list[Problem] = []
    turn = 0

    def fresh(problem: Problem | None) -> bool:
        if problem is None or problem.key in seen:
            return False
        seen.add(problem.key)  # a problem with too few wrong answers is seen (never drawn again) but not used
        return min_wrong <= 1 or len(wrong_answers(problem, min_wrong)) >= min_wrong

    while len(pool) < n:
        if not active:
            raise CapacityError(n, len(pool), cfg)
        template = active[turn % len(active)]
        problem = None
        if template not in unused:
            repeats = misses = 0
            while repeats < saturation_draws and misses < max_tries:
                drawn = _make(template, rng, cfg)
                if drawn is None:
                    misses += 1
                elif fresh(drawn):
                    problem = drawn
                    break
                else:
                    repeats, misses = repeats + 1, 0
            else:
                unused[template] = [s for key, s in template_keys(template, cfg).items() if key not in seen]
        if problem is None and template in unused:
            scripts = unused[template]
            while scripts:
                i = rng.randrange(len(scripts))
                scripts[i], scripts[-1] = scripts[-1], scripts[i]
                drawn = _replay(template, scripts.pop(), rng, cfg)
                if fresh(drawn):
                    problem = drawn
                    break
        if problem is None:
            active.remove(template)
            continue
        pool.append(problem)
        turn += 1
    return pool


# --------------------------------------------------------------------------------------------------- slips


def _digit_swapped(value: int) -> int | None:
    digits = str(value)
    if len(digits) < 2 or digits[-1] == digits[-2] or (len(digits) == 2 and digits[-1] == "0"):
        return None  # no visible swap, or a leading zero
    return int(digits[:-2] + digits[-1] + digits[-2])


def _step_slips(kind: str, i: int, row: tuple[int, str, int, int]) -> list[Slip]:
    """The slips of `kind` at step `i`, whose gold computation is `row` (not yet checked for fluency)."""
    _, op, _, result = row
    if kind == "off_by_one":
        return [Slip(kind, i, value=v) for v in (result + 1, result - 1) if v >= 0]
    if kind == "wrong_operation":
        return [Slip(kind, i, op=o) for o in OPS if o != op]
    if kind == "digit_swap":
        swapped = _digit_swapped(result)
        return [Slip(kind, i, value=swapped)] if swapped is not None else []
    if kind == "reversed_operation":
        # b - a or b / a for a step `a op b` of another operation; b + a and b * a would repeat wrong_operation.
        return [Slip(kind, i, op=o) for o in ("-", "/") if o != op]
    raise ValueError(f"unknown slip kind {kind!r}; expected one of {SLIP_KINDS}")


def _slip_finals(problem: Problem, kind: str, gold: list[tuple[int, str, int, int]]) -> list[tuple[Slip, int]]:
    """Every slip of `kind` that keeps the chain whole and non-negative and changes the final answer, with that
    answer, in step order."""
    found: list[tuple[Slip, int]] = []
    for i, row in enumerate(gold):
        for slip in _step_slips(kind, i, row):
            wrong = problem.slipped_answer(slip, gold)
            if wrong is not None and wrong != gold[-1][3]:
                found.append((slip, wrong))
    return found


def candidate_slips(problem: Problem, kind: str) -> list[Slip]:
    """Every slip of `kind` that yields a fluent chain with a final answer different from the gold one."""
    return [slip for slip, _ in _slip_finals(problem, kind, problem.evaluate())]


def wrong_answers(problem: Problem, enough: int | None = None) -> set[int]:
    """The distinct wrong final answers that the slips of every kind give (stops early once `enough` are found).

    The last step goes first, worked inline (its slips need no propagation): it usually gives `enough` at once.
    """
    gold = problem.evaluate()
    a, op, b, final = gold[-1]
    quick = [final + 1, final - 1, _digit_swapped(final)]  # off_by_one, digit_swap
    quick += [OPS[o](a, b) for o in OPS if o != op]  # wrong_operation
    quick += [OPS[o](b, a) for o in ("-", "/") if o != op]  # reversed_operation
    answers = {v for v in quick if v is not None and v >= 0 and v != final}
    for i in reversed(range(len(gold) - 1)):
        if enough is not None and len(answers) >= enough:
            break
        for kind in SLIP_KINDS:
            for slip in _step_slips(kind, i, gold[i]):
                wrong = problem.slipped_answer(slip, gold)
                if wrong is not None and wrong != final:
                    answers.add(wrong)
    return answers


def wrong_solutions(problem: Problem, rng: random.Random, count: int) -> list[tuple[Slip, str]]:
    """`count` wrong solutions with distinct final answers, one main slip kind each in turn where possible.

    The fallback kinds are reached (and the random stream spent on them) only when the main kinds give fewer than
    `count` distinct final answers, as for 2 * 3 = 6 (its slips 7, 5 and 2 + 3 = 5 leave two answers).
    """
    gold = problem.evaluate()
    by_kind = {kind: _slip_finals(problem, kind, gold) for kind in MAIN_SLIP_KINDS}
    for options in by_kind.values():
        rng.shuffle(options)
    answers = {gold[-1][3]}
    chosen: list[tuple[Slip, str]] = []

    def take(queue: list[tuple[Slip, int]]) -> bool:
        for slip, final in queue:
            if final in answers:
                continue
            answers.add(final)
            chosen.append((slip, problem.solution(slip)))
            if len(chosen) == count:
                return True
        return False

    # First one of each main kind (in a shuffled kind order), then any remaining candidates, then the fallbacks.
    kinds = list(MAIN_SLIP_KINDS)
    rng.shuffle(kinds)
    queue = [by_kind[k].pop(0) for k in kinds if by_kind[k]] + [c for k in kinds for c in by_kind[k]]
    if take(queue):
        return chosen
    fallback = [c for kind in FALLBACK_SLIP_KINDS for c in _slip_finals(problem, kind, gold)]
    rng.shuffle(fallback)
    if take(fallback):
        return chosen
    raise GsilError(
        f"only {len(chosen)} distinct wrong solutions exist for {problem.question!r}; needed {count} "
        "(--mc-wrong for the multiple-choice file)"
    )


# --------------------------------------------------------------------------------------------------- checking

_EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def equations(text: str) -> list[tuple[int, str, int, int]]:
    """The `a op b = c` statements of a solution, in order."""
    return [(int(a), op, int(b), int(c)) for a, op, b, c in _EQUATION.findall(text)]


def equations_hold(text: str) -> bool:
    """Whether every stated equation is arithmetically true (and there is at least one)."""
    found = equations(text)
    return bool(found) and all(OPS[op](a, b) == c for a, op, b, c in found)


def extract_final_answer(text: str) -> str | None:
    """The answer a solution gives: the first number after the last '####', else the last number in the text.

    Commas are dropped and a trailing '.0' removed, so '1,200' and '1200.0' both give '1200'. None if no number.
    """
    if "####" in text:
        after = _NUMBER.findall(text.rsplit("####", 1)[1])
        if after:
            return _clean_number(after[0])
    found = _NUMBER.findall(text)
    return _clean_number(found[-1]) if found else None


def _clean_number(number: str) -> str:
    number = number.replace(",", "")
    return number[:-2] if number.endswith(".0") else number


# --------------------------------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class Sizes:
    """How many problems each split gets (the CLI defaults of `gsil prepare-data --profile demo`).

    Sized for the 30-minute CPU demo: one forward+backward pass of SmolLM2-135M on a ~100-token example costs
    seconds on two cores, so SFT gets a few hundred demonstrations and self-play a few dozen prompts per iteration.
    """

    test: int = 50
    fewshot: int = 5
    selfplay: int = 64
    sft: int = 256
    preference: int = 64  # pairs built on the first `preference` self-play problems
    mc_wrong: int = 3  # wrong solutions per multiple-choice problem
    validation: int = 0  # held-out validation problems (eval/arith_val.jsonl); 0 writes no file

    def validate(self) -> None:
        for name in ("test", "selfplay", "sft"):
            if getattr(self, name) < 1:
                raise GsilError(f"{SPLIT_FLAGS[name]} must be >= 1, got {getattr(self, name)}")
        for name in ("fewshot", "validation"):
            if getattr(self, name) < 0:
                raise GsilError(f"{SPLIT_FLAGS[name]} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.preference <= self.selfplay:
            raise GsilError(
                f"--preference-size ({self.preference}) must be between 0 and --selfplay-size ({self.selfplay}): "
                "preference pairs reuse the self-play problems and their gold responses as `chosen`"
            )
        if self.mc_wrong < 1:
            raise GsilError(f"--mc-wrong must be >= 1, got {self.mc_wrong}")


# Held-out splits first, so growing a training split never changes them; a split of size 0 takes no problems, so
# adding the validation split (0 by default) to an existing run changes only the training splits.
SPLIT_ORDER = ("test", "fewshot", "validation", "selfplay", "sft")
SPLIT_FLAGS = {
    "test": "--test-size", "fewshot": "--fewshot-size", "validation": "--validation-size",
    "selfplay": "--selfplay-size", "sft": "--sft-size",
}


def split_pool(seed: int, cfg: Config, sizes: Sizes) -> dict[str, list[Problem]]:
    """Disjoint problem splits, sliced from one pool in SPLIT_ORDER.

    The pool is the prefix of one seeded sequence, so growing the SFT split (sliced last) leaves the test, few-shot,
    validation and self-play problems unchanged. Every problem has at least `sizes.mc_wrong` distinct wrong answers,
    so any of them could be a multiple-choice item. Asking for more problems than exist is a GsilError that names
    the sizes, the capacity and the largest size the others leave room for.
    """
    sizes.validate()
    wanted = {name: getattr(sizes, name) for name in SPLIT_ORDER}
    total = sum(wanted.values())
    try:
        pool = generate_pool(total, seed, cfg, min_wrong=sizes.mc_wrong)
    except CapacityError as err:
        largest = max(wanted, key=wanted.get)
        room = max(0, err.available - (total - wanted[largest]))
        asked = " + ".join(f"{SPLIT_FLAGS[name]} {n}" for name, n in wanted.items() if n)
        settings = " ".join(
            f"--{name.replace('_', '-')} {getattr(cfg, name)}"
            for name in ("min_number", "max_number", "max_factor", "max_result", "max_steps")
        )
        raise GsilError(
            f"the demo splits need {total} distinct problems ({asked}) but the templates make only {err.available} "
            f"(with {settings}, each with at least --mc-wrong {sizes.mc_wrong} distinct wrong answers): lower "
            f"{SPLIT_FLAGS[largest]} to at most {room} (the other sizes as they are), or widen "
            "--min-number/--max-number/--max-factor/--max-result or raise --max-steps"
        ) from None
    splits: dict[str, list[Problem]] = {}
    start = 0
    for name in SPLIT_ORDER:
        splits[name] = pool[start:start + wanted[name]]
        start += wanted[name]
    return splits


def _problem_fields(problem: Problem) -> dict:
    return {"template": problem.template, "steps": len(problem.steps), "final_answer": str(problem.answer)}


def build_demo_records(seed: int, cfg: Config = Config(), sizes: Sizes = Sizes()) -> dict[str, list[dict]]:
    """The demo data set as record lists, keyed by output name (see CONTRACT.md "Demo data layout").

    sft / selfplay: demonstration records (prompt = the question, response = the gold solution);
    preferences: chosen = gold, rejected = one slip (kinds in turn); arith_test / arith_fewshot / arith_val
    (only when `sizes.validation` > 0): eval_generation; arith_mc: eval_choice over the test problems (gold +
    `sizes.mc_wrong` slips, in seeded random order).
    """
    splits = split_pool(seed, cfg, sizes)
    # A separate stream for slips and choice order, so they never shift which problems land in which split.
    rng = random.Random(f"{seed}-slips")

    def demonstrations(split: str) -> list[dict]:
        return [
            {"id": f"{split}-{i:05d}", "prompt": p.question, "response": p.solution(), **_problem_fields(p)}
            for i, p in enumerate(splits[split])
        ]

    def eval_rows(split: str) -> list[dict]:
        return [
            {"id": f"{split}-{i:05d}", "question": p.question, "answer": p.solution(), **_problem_fields(p)}
            for i, p in enumerate(splits[split])
        ]

    preferences = []
    for i, problem in enumerate(splits["selfplay"][: sizes.preference]):
        (slip, rejected), = wrong_solutions(problem, rng, 1)
        preferences.append({
            "id": f"selfplay-{i:05d}", "prompt": problem.question, "chosen": problem.solution(),
            "rejected": rejected, "slip": slip.kind, **_problem_fields(problem),
        })

    multiple_choice = []
    for i, problem in enumerate(splits["test"]):
        options = [(None, problem.solution())] + wrong_solutions(problem, rng, sizes.mc_wrong)
        rng.shuffle(options)
        label = next(j for j, (slip, _) in enumerate(options) if slip is None)
        multiple_choice.append({
            "id": f"test-{i:05d}", "question": problem.question, "choices": [text for _, text in options],
            "label": label, "slips": [slip.kind if slip else "gold" for slip, _ in options],
            **_problem_fields(problem),
        })

    records = {
        "sft": demonstrations("sft"),
        "selfplay": demonstrations("selfplay"),
        "preferences": preferences,
        "arith_test": eval_rows("test"),
        "arith_fewshot": eval_rows("fewshot"),
        "arith_mc": multiple_choice,
    }
    if sizes.validation:
        records["arith_val"] = eval_rows("validation")
    return records


HELD_OUT = ("arith_test", "arith_fewshot", "arith_val")


def overlap_report(records: dict[str, list[dict]]) -> dict[str, dict[str, int]]:
    """Shared problem texts between every held-out file and every other file (all must be 0).

    `records` is the output of build_demo_records (or the same shape read back from disk); a held-out file that
    is absent (arith_val when there is no validation split) is left out.
    """
    def texts(rows: list[dict]) -> set[str]:
        return {row.get("prompt", row.get("question")) for row in rows}

    report: dict[str, dict[str, int]] = {}
    for held in HELD_OUT:
        if held not in records:
            continue
        for other, rows in records.items():
            if other == held or (held == "arith_test" and other == "arith_mc"):
                continue  # the multiple-choice file is the test set in another form
            report.setdefault(held, {})[other] = len(texts(records[held]) & texts(rows))
    report["sft"] = {"selfplay": len(texts(records["sft"]) & texts(records["selfplay"]))}
    return report
