# Helpers shared by every rule file (the run plan, paths, input functions, CLI flag strings); no rules here.
#
# Every setting that changes an output reaches its rule through `params` built by a named function below, so a
# changed hyperparameter reruns exactly the jobs it touches (with Snakemake's default rerun triggers).

import json
import os
import re

from gsil.aggregate.outputs import FIGURE_NAMES, TABLE_NAMES
from gsil.aggregate.plan import (
    PlanError,
    build_methods,
    benchmark_scores_model,
    build_plan,
    data_files,
    enabled_benchmarks,
    seed_values,
    seeded_name,
    sft_model_id,
    sft_seed_copies,
)

try:
    PLAN = build_plan(config)
    METHODS = {method.name: method for method in build_methods(config)}
except PlanError as err:
    raise WorkflowError(f"config: {err}") from None

SFT_MODEL = sft_model_id(config)
# The SFT models this run trains: `sft`, and `sft-s<seed>` for every further training seed (config `seeds`).
SFT_MODELS = ([SFT_MODEL] if SFT_MODEL == "sft" else []) + [seeded_name("sft", s) for s in sft_seed_copies(config)]
BENCHMARKS = {bench["name"]: bench for bench in enabled_benchmarks(config)}
SELFPLAY_METHODS = [m for m in METHODS.values() if m.kind == "selfplay"]
PREFERENCE_METHODS = [m for m in METHODS.values() if m.kind == "preference"]
ALL_MODELS = [model["id"] for model in PLAN["models"]]


def _alternation(names):
    # A regex matching exactly the given names; a never-matching pattern when the list is empty.
    return "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True)) or "(?!)"


# ---------------------------------------------------------------- paths (docs/design.md#paths, the Snakefile header)


def model_dir(model_id):
    return f"<results>/models/{model_id}"


def generation_file(model_id, prompts, generation):
    # Keyed by what the generations depend on: the model, the prompt set and the named decoding setting.
    return f"<results>/generations/{model_id}/{prompts}.{generation}.jsonl"


def selfplay_pairs(method):
    """The pair-set name of a self-play method's rounds: <prompts>.<generation setting>."""
    return f"{method.prompts}.{method.generation}"


def data_outputs():
    return {name: f"<results>/data/{relative}" for name, relative in data_files(config).items()}


# The settings that change reference log-probs besides the model and the pairs, spelled into the reference file
# name (tokenization_tag) and read back from it (tokenization_settings) by one pattern, which is also the
# `tokenization` wildcard's constraint (Snakefile). The precision is the one configured: `auto` resolves in the job
# (the .meta.json records what it gave), and align refuses a reference whose numerics differ from its own. An
# `attention` other than auto changes the values too and is appended; auto adds nothing, so names stay as they were.
TOKENIZATION_PATTERN = r"L(?P<max_length>\d+)-P(?P<max_prompt_length>\d+)-(?P<template>chat|spin)-(?P<precision>auto|bf16|fp32)(?:-(?P<attention>sdpa|eager|flash_attention_2))?"


def tokenization_tag(settings):
    attention = settings.get("attention", "auto")
    return (
        f"L{settings['max_length']}-P{settings['max_prompt_length']}"
        f"-{settings.get('template', 'chat')}-{settings.get('precision', 'bf16')}"
        + ("" if attention == "auto" else f"-{attention}")
    )


def tokenization_settings(tag):
    return re.fullmatch(TOKENIZATION_PATTERN, tag).groupdict()


def reference_file(model_id, pairs, settings):
    # Reference log-probs depend on the model, the pair file and the tokenization/precision: all are in the name.
    return f"<results>/reference/{model_id}/{pairs}.{tokenization_tag(settings)}.jsonl"


def benchmark_file(rule, key):
    """Snakemake `benchmark:` file of one job: <benchmarks>/<rule>/<key>.tsv (key = the job's wildcards part)."""
    return f"<benchmarks>/{rule}/{key}.tsv"


def eval_file(model_id, benchmark):
    return f"<results>/eval/{model_id}/{benchmark}.json"


def metrics_file(model_id):
    return f"<results>/train/{model_id}/metrics.jsonl"


# ---------------------------------------------------------------- CLI flags from config


def cli_flags(settings):
    """snake_case settings -> '--kebab-case value' flags; True -> bare flag, False/None -> omitted."""
    parts = []
    for key, value in sorted(settings.items()):
        flag = f"--{key.replace('_', '-')}"
        if value is True:
            parts.append(flag)
        elif value is False or value is None:
            continue
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def prepare_model_flags(wildcards):
    source = config["base_model"]["source"]
    return cli_flags({"source": source, **(config["base_model"].get(source) or {})})


def prepare_data_flags(wildcards):
    profile = config["data"]["profile"]
    return cli_flags({"profile": profile, "seed": config["data"]["seed"], **(config["data"].get(profile) or {})})


def sft_seed(sft_model):
    """Training seed of an SFT model id: the config's for `sft` (the first of `seeds` when set), <s> for sft-s<s>."""
    if sft_model != "sft":
        return int(sft_model.rsplit("-s", 1)[1])
    seeds = seed_values(config)
    return seeds[0] if seeds else (config["sft"].get("hyperparameters") or {}).get("seed")


def sft_flags(wildcards):
    settings = dict((config["sft"].get("hyperparameters") or {}))
    seed = sft_seed(wildcards.sft_model)
    if seed is not None:
        settings["seed"] = seed
    return cli_flags(settings)


def method_of(wildcards):
    return METHODS[wildcards.get("selfplay_method") or wildcards.get("preference_method")]


def align_flags(wildcards):
    method = method_of(wildcards)
    return cli_flags({"loss": method.loss, **method.hyperparameters})


def generation_settings(wildcards):
    return config["generation"][wildcards.generation]


def generate_flags(wildcards):
    return cli_flags(generation_settings(wildcards))


def reference_flags(wildcards):
    return cli_flags(tokenization_settings(wildcards.tokenization))


def pairs_kind(wildcards):
    return "preference" if wildcards.pairs == "preferences" else "selfplay"


CHECKPOINT_EVERY = config.get("checkpointing", {}).get("every", 50)
CHECKPOINT_SAVE = config.get("checkpointing", {}).get("save", "beside")
# Experiment tracking (gsil.training.tracking): trackers that get a copy of every training job's per-step metrics,
# under <results>/tracking/<model>/ (TensorBoard: <model>/gsil/). Resources, like checkpointing: a change reruns
# nothing. The folder is not an output: Snakemake deletes a failed job's outputs, and it would lose its history.
TRACKING = ",".join(config.get("tracking", ["tensorboard"])) or "none"
TRACKING_DIR = f"results/{config['run']}/tracking"


def _protocol(bench):
    protocol = dict(bench.get("protocol") or {})
    if bench.get("needs_judge"):
        protocol["judge"] = {**config["judge"], **(protocol.get("judge") or {})}
    return protocol


def benchmark_protocols(wildcards):
    # Every benchmark's protocol as one JSON string {benchmark: protocol}; sorted keys keep the params (and so the
    # rerun trigger) stable. A changed protocol reruns every model's job, and the evaluator's result cache
    # (gsil.evaluation.cache) scores again only the benchmark whose protocol changed.
    return json.dumps({name: _protocol(bench) for name, bench in BENCHMARKS.items()}, sort_keys=True)


def unselected_benchmarks(wildcards):
    """{benchmark: reason} for the benchmarks whose `models` patterns leave this model out (a skipped result)."""
    return json.dumps(
        {
            name: f"not scored on this model: config benchmark {name} selects only models {', '.join(bench['models'])}"
            for name, bench in BENCHMARKS.items()
            if not benchmark_scores_model(bench, wildcards.model)
        },
        sort_keys=True,
    )


def evaluation_cache_dir(wildcards):
    # Outside the job's outputs, which Snakemake deletes before it reruns a job.
    return f"results/{config['run']}/cache/eval/{wildcards.model}"


def run_plan_json(wildcards):
    return json.dumps(PLAN, sort_keys=True)


# ---------------------------------------------------------------- input functions


def pairs_input(wildcards):
    if wildcards.pairs == "preferences":
        return "<results>/data/preferences.jsonl"
    prompts, generation = wildcards.pairs.split(".")
    return generation_file(wildcards.generator, prompts, generation)


def prompts_input(wildcards):
    return f"<results>/data/{wildcards.prompts}.jsonl"


def init_model_id(method, iteration):
    """Round k of a self-play method starts from round k-1, round 0 from its seed's SFT model."""
    return method.start_model if iteration == 0 else f"{method.name}/iter{iteration - 1}"


def align_selfplay_inputs(wildcards):
    method = METHODS[wildcards.selfplay_method]
    iteration = int(wildcards.iteration)
    if iteration >= method.iterations:
        raise WorkflowError(f"{method.name} is configured for {method.iterations} iterations, asked for iter{iteration}")
    init = init_model_id(method, iteration)
    return {
        "model": model_dir(init),
        "pairs": generation_file(init, method.prompts, method.generation),
        "reference": reference_file(init, selfplay_pairs(method), method.hyperparameters),
    }


def align_preference_inputs(wildcards):
    method = METHODS[wildcards.preference_method]
    return {
        "model": model_dir(method.start_model),
        "pairs": "<results>/data/preferences.jsonl",
        "reference": reference_file(method.start_model, "preferences", method.hyperparameters),
    }


def evaluation_data(wildcards):
    return sorted({f"<results>/data/{name}" for bench in BENCHMARKS.values() for name in bench.get("data") or []})


def evaluation_outputs():
    # One result file per enabled benchmark, keyed by benchmark name (a benchmark that does not score the model
    # writes a result saying so).
    return {name: eval_file("{model}", name) for name in BENCHMARKS}


# ---------------------------------------------------------------- targets


def all_models():
    return [model_dir(m) for m in ALL_MODELS]


def evaluated_pairs():
    """(model, benchmark) pairs with a score: each benchmark on the models its `models` patterns select."""
    return [(m, name) for m in ALL_MODELS for name, bench in BENCHMARKS.items() if benchmark_scores_model(bench, m)]


def all_evaluations():
    # Every result file of every evaluate_model job, the skipped ones included (each job writes all of them).
    return [eval_file(m, b) for m in ALL_MODELS for b in BENCHMARKS]


def all_generations():
    # The generations each self-play round trains on (shared across methods where model and setting agree).
    return sorted(
        {
            generation_file(init_model_id(m, k), m.prompts, m.generation)
            for m in SELFPLAY_METHODS
            for k in range(m.iterations)
        }
    )


def all_references():
    files = {
        reference_file(init_model_id(m, k), selfplay_pairs(m), m.hyperparameters)
        for m in SELFPLAY_METHODS
        for k in range(m.iterations)
    }
    files |= {reference_file(m.start_model, "preferences", m.hyperparameters) for m in PREFERENCE_METHODS}
    return sorted(files)


def all_benchmark_files():
    """The benchmark files of every heavy job of this run (the compute table reads exactly these)."""
    files = [benchmark_file("sft_train", model) for model in SFT_MODELS]
    for m in SELFPLAY_METHODS:
        for k in range(m.iterations):
            start = init_model_id(m, k)
            files.append(benchmark_file("generate_responses", f"{start}/{m.prompts}.{m.generation}"))
            files.append(
                benchmark_file("reference_logps", f"{start}/{selfplay_pairs(m)}.{tokenization_tag(m.hyperparameters)}")
            )
            files.append(benchmark_file("align_selfplay", f"{m.name}/iter{k}"))
    for m in PREFERENCE_METHODS:
        files.append(
            benchmark_file("reference_logps", f"{m.start_model}/preferences.{tokenization_tag(m.hyperparameters)}")
        )
        files.append(benchmark_file("align_preferences", m.name))
    if BENCHMARKS:
        files += [benchmark_file("evaluate_model", model) for model in ALL_MODELS]
    return sorted(set(files))


def aggregate_outputs():
    # one list of names, gsil.aggregate.outputs, for the aggregate and the workflow
    tables = {f"table_{name}_{ext}": f"<results>/tables/{name}.{ext}" for name in TABLE_NAMES for ext in ("md", "csv")}
    figures = {f"figure_{name}": f"<results>/figures/{name}.png" for name in FIGURE_NAMES}
    return tables | figures


# ---------------------------------------------------------------- how heavy stages run

# Decided in the shell from the job's resources, not in `params`, so moving a run between machines does not by
# itself retrain anything. OMP/MKL threads follow the job's `threads` (shared by a job's processes: set_cpu_threads).
#
# GPUs (resources gpu > 0): the job runs under `gsil with-gpus --count <gpu>`, which picks that many GPUs no other
# job on the node holds, waits while they are busy, and sets CUDA_VISIBLE_DEVICES (Snakemake's local executor sets
# none: every job would land on GPU 0). Training and reference scoring run under `accelerate launch`, one process
# per GPU, with the rule's `accelerate_config`.
# CPU (gpu = 0): one plain process, or with resources processes > 1 that many data-parallel processes over gloo
# (the CPU rehearsal of the GPU run; `processes` only counts on the CPU). `accelerate launch --cpu` would start ONE
# process (its MULTI_CPU launcher leaves the others to mpirun), so the CPU processes are started by accelerate's
# torchrun launcher, as on GPUs (`--multi_gpu`), and ACCELERATE_USE_CPU=true keeps them on the CPU.
# `--main_process_port 0`: accelerate (>= 1.7) takes a free port, so multi-process jobs running side by side on one
# node do not collide on the default port 29500.
_THREADS_ENV = "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}"

# The model chain (SFT, generation, reference scoring, training) runs before any evaluation whenever both are ready.
# Its jobs take both cores of a small machine; an evaluation takes one, and Snakemake starts whatever fits, so an
# evaluation started beside another one left the next training job waiting and a core idle once the other finished
# (about 7 core-minutes of the demo's 36 on 2026-12-01). Evaluations then run at the end, two at a time.
MODEL_CHAIN_PRIORITY = 10
_LAUNCHER = (
    'if [ "{resources.gpu}" -gt 0 ]; then '
    'launch="gsil with-gpus --count {resources.gpu} -- accelerate launch --num_processes {resources.gpu} '
    '--main_process_port 0 --config_file {resources.accelerate_config} -m gsil"; '
    'elif [ "{resources.processes}" -gt 1 ]; then '
    'launch="env ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes {resources.processes} '
    '--main_process_port 0 --config_file {resources.accelerate_config} -m gsil"; '
    "else launch=gsil; fi; "
)
_SLOT = 'if [ "{resources.gpu}" -gt 0 ]; then slot="gsil with-gpus --count {resources.gpu} --"; else slot=; fi; '


def launched(command):
    """Shell line running `gsil <command>` as one process per GPU on the job's own GPUs, as `processes` CPU
    processes, or as one CPU process (all but the last under `accelerate launch`)."""
    return f"{_LAUNCHER}{_THREADS_ENV} $launch {command}"


def threaded(command):
    """Shell line running `gsil <command>` with the job's thread count, on the job's own GPUs when it has some
    (one process; vLLM spreads one model over the job's GPUs itself)."""
    return f"{_SLOT}{_THREADS_ENV} $slot gsil {command}"


def evaluated(command):
    """Like `threaded`, plus `--device cuda` when the profile gives the job a GPU (a runtime choice, not a param),
    and the log redirection after it."""
    device = '$([ "{resources.gpu}" -gt 0 ] && echo --device cuda)'
    return f"{_SLOT}{_THREADS_ENV} $slot gsil {command} {device} > {{log}} 2>&1"
