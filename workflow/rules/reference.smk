# Frozen reference log-probs, once per (reference model, pair set, tokenization caps), never inside training.


rule reference_logps:
    input:
        model=model_dir("{generator}"),
        pairs=pairs_input,
    output:
        reference="<results>/reference/{generator}/{pairs}.{tokenization}.jsonl",
    params:
        kind=pairs_kind,
        flags=reference_flags,
    threads: 2
    resources:
        gpu=0,
    log:
        "<logs>/reference_logps/{generator}/{pairs}.{tokenization}.log",
    benchmark:
        benchmark_file("reference_logps", "{generator}/{pairs}.{tokenization}")
    shell:
        threaded(
            "reference-logps --model {input.model} --pairs {input.pairs} --kind {params.kind} "
            "--output {output.reference} --threads {threads} {params.flags} > {log} 2>&1"
        )
