# Tables and figures from the result files only. The run plan (which models exist, what they are called) is written
# to plan.json, so the aggregate never reads the Snakemake config itself.


rule write_plan:
    output:
        plan="<results>/plan.json",
    params:
        plan=run_plan_json,
    log:
        "<logs>/write_plan/plan.log",
    shell:
        "printf '%s\\n' {params.plan:q} > {output.plan} 2> {log}"


rule aggregate_results:
    input:
        plan=rules.write_plan.output.plan,
        evaluations=all_evaluations(),
        metrics=[metrics_file(m) for m in ALL_MODELS if m != "base"],
        reported=config["aggregate"]["reported_numbers"],
        # Benchmark files are outputs of their jobs, so the compute table covers exactly this run's jobs.
        costs=all_benchmark_files(),
    output:
        **aggregate_outputs(),
    params:
        run_dir=subpath(input.plan, parent=True),
        tables_dir=subpath(output.table_main_md, parent=True),
        figures_dir=subpath(output.figure_rewards, parent=True),
    log:
        "<logs>/aggregate_results/aggregate.log",
    shell:
        "gsil aggregate --run-dir {params.run_dir} --config-json {input.plan} --reported {input.reported} "
        "--output-tables {params.tables_dir} --output-figures {params.figures_dir} --benchmark-files {input.costs} "
        "> {log} 2>&1"
