# Frozen reference log-probs, once per (reference model, pair set, tokenization caps), never inside training.


rule reference_logps:
    input:
        model=model_dir("{generator}"),
        pairs=pairs_input,
    output:
        reference="<results>/reference/{generator}/{pairs}.L{max_length}-P{max_prompt_length}.jsonl",
    params:
        kind=pairs_kind,
        flags=reference_flags,
    threads: 2
    resources:
        gpu=0,
    log:
        "<logs>/reference_logps/{generator}/{pairs}.L{max_length}-P{max_prompt_length}.log",
    benchmark:
        "<benchmarks>/reference_logps/{generator}/{pairs}.L{max_length}-P{max_prompt_length}.tsv"
    shell:
        threaded(
            "reference-logps --model {input.model} --pairs {input.pairs} --kind {params.kind} "
            "--output {output.reference} {params.flags} > {log} 2>&1"
        )
