# GSIL reproduction suite: base model -> SFT -> self-play rounds (SPIN, every GSIL loss) and DPO -> benchmarks ->
# the paper's tables and figures. `snakemake --cores 2` runs the demo (config/config.yaml);
# `snakemake --configfile config/paper.yaml --workflow-profile config/profiles/slurm` the paper run.
#
# Results paths (one scheme; <results> = results/<run>, <run> from the config key `run`):
#   <results>/models/base/                          materialised base model (HF format)
#   <results>/data/...                              demonstrations, self-play prompts, preferences, eval sets
#   <results>/models/<model>/                       <model> = sft | <preference method> | <self-play method>/iter<k>
#   <results>/generations/<model>/<prompts>.<setting>.jsonl
#                                                   responses of <model> to a self-play prompt set (data/<prompts>
#                                                   .jsonl) under a named decoding setting (config `generation`)
#   <results>/reference/<model>/<pairs>.L<max_length>-P<max_prompt_length>-<template>-<precision>.jsonl
#                                                   frozen log-probs of <model> on a pair set
#                                                   (<pairs> = preferences | <prompts>.<setting>)
#   <results>/train/<model>/metrics.jsonl           per-step metrics of the run that produced <model>
#   <results>/eval/<model>/<benchmark>.json         one score per model and benchmark
#   <results>/tables/*.md, *.csv   <results>/figures/*.png   <results>/plan.json (the run plan the tables follow)
#   <results>/logs/<rule>/...log   <results>/benchmarks/<rule>/...tsv
# Round k of a self-play method trains <method>/iter<k> from <method>/iter<k-1> (from sft for k = 0) on the
# generations and reference log-probs of that starting model, so round 0 of SPIN and of every GSIL variant shares
# one generation file and one reference file.

from snakemake.utils import min_version, validate

min_version("9.12")


configfile: "config/config.yaml"
report: "workflow/report/workflow.rst"


validate(config, schema="workflow/schemas/config.schema.yaml")


pathvars:
    results=f"results/{config['run']}",
    logs=f"results/{config['run']}/logs",
    benchmarks=f"results/{config['run']}/benchmarks",


include: "workflow/rules/common.smk"
# Wildcards only ever match configured names, so paths of different rules cannot be confused.
wildcard_constraints:
    selfplay_method=_alternation([m.name for m in SELFPLAY_METHODS]),
    preference_method=_alternation([m.name for m in PREFERENCE_METHODS]),
    model=_alternation(ALL_MODELS),
    generator=f"(?:{_alternation(['sft', 'base'] + SFT_MODELS + [m.name for m in SELFPLAY_METHODS])})(?:/iter\\d+)?",
    sft_model=_alternation(SFT_MODELS),
    generation=_alternation(config["generation"]),
    bench=_alternation(BENCHMARKS),
    iteration=r"\d+",
    tokenization=re.sub(r"\(\?P<\w+>", "(?:", TOKENIZATION_PATTERN),
    prompts=r"[a-z][a-z0-9_]*",
    pairs=r"preferences|[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*",


include: "workflow/rules/data.smk"
include: "workflow/rules/sft.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/reference.smk"
include: "workflow/rules/align.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/paper_figures.smk"


# Fail fast: when jobs are about to run (never in a dry run), `gsil preflight` checks in seconds what would fail
# hours later (Hub data of a benchmark while offline, the judge, the profile's GPUs, disk for the checkpoints) and
# the run stops before its first job with every problem listed. GSIL_SKIP_PREFLIGHT=1 skips it.
onstart:
    from gsil.preflight import run_in_workflow

    failure = run_in_workflow(workflow, config)
    if failure:
        raise WorkflowError(failure)


rule all:
    default_target: True
    input:
        **aggregate_outputs(),
        **rules.paper_figures.output,


# Per-stage targets: `snakemake --cores 2 <target>` runs the DAG up to that stage.
rule data:
    input:
        rules.prepare_data.output,


rule models:
    input:
        all_models(),


rule generations:
    input:
        all_generations(),


rule references:
    input:
        all_references(),


rule evaluations:
    input:
        all_evaluations(),


rule tables:
    input:
        **aggregate_outputs(),
        **rules.paper_figures.output,
