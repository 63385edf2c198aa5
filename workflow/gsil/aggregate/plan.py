"""The run plan: which methods, models and benchmarks a validated config asks for.

One function turns the config into the plan, and both sides read it from here: the Snakefile (workflow/rules/
common.smk) builds its targets and flags from it, and `gsil aggregate` receives it as JSON and lays out the tables
from it. So the two can never disagree on which models exist or what they are called.

Model ids (the `<model>` of every results path):
  base                  the materialised base model
  sft                   the SFT model (or `base` itself when `sft.train` is false: the base already is an SFT model)
  <method>              a preference method (DPO): one round from the SFT model
  <method>/iter<k>      round k (k = 0 .. iterations-1) of a self-play method (SPIN, GSIL): trained from round k-1,
                        or from the SFT model for k = 0, on that model's own generations
  sft-s<seed>, <method>-s<seed>[/iter<k>]
                        the same trainings repeated with another training seed (config `seeds`): every seed but
                        the first gets its own SFT model and its own chain of rounds, on the same data
"""

from __future__ import annotations

import fnmatch
import itertools
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from gsil.losses import LOSS_INFO, LossInfo

# Hyperparameters that only pairwise training takes; SFT never gets them.
PAIRWISE_ONLY = ("beta", "gamma", "drop_identical_pairs")


class PlanError(ValueError):
    """A config that the schema accepts but that makes no sense as a run (unknown base, duplicate name, ...)."""


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    loss: str
    kind: str  # "preference" (DPO) or "selfplay" (SPIN, GSIL)
    iterations: int
    generation: str | None  # named generation setting (self-play only)
    prompts: str | None  # self-play prompt set: a demonstration file under results/<run>/data/ (without .jsonl)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    ablation_of: str | None = None
    ablation_axis: str | None = None  # "beta", "gamma" or "beta+gamma"
    start_model: str = "sft"  # the model round 0 (or the preference round) trains from, and its reference
    seed: int | None = None  # training seed when the config repeats methods over `seeds`
    seed_of: str | None = None  # the first-seed method this one repeats (None: it is a first-seed method)

    def model_ids(self) -> list[str]:
        if self.kind == "preference":
            return [self.name]
        return [f"{self.name}/iter{k}" for k in range(self.iterations)]

    def final_model_id(self) -> str:
        return self.model_ids()[-1]


def format_number(value: float) -> str:
    """Short, path-safe spelling of a hyperparameter value: 0.1 -> '0.1', 2.0 -> '2', 1e-05 -> '1e-05'."""
    return f"{float(value):g}"


def loss_info(loss: str, where: str) -> LossInfo:
    """The registry's facts about a loss (gsil.losses.LOSS_INFO); an unregistered name is a PlanError."""
    try:
        return LOSS_INFO[loss]
    except KeyError:
        raise PlanError(f"{where}: unknown loss {loss!r} (registered: {', '.join(LOSS_INFO)})") from None


def _training_settings(defaults: dict, overrides: dict | None, info: LossInfo) -> dict[str, Any]:
    settings = {**defaults, **(overrides or {})}
    if not info.shifted:
        settings.pop("gamma", None)
    if info.data == "preference":
        settings.pop("drop_identical_pairs", None)
    if "beta" not in settings:
        raise PlanError(f"method with loss {info.name!r} has no beta (set align_defaults.beta or "
                        "hyperparameters.beta)")
    if info.shifted and "gamma" not in settings:
        raise PlanError(f"GSIL loss {info.name!r} needs gamma (set align_defaults.gamma or hyperparameters.gamma)")
    return settings


def seed_values(config: dict) -> list[int]:
    """The training seeds of the run; the first one trains the unsuffixed models."""
    return [int(v) for v in ((config.get("seeds") or {}).get("values") or [])]


def seeded_name(name: str, seed: int) -> str:
    return f"{name}-s{seed}"


def build_methods(config: dict) -> list[Method]:
    """Configured methods, the ablation methods their grids expand into, then the copies of the methods named in
    `seeds.methods` for every seed after the first, in config order."""
    methods = _configured_and_ablation_methods(config)
    seeds = seed_values(config)
    if not seeds:
        return methods
    first, others = seeds[0], seeds[1:]
    by_name = {m.name: m for m in methods}
    repeated = list((config.get("seeds") or {}).get("methods") or [])
    unknown = sorted(set(repeated) - set(by_name))
    if unknown:
        raise PlanError(f"seeds.methods: {unknown} are not configured methods (have: {sorted(by_name)})")
    sft_id = sft_model_id(config)
    if others and sft_id != "sft" and repeated:
        raise PlanError("seeds: repeating methods over seeds needs a trained SFT model per seed (sft.train: true)")
    methods = [replace(m, seed=first, hyperparameters={**m.hyperparameters, "seed": first}) for m in methods]
    copies = []
    for seed in others:
        for method in (m for m in methods if m.name in repeated):
            copies.append(replace(
                method, name=seeded_name(method.name, seed), label=f"{method.label} (seed {seed})",
                hyperparameters={**method.hyperparameters, "seed": seed},
                start_model=seeded_name(sft_id, seed), seed=seed, seed_of=method.name))
    return methods + copies


def _configured_and_ablation_methods(config: dict) -> list[Method]:
    """Configured methods followed by the ablation methods their grids expand into, in config order."""
    defaults = dict(config.get("align_defaults") or {})
    generations = config.get("generation") or {}
    methods: list[Method] = []
    for index, entry in enumerate(config["methods"]):
        loss = entry["loss"]
        info = loss_info(loss, f"methods[{index}] ({entry['name']})")
        kind = info.data
        iterations = int(entry.get("iterations", 1))
        if kind == "preference" and iterations != 1:
            raise PlanError(f"methods[{index}] ({entry['name']}): a preference method runs one round, "
                            f"got iterations: {iterations}")
        generation = entry.get("generation", "greedy") if kind == "selfplay" else None
        prompts = entry.get("prompts", "selfplay") if kind == "selfplay" else None
        if generation is not None and generation not in generations:
            raise PlanError(f"methods[{index}] ({entry['name']}): generation {generation!r} is not a key of "
                            f"`generation` (have: {sorted(generations)})")
        methods.append(Method(
            name=entry["name"], label=entry.get("label") or info.label, loss=loss, kind=kind,
            iterations=iterations, generation=generation, prompts=prompts,
            hyperparameters=_training_settings(defaults, entry.get("hyperparameters"), info),
            start_model=sft_model_id(config),
        ))
    by_name = {m.name: m for m in methods}
    for index, grid in enumerate(config.get("ablations") or []):
        base = by_name.get(grid["base"])
        if base is None:
            raise PlanError(f"ablations[{index}].base: {grid['base']!r} is not a configured method "
                            f"(have: {sorted(by_name)})")
        if "gamma" not in base.hyperparameters and grid.get("gamma"):
            raise PlanError(f"ablations[{index}].gamma: method {base.name!r} (loss {base.loss}) has no shift γ")
        for beta, gamma, axis in _grid_points(base, grid):
            overrides = {"beta": beta}
            if gamma is not None:
                overrides["gamma"] = gamma
            suffix = f"-b{format_number(beta)}" + (f"-g{format_number(gamma)}" if gamma is not None else "")
            name = base.name + suffix
            if name in by_name:
                continue  # two grids (or a grid and a configured method) asking for the same point: train once
            method = Method(
                name=name, label=f"{base.label} β={format_number(beta)}"
                + (f" γ={format_number(gamma)}" if gamma is not None else ""),
                loss=base.loss, kind=base.kind, iterations=int(grid.get("iterations", 1)),
                generation=base.generation, prompts=base.prompts, hyperparameters={**base.hyperparameters, **overrides},
                ablation_of=base.name, ablation_axis=axis, start_model=base.start_model,
            )
            methods.append(method)
            by_name[name] = method
    names = [m.name for m in methods]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise PlanError(f"methods: duplicate names {duplicates}")
    return methods


def _grid_points(base: Method, grid: dict) -> list[tuple[float, float | None, str]]:
    """(beta, gamma, axis) of each grid point other than the base's own settings."""
    base_beta = float(base.hyperparameters["beta"])
    base_gamma = base.hyperparameters.get("gamma")
    betas = [float(b) for b in grid.get("beta") or []]
    gammas = [float(g) for g in grid.get("gamma") or []]
    points: list[tuple[float, float | None, str]] = []
    if grid.get("grid", "axes") == "product":
        for beta, gamma in itertools.product(betas or [base_beta], gammas or [base_gamma]):
            gamma = None if gamma is None else float(gamma)
            axis = "+".join(a for a, changed in (("beta", beta != base_beta), ("gamma", gamma != base_gamma)) if changed)
            if axis:
                points.append((beta, gamma, axis))
    else:
        points += [(b, base_gamma, "beta") for b in betas if b != base_beta]
        points += [(base_beta, g, "gamma") for g in gammas if g != base_gamma]
    return points


# What `gsil prepare-data` writes under results/<run>/data/ for each profile (output name -> relative path).
DATA_FILES = {
    "demo": {"sft": "sft.jsonl", "selfplay": "selfplay.jsonl", "preferences": "preferences.jsonl",
             "arith_test": "eval/arith_test.jsonl", "arith_fewshot": "eval/arith_fewshot.jsonl",
             "arith_mc": "eval/arith_mc.jsonl", "arith_val": "eval/arith_val.jsonl"},
    "paper": {"selfplay": "selfplay.jsonl", "spin_selfplay": "spin_selfplay.jsonl",
              "preferences": "preferences.jsonl"},
}
DEMO_DEFAULT_FEWSHOT = 5  # gsil.arithmetic.Sizes.fewshot


def data_files(config: dict) -> dict[str, str]:
    """The data files of this run's profile (the demo writes no few-shot file when fewshot_size is 0, and no
    validation file when validation_size is 0, its default)."""
    data = config["data"]
    files = dict(DATA_FILES[data["profile"]])
    if data["profile"] == "demo":
        sizes = data.get("demo") or {}
        if sizes.get("fewshot_size", DEMO_DEFAULT_FEWSHOT) == 0:
            files.pop("arith_fewshot")
        if not sizes.get("validation_size", 0):
            files.pop("arith_val")
    return files


def check_data(config: dict, methods: list[Method]) -> None:
    files = data_files(config)
    profile = config["data"]["profile"]
    if (config.get("sft") or {}).get("train", True) and "sft" not in files:
        raise PlanError(f"sft.train is true but the {profile!r} data profile has no SFT demonstrations "
                        f"(the paper run starts from an SFT model: set sft.train: false)")
    for method in methods:
        if method.prompts is not None and method.prompts not in files:
            raise PlanError(f"method {method.name}: prompts {method.prompts!r} is not a file of the {profile!r} "
                            f"data profile (have: {sorted(files)})")
    for bench in config["benchmarks"]:
        for name in bench.get("data") or []:
            if name not in files.values():
                raise PlanError(f"benchmark {bench['name']}: data {name!r} is not written by the {profile!r} data "
                                f"profile (have: {sorted(files.values())})")


def enabled_benchmarks(config: dict) -> list[dict]:
    judge_url = ((config.get("judge") or {}).get("base_url") or "").strip()
    chosen = []
    for bench in config["benchmarks"]:
        if not bench.get("enabled", True):
            continue
        if bench.get("needs_judge") and not judge_url:
            continue
        chosen.append(bench)
    return chosen


def benchmark_scores_model(bench: dict, model_id: str) -> bool:
    """Whether a benchmark entry scores a model: its `models` patterns (shell-style), or every model."""
    patterns = bench.get("models")
    return patterns is None or any(fnmatch.fnmatchcase(model_id, p) for p in patterns)


def sft_model_id(config: dict) -> str:
    return "sft" if (config.get("sft") or {}).get("train", True) else "base"


def sft_seed_copies(config: dict) -> list[int]:
    """Seeds after the first for which an SFT model `sft-s<seed>` is trained (when any method is repeated)."""
    seeds = seed_values(config)
    if len(seeds) < 2 or sft_model_id(config) != "sft" or not (config.get("seeds") or {}).get("methods"):
        return []
    return seeds[1:]


def build_plan(config: dict) -> dict[str, Any]:
    """Everything the workflow and the aggregate need to know about the run, as plain JSON-able data."""
    methods = build_methods(config)
    check_data(config, methods)
    sft_id = sft_model_id(config)
    sft_cfg = config.get("sft") or {}
    seeds = seed_values(config)
    first_seed = seeds[0] if seeds else None
    models = [{"id": "base", "method": "base", "label": "Base", "iteration": None, "seed": first_seed,
               "seed_group": "base"}]
    if sft_id == "sft":
        models.append({"id": "sft", "method": "sft", "label": sft_cfg.get("label", "SFT"), "iteration": None,
                       "seed": first_seed, "seed_group": "sft"})
    else:  # the base model plays the SFT model: one row, labelled as SFT
        models[0]["method"] = "sft"
        models[0]["label"] = sft_cfg.get("label", "SFT")
    for seed in sft_seed_copies(config):
        models.append({"id": seeded_name("sft", seed), "method": "sft", "label": f"{sft_cfg.get('label', 'SFT')} "
                       f"(seed {seed})", "iteration": None, "seed": seed, "seed_group": "sft"})
    for method in methods:
        for model_id in method.model_ids():
            iteration = None if method.kind == "preference" else int(model_id.rsplit("iter", 1)[1])
            group = model_id.replace(method.name, method.seed_of, 1) if method.seed_of else model_id
            models.append({"id": model_id, "method": method.name, "label": method.label, "iteration": iteration,
                           "seed": method.seed, "seed_group": group})
    benchmarks = [
        {"name": b["name"], "label": b.get("label") or b["name"], "higher_is_better": b.get("higher_is_better", True),
         "models": [m["id"] for m in models if benchmark_scores_model(b, m["id"])]}
        for b in enabled_benchmarks(config)
    ]
    return {
        "run": config["run"],
        "sft_model": sft_id,
        "seeds": seeds,
        "methods": [asdict(m) | {"models": m.model_ids()} for m in methods],
        "models": models,
        "benchmarks": benchmarks,
        "aggregate": config.get("aggregate") or {},
    }
