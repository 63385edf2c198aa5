"""Paired model comparisons and verdicts on the GSIL paper's claims, computed from result files only.

Inputs are what collect.py loaded: eval results, per-item scores ({item id: score}) and training metrics, plus the
run plan. Seeds: plan["seeds"] lists the training seeds (the first one trains the unsuffixed models); a seeded copy
of a model carries "seed" and "seed_group" (the first-seed model it replicates), a seeded copy of a method
"seed_of". A comparison of two first-seed models is made once per seed, between their replicas of that seed (a
model without a replica of some seed, such as the base model, stands in for every seed). With one seed, or with
settings absent from the plan, everything below reduces to the single run.

The settings live in plan["aggregate"]["claims"]: benchmark, the method names sft / gsil / gsil_no_shift / spin /
dpo, non_inferiority_margin (on the benchmark's own scale: 0.03 = 3 points of a fraction-scale benchmark),
confidence, bootstrap_samples and seed. A claim whose setting, model or result is missing is "not run", with the
reason; it is never an error.

Verdict rules
-------------
Differences are model A minus model B over the items both have, in points (percentage points for accuracy-type
benchmarks), oriented so that a positive difference favours the claim (sign flipped on a lower-is-better
benchmark). CI (claims.confidence, default 95 %): for right/wrong items, Tango's score interval of the difference of
paired proportions (stats.tango_interval: it keeps a width of about z²/n when the models agree on every item, where
a bootstrap would collapse to [0, 0]); for other per-item scores, the percentile bootstrap of the mean per-item
difference (claims.bootstrap_samples resamples of the items with replacement, default 10000; numpy generator seeded
with claims.seed). With two or more seeds the CI is the pooled one over the items all seeds share, and the
difference is the mean over items of the per-item mean over seeds: for right/wrong items Tango's interval on the
discordant counts of all seeds divided by the design effect of the item clusters (stats.design_effect, between 1
for independent seeds and the number of seeds for seeds that answer alike), else the percentile bootstrap of the
per-item means. p: exact two-sided McNemar test (binomial on the discordant items) of the first seed; reported,
not used by the rules. Per-seed differences: each seed's own paired difference.
(a) GSIL improves on SFT (GSIL's final model vs the SFT model, demonstrations only) and
(c) a positive shift beats γ = 0 (gsil vs gsil_no_shift): supported when the whole CI lies above 0 and, with two or
    more seeds, every seed's difference is above 0; contradicted when the whole CI lies below 0 and, with two or
    more seeds, every seed's difference is below 0; otherwise inconclusive (a CI containing 0, or seeds that
    disagree in sign).
(d) GSIL matches or beats DPO (non-inferiority with margin m = claims.non_inferiority_margin): supported when the
    CI's lower end is above -m, its upper end is at or above 0 (GSIL not significantly worse than DPO) and, with two
    or more seeds, every seed's difference is above -m; contradicted when the CI's upper end is below -m (GSIL worse
    by more than the margin) and, with two or more seeds, every seed's difference is below -m; otherwise
    inconclusive. A CI inside [-m, 0) is inconclusive, not supported: GSIL is then significantly worse than DPO,
    by less than the margin, which does not show that it "matches or beats" DPO, nor refutes "matches" as the
    margin defines it.
(b) Figure 2 (under GSIL the demonstrations' log-ratio rewards/real stays at or above 0, under SPIN it falls
    below 0): per seed, the final round's training metrics, the last quarter of its logged steps (the last
    ceil(k/4) of the k steps that log rewards/real). The interval is the range [min, max] of rewards/real over
    those steps, all seeds together: an envelope of the curve, not a confidence interval (consecutive steps are
    correlated, so an interval treating them as independent would overstate certainty). Supported when GSIL's
    minimum is at or above 0 and SPIN's maximum is below 0; contradicted when GSIL's maximum is below 0 or SPIN's
    minimum is at or above 0; otherwise inconclusive. Inconclusive too, whatever the ranges, when a run's
    reference was off its starting weights (the first metrics row's `start_gap`, an offset by
    gsil.training.numerics.is_offset): its rewards/real is shifted by β times that gap.
Not run: a setting, model, result, samples file or metrics file the claim needs is missing (the reason says which).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from gsil.aggregate import stats
from gsil.aggregate.collect import EvalResult
from gsil.losses import pair_metric_names

SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_RUN = "supported", "contradicted", "inconclusive", "not run"
# Claim (b) compares GSIL and SPIN, both self-play: the demonstrations' reward under its logged (paper's) name.
REWARD_KEY = pair_metric_names("selfplay")["rewards/positive"]  # "rewards/real"

Items = dict[tuple[str, str], dict[str, float]]
Results = dict[tuple[str, str], EvalResult]


def verdict_rules() -> str:
    """The verdict rules, as written in this module's docstring (printed below tables/claims.md)."""
    return __doc__.split("Verdict rules\n-------------\n", 1)[1].strip()


# ------------------------------------------------------------------------------------------------ settings, seeds


@dataclass(frozen=True)
class Settings:
    confidence: float = 0.95
    bootstrap_samples: int = 10_000
    seed: int = 0
    benchmark: str | None = None
    margin: float | None = None  # on the benchmark's own scale (fraction for accuracy-type benchmarks)
    names: dict[str, str] = field(default_factory=dict)  # role (sft, gsil, gsil_no_shift, spin, dpo) -> method


def settings_from_plan(plan: dict) -> Settings:
    claims = (plan.get("aggregate") or {}).get("claims") or {}
    roles = ("sft", "gsil", "gsil_no_shift", "spin", "dpo")
    margin = claims.get("non_inferiority_margin")
    return Settings(confidence=float(claims.get("confidence", 0.95)),
                    bootstrap_samples=int(claims.get("bootstrap_samples", 10_000)), seed=int(claims.get("seed", 0)),
                    benchmark=claims.get("benchmark"), margin=None if margin is None else float(margin),
                    names={r: str(claims[r]) for r in roles if claims.get(r)})


def plan_seeds(plan: dict) -> list[int]:
    return [int(s) for s in plan.get("seeds") or [0]]


def is_seed_copy(entry: dict) -> bool:
    """A model or method that replicates a first-seed one under another training seed."""
    if "seed_of" in entry:
        return entry.get("seed_of") is not None
    return entry.get("seed_group", entry.get("id")) != entry.get("id")


def replicas(plan: dict, model_id: str) -> dict[int, str]:
    """{seed: model id} of a first-seed model and its seeded copies, in plan["seeds"] order ({} if not planned)."""
    order = plan_seeds(plan)
    found = {order[0] if m.get("seed") is None else int(m["seed"]): m["id"] for m in plan["models"]
             if m["id"] == model_id or m.get("seed_group") == model_id}
    return dict(sorted(found.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def seed_pairs(plan: dict, a: str, b: str) -> list[tuple[int, str, str]]:
    """(seed, A's model, B's model) per seed of either; a model without that seed's replica stands in itself."""
    ra, rb = replicas(plan, a), replicas(plan, b)
    if not ra or not rb:
        return []
    seeds = list(dict.fromkeys(list(ra) + list(rb)))
    return [(s, ra.get(s, a), rb.get(s, b)) for s in seeds]


def resolve(plan: dict, name: str) -> tuple[str, str] | None:
    """(first-seed model id, label) that a claims name means: "sft" -> the SFT model, a method -> its final
    round, else a model id; None when the plan has nothing of that name."""
    if name == "sft":
        name = plan.get("sft_model", "sft")
    for method in plan["methods"]:
        if method["name"] == name and not is_seed_copy(method):
            return method["models"][-1], method_label(method)
    model = next((m for m in plan["models"] if m["id"] == name), None)
    return None if model is None else (model["id"], model["label"])


def method_label(method: dict) -> str:
    rounds = len(method["models"])
    return method["label"] + (f" (iter{rounds - 1})" if rounds > 1 else "")


# ------------------------------------------------------------------------------------------------ comparisons


@dataclass(frozen=True)
class Spec:
    name: str
    a: str
    b: str
    label_a: str
    label_b: str


@dataclass(frozen=True)
class SeedResult:
    seed: int
    a: str
    b: str
    paired: stats.Paired


@dataclass
class Comparison:
    spec: Spec
    bench: dict
    planned_seeds: int
    seeds: list[SeedResult] = field(default_factory=list)
    pooled: stats.Pooled | None = None  # over the seeds, >= 2 seeds only
    missing: list[str] = field(default_factory=list)       # why a seed could not be compared
    sources: list[str] = field(default_factory=list)       # result JSONs (each names its samples file)
    factor: float = 1.0  # points per unit of the benchmark's own scale (100 for fractions)

    @property
    def first(self) -> SeedResult | None:
        return self.seeds[0] if self.seeds else None

    def interval(self) -> tuple[float, float] | None:
        """The CI the significance mark and the claims use: pooled over seeds when >= 2 seeds, else the seed's."""
        if self.pooled is not None:
            return self.pooled.low, self.pooled.high
        return None if self.first is None else (self.first.paired.low, self.first.paired.high)

    def significant(self) -> bool | None:
        interval = self.interval()
        return None if interval is None else (interval[0] > 0 or interval[1] < 0)

    def seed_differences(self) -> list[float]:
        return [s.paired.difference for s in self.seeds]


def comparison_specs(plan: dict, settings: Settings) -> list[Spec]:
    """Each first-seed method's final model vs the SFT model, then GSIL vs SPIN, vs DPO, vs GSIL with γ = 0."""
    sft = resolve(plan, settings.names.get("sft", "sft"))
    specs: list[Spec] = []
    if sft is not None:
        for method in plan["methods"]:
            if not is_seed_copy(method):
                label = method_label(method)
                specs.append(Spec(f"{label} vs {sft[1]}", method["models"][-1], sft[0], label, sft[1]))
    gsil = resolve(plan, settings.names["gsil"]) if "gsil" in settings.names else None
    for role in ("spin", "dpo", "gsil_no_shift"):
        other = resolve(plan, settings.names[role]) if role in settings.names else None
        if gsil is not None and other is not None:
            specs.append(Spec(f"{gsil[1]} vs {other[1]}", gsil[0], other[0], gsil[1], other[1]))
    unique = {}
    for spec in specs:
        unique.setdefault((spec.a, spec.b), spec)
    return [s for s in unique.values() if s.a != s.b]


def _absent(model: str, bench: str, results: Results, items: Items) -> str | None:
    if (model, bench) not in results:
        return f"no result eval/{model}/{bench}.json"
    if (model, bench) not in items:
        return f"eval/{model}/{bench}.json has no per-item samples file"
    return None


def compare(plan: dict, spec: Spec, bench: dict, results: Results, items: Items, settings: Settings) -> Comparison:
    """Spec on one benchmark, per seed and pooled over the seeds that have both results (pure: no I/O)."""
    name, pairs = bench["name"], seed_pairs(plan, spec.a, spec.b)
    out = Comparison(spec, bench, planned_seeds=len(pairs))
    aligned = []
    for seed, a, b in pairs:
        reason = _absent(a, name, results, items) or _absent(b, name, results, items)
        ids = [] if reason else sorted(set(items[(a, name)]) & set(items[(b, name)]))
        if reason or not ids:
            out.missing.append(reason or f"{a} and {b} share no item on {name}")
            continue
        factor = out.factor = results[(a, name)].scale_factor
        x = [items[(a, name)][i] * factor for i in ids]
        y = [items[(b, name)][i] * factor for i in ids]
        paired = stats.paired_comparison(x, y, settings.confidence, settings.bootstrap_samples, settings.seed,
                                         unit=factor)
        out.seeds.append(SeedResult(seed, a, b, paired))
        out.sources += [results[(a, name)].path, results[(b, name)].path]
        aligned.append((a, b, factor))
    if len(aligned) >= 2:
        out.pooled = _pooled(aligned, name, items, settings)
    return out


def _pooled(aligned: list[tuple[str, str, float]], bench: str, items: Items,
            settings: Settings) -> stats.Pooled | None:
    shared = set.intersection(*(set(items[(a, bench)]) & set(items[(b, bench)]) for a, b, _ in aligned))
    ids = sorted(shared)
    if not ids:
        return None
    a_rows = [[items[(a, bench)][i] * f for i in ids] for a, _, f in aligned]
    b_rows = [[items[(b, bench)][i] * f for i in ids] for _, b, f in aligned]
    return stats.pooled_paired_difference(a_rows, b_rows, settings.confidence, settings.bootstrap_samples,
                                          settings.seed, unit=aligned[0][2])


def scores(bench: dict, model: str) -> bool:
    """Whether the plan evaluates `model` on `bench` (a benchmark entry's "models" list; absent: every model)."""
    return bench.get("models") is None or model in bench["models"]


def all_comparisons(plan: dict, results: Results, items: Items, settings: Settings) -> list[Comparison]:
    """Every comparison spec on every benchmark that evaluates both of its models."""
    return [compare(plan, spec, bench, results, items, settings)
            for spec in comparison_specs(plan, settings) for bench in plan["benchmarks"]
            if scores(bench, spec.a) and scores(bench, spec.b)]


# ------------------------------------------------------------------------------------------------ score intervals


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    method: str  # "wilson", "bootstrap" (from the per-item scores) or "stderr" (value -/+ z * stderr)


def score_interval(result: EvalResult, scores: dict[str, float] | None, settings: Settings) -> Interval | None:
    """CI of one result's headline value, in table units: from the per-item scores when their mean is the
    headline (not so for a group averaged over subtasks), else from the result's stderr; None without either."""
    if scores:
        values = list(scores.values())
        if math.isclose(sum(values) / len(values), result.raw_value, rel_tol=1e-6, abs_tol=1e-9):
            low, high, method = stats.score_interval(values, settings.confidence, settings.bootstrap_samples,
                                                     settings.seed)
            return Interval(low * result.scale_factor, high * result.scale_factor, method)
    if result.stderr is not None:
        return Interval(*stats.normal_interval(result.value, result.stderr, settings.confidence), "stderr")
    return None


def score_intervals(results: Results, items: Items, settings: Settings) -> dict[tuple[str, str], Interval]:
    out = {}
    for key, result in results.items():
        interval = score_interval(result, items.get(key), settings)
        if interval is not None:
            out[key] = interval
    return out


# ------------------------------------------------------------------------------------------------ verdicts


def superiority_verdict(low: float, high: float, seed_diffs: list[float]) -> tuple[str, str]:
    """Claims (a) and (c), on differences oriented so that > 0 favours the claim (rule in the module docstring)."""
    multi = len(seed_diffs) >= 2
    if low > 0:
        against = [d for d in seed_diffs if d <= 0] if multi else []
        if not against:
            return SUPPORTED, "CI above 0" + (", every seed's difference above 0" if multi else "")
        return INCONCLUSIVE, f"CI above 0, but {len(against)} of {len(seed_diffs)} seeds have a difference <= 0"
    if high < 0:
        against = [d for d in seed_diffs if d >= 0] if multi else []
        if not against:
            return CONTRADICTED, "CI below 0" + (", every seed's difference below 0" if multi else "")
        return INCONCLUSIVE, f"CI below 0, but {len(against)} of {len(seed_diffs)} seeds have a difference >= 0"
    return INCONCLUSIVE, "CI contains 0"


def non_inferiority_verdict(low: float, high: float, seed_diffs: list[float], margin: float) -> tuple[str, str]:
    """Claim (d), on differences oriented so that > 0 favours GSIL, with margin m > 0 (rule in the docstring)."""
    multi = len(seed_diffs) >= 2
    if low > -margin and high >= 0:
        against = [d for d in seed_diffs if d <= -margin] if multi else []
        if not against:
            return SUPPORTED, f"CI above -{margin:g} and not below 0" + (
                f", every seed's difference above -{margin:g}" if multi else "")
        return INCONCLUSIVE, f"CI above -{margin:g}, but {len(against)} of {len(seed_diffs)} seeds are at or below it"
    if high < -margin:
        against = [d for d in seed_diffs if d >= -margin] if multi else []
        if not against:
            return CONTRADICTED, f"CI below -{margin:g}: worse by more than the margin" + (
                ", in every seed" if multi else "")
        return INCONCLUSIVE, f"CI below -{margin:g}, but {len(against)} of {len(seed_diffs)} seeds are not"
    if high < 0 and low > -margin:
        return INCONCLUSIVE, f"significantly worse (CI below 0), by less than the margin {margin:g}"
    if high < 0:
        return INCONCLUSIVE, f"significantly worse (CI below 0), the CI reaching below -{margin:g}"
    return INCONCLUSIVE, f"CI contains both -{margin:g} and 0"


def rewards_verdict(gsil: tuple[float, float], spin: tuple[float, float]) -> tuple[str, str]:
    """Claim (b) from the [min, max] ranges of rewards/real in the windows (rule in the module docstring)."""
    if gsil[0] >= 0 and spin[1] < 0:
        return SUPPORTED, "GSIL's rewards/real never below 0, SPIN's always below 0"
    if gsil[1] < 0:
        return CONTRADICTED, "GSIL's rewards/real below 0 throughout the window"
    if spin[0] >= 0:
        return CONTRADICTED, "SPIN's rewards/real at or above 0 throughout the window"
    return INCONCLUSIVE, "a curve crosses 0 within the window"


def last_quarter(rows: list[dict[str, Any]], key: str = REWARD_KEY) -> list[float]:
    """`key` over the last ceil(k/4) of the k logged steps that have it (a repeated step: its last row)."""
    by_step = {row["step"]: float(row[key]) for row in rows if row.get(key) is not None}
    steps = sorted(by_step)
    return [by_step[s] for s in steps[len(steps) - math.ceil(len(steps) / 4):]]


# ------------------------------------------------------------------------------------------------ claims


@dataclass
class ClaimResult:
    claim: str
    statement: str
    model_a: str | None = None
    model_b: str | None = None
    benchmark: str | None = None
    n: int | None = None
    difference: float | None = None     # A - B (not oriented), in points
    low: float | None = None
    high: float | None = None
    interval: str | None = None         # the interval as printed
    p_value: float | None = None
    per_seed: list[float] = field(default_factory=list)
    verdict: str = NOT_RUN
    reason: str = ""
    sources: list[str] = field(default_factory=list)


STATEMENTS = {
    "a": "GSIL improves on SFT using demonstrations only",
    "b": "Figure 2: under GSIL the demonstrations' log-ratio stays >= 0, under SPIN it falls below 0",
    "c": "a positive shift γ beats γ = 0",
    "d": "GSIL matches or beats DPO without preference data",
}


def _models(plan: dict, settings: Settings, *roles: str) -> tuple[list[tuple[str, str]], str | None]:
    """Resolved (model id, label) per role, or the reason one is missing."""
    out = []
    for role in roles:
        if role not in settings.names:
            return [], f"aggregate.claims.{role} is not set"
        found = resolve(plan, settings.names[role])
        if found is None:
            return [], f"{role} = {settings.names[role]!r} is not a method or model of this run"
        out.append(found)
    return out, None


def _paired_claim(claim: str, plan: dict, roles: tuple[str, str], results: Results, items: Items,
                  settings: Settings) -> ClaimResult:
    out = ClaimResult(claim, STATEMENTS[claim])
    models, reason = _models(plan, settings, *roles)
    bench = next((b for b in plan["benchmarks"] if b["name"] == settings.benchmark), None)
    if reason is None and bench is None:
        reason = ("aggregate.claims.benchmark is not set" if settings.benchmark is None
                  else f"benchmark {settings.benchmark!r} is not evaluated in this run")
    if claim == "d" and reason is None and settings.margin is None:
        reason = "aggregate.claims.non_inferiority_margin is not set"
    if reason is not None:
        out.reason = reason
        return out
    (a, label_a), (b, label_b) = models
    comparison = compare(plan, Spec(claim, a, b, label_a, label_b), bench, results, items, settings)
    return _fill_paired(out, comparison, plan, settings)


def _fill_paired(out: ClaimResult, comparison: Comparison, plan: dict, settings: Settings) -> ClaimResult:
    spec, bench = comparison.spec, comparison.bench
    out.model_a, out.model_b, out.benchmark = spec.a, spec.b, bench["label"]
    if comparison.first is None:
        out.reason = "; ".join(dict.fromkeys(comparison.missing))
        return out
    first = comparison.first.paired
    out.n = comparison.pooled.n if comparison.pooled else first.n
    out.difference = comparison.pooled.difference if comparison.pooled else first.difference
    out.low, out.high = comparison.interval()
    out.interval = f"[{out.low:.2f}, {out.high:.2f}]"
    out.p_value, out.per_seed, out.sources = first.p_value, comparison.seed_differences(), comparison.sources
    sign = 1.0 if bench.get("higher_is_better", True) else -1.0
    low, high = sorted((sign * out.low, sign * out.high))
    seeds = [sign * d for d in out.per_seed]
    if out.claim == "d":
        margin = settings.margin * comparison.factor
        out.verdict, out.reason = non_inferiority_verdict(low, high, seeds, margin)
        out.reason += f" (margin {settings.margin:g} = {margin:g} points)"
    else:
        out.verdict, out.reason = superiority_verdict(low, high, seeds)
    if comparison.missing:
        out.reason += f"; {len(comparison.seeds)} of {comparison.planned_seeds} seeds compared"
    return out


def rewards_claim(plan: dict, metrics: dict[str, list[dict]], settings: Settings) -> ClaimResult:
    """Claim (b) from the final round's training metrics of GSIL and SPIN, every seed."""
    out = ClaimResult("b", STATEMENTS["b"], benchmark=f"training: {REWARD_KEY}")
    models, reason = _models(plan, settings, "gsil", "spin")
    if reason is not None:
        out.reason = reason
        return out
    (gsil, _), (spin, _) = models
    out.model_a, out.model_b = gsil, spin
    pairs = seed_pairs(plan, gsil, spin)
    windows = {"GSIL": {s: last_quarter(metrics.get(g) or []) for s, g, _ in pairs},
               "SPIN": {s: last_quarter(metrics.get(p) or []) for s, _, p in pairs}}
    for role, model in (("GSIL", gsil), ("SPIN", spin)):
        windows[role] = {seed: w for seed, w in windows[role].items() if w}
        if not windows[role]:
            out.reason = f"no {REWARD_KEY} in train/{model}/metrics.jsonl (nor in its seeds' metrics)"
            return out
    values = {role: [v for w in ws.values() for v in w] for role, ws in windows.items()}
    ranges = {role: (min(v), max(v)) for role, v in values.items()}
    means = {role: sum(v) / len(v) for role, v in values.items()}
    out.difference = means["GSIL"] - means["SPIN"]
    out.interval = "; ".join(f"{r} range [{lo:.3g}, {hi:.3g}], mean {means[r]:.3g}" for r, (lo, hi) in ranges.items())
    both = [s for s in windows["GSIL"] if s in windows["SPIN"]]
    out.per_seed = [_mean(windows["GSIL"][s]) - _mean(windows["SPIN"][s]) for s in both]
    out.verdict, out.reason = rewards_verdict(ranges["GSIL"], ranges["SPIN"])
    out.reason += (f" (last quarter of the final round: {len(values['GSIL'])} GSIL steps over "
                   f"{len(windows['GSIL'])} seeds, {len(values['SPIN'])} SPIN steps over {len(windows['SPIN'])})")
    out.sources = [f"train/{m}/metrics.jsonl" for _, g, p in pairs for m in (g, p) if metrics.get(m)]
    offsets = offset_starts(metrics, [m for _, g, p in pairs for m in (g, p)])
    if offsets:
        out.verdict = INCONCLUSIVE
        out.reason = (f"Δ did not start at 0 (the reference was off the starting weights) in {'; '.join(offsets)}, "
                      f"so rewards/real is shifted; was: {out.reason}")
    return out


def offset_starts(metrics: dict[str, list[dict]], models: list[str]) -> list[str]:
    """The runs among `models` whose reference was off the starting weights (the first step's `start_gap` is an
    offset, not rounding), each as "train/<model>/metrics.jsonl (<gap> nats)"."""
    from gsil.training.numerics import is_offset

    found = []
    for model in models:
        first = next((row for row in metrics.get(model) or [] if "start_gap" in row), None)
        if first and is_offset({"mean": float(first["start_gap"]), "se": float(first.get("start_gap_se") or 0.0)}):
            found.append(f"train/{model}/metrics.jsonl ({float(first['start_gap']):+.3g} nats)")
    return found


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def metrics_models(plan: dict, settings: Settings) -> list[str]:
    """Every model whose training metrics claim (b) reads (GSIL's and SPIN's final rounds, all seeds)."""
    models, reason = _models(plan, settings, "gsil", "spin")
    return [] if reason else [m for model, _ in models for m in replicas(plan, model).values()]


def evaluate_claims(plan: dict, results: Results, items: Items, metrics: dict[str, list[dict]],
                    settings: Settings) -> list[ClaimResult]:
    """The four claims, in order (a) .. (d)."""
    return [
        _paired_claim("a", plan, ("gsil", "sft"), results, items, settings),
        rewards_claim(plan, metrics, settings),
        _paired_claim("c", plan, ("gsil", "gsil_no_shift"), results, items, settings),
        _paired_claim("d", plan, ("gsil", "dpo"), results, items, settings),
    ]
