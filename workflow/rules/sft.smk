# Supervised fine-tuning: base model + demonstrations -> models/sft (skipped when sft.train is false), and
# models/sft-s<seed> for every further training seed of the config's `seeds`.


rule sft_train:
    input:
        model=model_dir("base"),
        data="<results>/data/sft.jsonl",
    output:
        model=directory(model_dir("{sft_model}")),
        metrics=metrics_file("{sft_model}"),
    params:
        flags=sft_flags,
    threads: 2
    priority: MODEL_CHAIN_PRIORITY
    resources:
        gpu=0,
        processes=0,
        accelerate_config="config/accelerate/multi_gpu.yaml",
        # resources, not params: how often a job checkpoints changes no output, so a change reruns nothing
        checkpoint_every=CHECKPOINT_EVERY,
        checkpoint_save=CHECKPOINT_SAVE,
        tracking=TRACKING,
        tracking_dir=TRACKING_DIR,
    log:
        "<logs>/sft_train/{sft_model}.log",
    benchmark:
        benchmark_file("sft_train", "{sft_model}")
    shell:
        launched(
            "sft --model {input.model} --data {input.data} --output {output.model} "
            "--metrics {output.metrics} --threads {threads} "
            "--checkpoint-every {resources.checkpoint_every} --checkpoint-save {resources.checkpoint_save} "
            "--tracking {resources.tracking} --tracking-dir {resources.tracking_dir}/{wildcards.sft_model} "
            "--tracking-run {wildcards.sft_model} {params.flags} > {log} 2>&1"
        )
