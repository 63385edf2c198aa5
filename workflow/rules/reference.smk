# Frozen reference log-probs, once per (reference model, pair set, tokenization caps), never inside training; data
# parallel over the job's processes (`launched`: one per GPU, or `processes` on the CPU).


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
    priority: MODEL_CHAIN_PRIORITY
    resources:
        gpu=0,
        processes=0,
        # Launched like the policy's training (the profiles give it the align rules' config): the scorer reads the
        # engine from the launch to use the policy's numerics, without building it (a frozen model needs no sharding).
        accelerate_config="config/accelerate/multi_gpu.yaml",
    log:
        "<logs>/reference_logps/{generator}/{pairs}.{tokenization}.log",
    benchmark:
        benchmark_file("reference_logps", "{generator}/{pairs}.{tokenization}")
    shell:
        launched(
            "reference-logps --model {input.model} --pairs {input.pairs} --kind {params.kind} "
            "--output {output.reference} --threads {threads} {params.flags} > {log} 2>&1"
        )
