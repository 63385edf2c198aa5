# Pairwise training: one rule for the self-play rounds (SPIN, every GSIL loss) and one for preference methods (DPO).
# The loss is looked up by name inside `gsil align`; nothing here branches on it.


rule align_selfplay:
    input:
        unpack(align_selfplay_inputs),
    output:
        model=directory(model_dir("{selfplay_method}/iter{iteration}")),
        metrics=metrics_file("{selfplay_method}/iter{iteration}"),
    params:
        flags=align_flags,
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
        "<logs>/align_selfplay/{selfplay_method}/iter{iteration}.log",
    benchmark:
        benchmark_file("align_selfplay", "{selfplay_method}/iter{iteration}")
    shell:
        launched(
            "align --model {input.model} --pairs {input.pairs} --kind selfplay "
            "--reference {input.reference} --output {output.model} --metrics {output.metrics} "
            "--threads {threads} "
            "--checkpoint-every {resources.checkpoint_every} --checkpoint-save {resources.checkpoint_save} "
            "--tracking {resources.tracking} "
            "--tracking-dir {resources.tracking_dir}/{wildcards.selfplay_method}/iter{wildcards.iteration} "
            "--tracking-run {wildcards.selfplay_method}/iter{wildcards.iteration} {params.flags} > {log} 2>&1"
        )


rule align_preferences:
    input:
        unpack(align_preference_inputs),
    output:
        model=directory(model_dir("{preference_method}")),
        metrics=metrics_file("{preference_method}"),
    params:
        flags=align_flags,
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
        "<logs>/align_preferences/{preference_method}.log",
    benchmark:
        benchmark_file("align_preferences", "{preference_method}")
    shell:
        launched(
            "align --model {input.model} --pairs {input.pairs} --kind preference "
            "--reference {input.reference} --output {output.model} --metrics {output.metrics} "
            "--threads {threads} "
            "--checkpoint-every {resources.checkpoint_every} --checkpoint-save {resources.checkpoint_save} "
            "--tracking {resources.tracking} --tracking-dir {resources.tracking_dir}/{wildcards.preference_method} "
            "--tracking-run {wildcards.preference_method} {params.flags} > {log} 2>&1"
        )
