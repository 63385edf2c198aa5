# Self-play generation: responses of a model to the self-play prompts, one file per (model, generation setting).


rule generate_responses:
    input:
        model=model_dir("{generator}"),
        prompts=prompts_input,
    output:
        generations=generation_file("{generator}", "{prompts}", "{generation}"),
    params:
        flags=generate_flags,
    threads: 2
    priority: MODEL_CHAIN_PRIORITY
    resources:
        gpu=0,
    log:
        "<logs>/generate_responses/{generator}/{prompts}.{generation}.log",
    benchmark:
        benchmark_file("generate_responses", "{generator}/{prompts}.{generation}")
    shell:
        threaded(
            "generate --model {input.model} --prompts {input.prompts} --output {output.generations} "
            "{params.flags} > {log} 2>&1"
        )
