# Every model on every enabled benchmark: one job and one process per model (its weights load once), one result
# JSON per benchmark at a fixed path. A benchmark whose `models` patterns leave the model out gets a result saying
# so. The evaluator caches each result by what it depends on (gsil.evaluation.cache), so a job that reruns because
# one benchmark changed, or that failed half way, scores again only what is missing or changed.

if BENCHMARKS:

    rule evaluate_model:
        input:
            model=model_dir("{model}"),
            data=evaluation_data,
            manifest="<results>/data/manifest.json",
        output:
            **evaluation_outputs(),
        params:
            benchmarks=",".join(BENCHMARKS),
            protocols=benchmark_protocols,
            unselected=unselected_benchmarks,
            data_dir=subpath(input.manifest, parent=True),
            out_dir=lambda wildcards, output: os.path.dirname(output[0]),
            cache_dir=evaluation_cache_dir,
        threads: 1
        resources:
            gpu=0,
        log:
            "<logs>/evaluate_model/{model}.log",
        benchmark:
            benchmark_file("evaluate_model", "{model}")
        shell:
            evaluated(
                "evaluate --model {input.model} --benchmark {params.benchmarks} --data-dir {params.data_dir} "
                "--protocols-json {params.protocols:q} --skip-json {params.unselected:q} "
                "--output-dir {params.out_dir} --cache-dir {params.cache_dir}"
            )
