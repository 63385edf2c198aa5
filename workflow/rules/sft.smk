# Supervised fine-tuning: base model + demonstrations -> models/sft (skipped when sft.train is false).


rule sft_train:
    input:
        model=model_dir("base"),
        data="<results>/data/sft.jsonl",
    output:
        model=directory(model_dir("sft")),
        metrics=metrics_file("sft"),
    params:
        flags=sft_flags,
    threads: 2
    resources:
        gpu=0,
        accelerate_config="config/accelerate/multi_gpu.yaml",
    log:
        "<logs>/sft_train/sft.log",
    benchmark:
        benchmark_file("sft_train", "sft")
    shell:
        launched(
            "sft --model {input.model} --data {input.data} --output {output.model} "
            "--metrics {output.metrics} --threads {threads} {params.flags} > {log} 2>&1"
        )
