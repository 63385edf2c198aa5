# Tables and figures from the result files only. The run plan (which models exist, what they are called) is written
# to plan.json, so the aggregate never reads the Snakemake config itself.
#
# Snakemake's report (`snakemake --report results/<run>/report.html`, workflow/report/workflow.rst) shows every
# table and figure of rule aggregate_results with the caption in workflow/report/captions/. Its HTML reporter shows
# images and HTML pages in the page but offers any other file only as a download, so each table is in the report
# twice: tables/<name>.html (its Markdown rendered by workflow/report/tables_html.py, shown as a table) and
# tables/<name>.csv (raw numbers and detail columns, a download). The .md files stay out of the report (the .html is
# the same text).

import os
import shlex
import sys


rule write_plan:
    output:
        plan="<results>/plan.json",
    params:
        plan=run_plan_json,
    log:
        "<logs>/write_plan/plan.log",
    shell:
        "printf '%s\\n' {params.plan:q} > {output.plan} 2> {log}"


# Report categories (the report lists them sorted by name, hence the numbers) for each table and figure name; a name
# not listed here (a table added later) goes to "7 Other results" and gets captions/<kind>/_default.rst until it
# has a caption of its own (tests/test_report.py checks that every declared one has).
REPORT_CATEGORIES = {
    "main": "1 Main results",
    "main_sources": "1 Main results",
    "seeds": "1 Main results",
    "scale": "6 Compute",
    "overview": "1 Main results",
    "claims": "2 Claims and comparisons",
    "comparisons": "2 Claims and comparisons",
    "gsil_vs_dpo": "3 GSIL vs DPO",
    "ablation_beta": "4 Ablations",
    "ablation_gamma": "4 Ablations",
    "ablation": "4 Ablations",
    "iterations": "5 Self-play rounds",
    "rewards": "5 Self-play rounds",
    "compute": "6 Compute",
}
REPORT_CAPTIONS = "../report/captions"  # relative to this file, as report(caption=...) takes it
_CAPTIONS_DIR = os.path.join(workflow.current_basedir.get_path_or_uri(secret_free=True), REPORT_CAPTIONS)
# The table pages are rendered by the interpreter running Snakemake (the suite's environment, where gsil and
# markdown-it-py are installed), not by whatever `python` the job's PATH finds first.
TABLES_HTML = f"{shlex.quote(sys.executable)} workflow/report/tables_html.py"
MODEL_CARD = "gsil model-card"

# The outputs of rule aggregate_results: aggregate_outputs() (same keys and paths) with the CSV tables and the
# figures marked for the report, plus table_<name>_html, the HTML page of each declared table (the .md stays out of
# the report: the page shows the same text). Plain loops, not functions: rule files hold rules (Snakemake's lint).
REPORT_TABLES = [
    key[len("table_") : -len("_md")] for key in aggregate_outputs() if key.startswith("table_") and key.endswith("_md")
]
AGGREGATE_REPORT_OUTPUTS = {}
for _key, _path in list(aggregate_outputs().items()) + [
    (f"table_{name}_html", f"<results>/tables/{name}.html") for name in REPORT_TABLES
]:
    _kind, _, _name = _key.partition("_")
    _kind, _name, _ext = ("figures", _name, "png") if _kind == "figure" else ("tables", *_name.rsplit("_", 1))
    if _ext == "md":
        AGGREGATE_REPORT_OUTPUTS[_key] = _path
        continue
    _caption = f"{REPORT_CAPTIONS}/{_kind}/{_name}.rst"
    if not os.path.exists(os.path.join(_CAPTIONS_DIR, _kind, f"{_name}.rst")):
        _caption = f"{REPORT_CAPTIONS}/{_kind}/_default.rst"
    AGGREGATE_REPORT_OUTPUTS[_key] = report(
        _path,
        caption=_caption,
        category=REPORT_CATEGORIES.get(_name, "7 Other results"),
        subcategory={"png": "Figures", "csv": "Tables (CSV download)", "html": "Tables"}[_ext],
    )


rule aggregate_results:
    input:
        plan=rules.write_plan.output.plan,
        evaluations=all_evaluations(),
        metrics=[metrics_file(m) for m in ALL_MODELS if m != "base"],
        # tables/scale.md reads each trained model's training_config.json
        models=[model_dir(m) for m in ALL_MODELS if m != "base"],
        reported=config["aggregate"]["reported_numbers"],
        # Benchmark files are outputs of their jobs, so the compute table covers exactly this run's jobs.
        costs=all_benchmark_files(),
    output:
        **AGGREGATE_REPORT_OUTPUTS,
    params:
        run_dir=subpath(input.plan, parent=True),
        tables_dir=subpath(output.table_main_md, parent=True),
        figures_dir=subpath(output.figure_rewards, parent=True),
        table_names=REPORT_TABLES,
    log:
        "<logs>/aggregate_results/aggregate.log",
    shell:
        "gsil aggregate --run-dir {params.run_dir} --config-json {input.plan} --reported {input.reported} "
        "--output-tables {params.tables_dir} --output-figures {params.figures_dir} --benchmark-files {input.costs} "
        f"> {{log}} 2>&1 && {TABLES_HTML} --tables-dir {{params.tables_dir}} --names {{params.table_names}} "
        ">> {log} 2>&1"
        # every score as a TensorBoard scalar beside the training curves (a copy; the tables are the results)
        + (
            " && gsil track-scores --eval-dir {params.run_dir}/eval --tracking-dir {params.run_dir}/tracking/eval "
            ">> {log} 2>&1"
            if "tensorboard" in config.get("tracking", ["tensorboard"])
            else ""
        )


# Model cards with scores, for publishing (`snakemake --cores 2 model_cards`): results/<run>/cards/<model>/README.md,
# the card gsil sft/align wrote into the model folder plus the model's scores (gsil.modelcard). Written outside the
# model folder, which is a finished training output: changing it would make Snakemake rerun everything downstream.
# To push a model, copy its folder and put its card in as README.md.
rule model_card:
    input:
        model=model_dir("{model}"),
        evaluations=lambda wildcards: [eval_file(m, b) for m, b in evaluated_pairs() if m == wildcards.model],
    output:
        card="<results>/cards/{model}/README.md",
    log:
        "<logs>/model_card/{model}.log",
    shell:
        f"{MODEL_CARD} --model {{input.model}} --output {{output.card}} > {{log}} 2>&1"


rule model_cards:
    input:
        [f"<results>/cards/{m}/README.md" for m in ALL_MODELS if m != "base"],
