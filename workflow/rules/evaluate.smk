# Every model on every enabled benchmark: one JSON per (model, benchmark) at a fixed path.


rule evaluate_model:
    input:
        model=model_dir("{model}"),
        data=benchmark_data,
        manifest="<results>/data/manifest.json",
    output:
        result=eval_file("{model}", "{bench}"),
    params:
        protocol=benchmark_protocol,
        data_dir=subpath(input.manifest, parent=True),
    threads: 1
    resources:
        gpu=0,
    log:
        "<logs>/evaluate_model/{model}/{bench}.log",
    benchmark:
        benchmark_file("evaluate_model", "{model}/{bench}")
    shell:
        evaluated(
            "evaluate --model {input.model} --benchmark {wildcards.bench} --data-dir {params.data_dir} "
            "--protocol-json {params.protocol:q} --output {output.result}"
        )
