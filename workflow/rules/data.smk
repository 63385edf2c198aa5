# The inputs of every run: the base model as an ordinary HF checkpoint, and the prepared data sets.


rule prepare_model:
    output:
        model=directory("<results>/models/base"),
    params:
        flags=prepare_model_flags,
    log:
        "<logs>/prepare_model/base.log",
    shell:
        "gsil prepare-model {params.flags} --output {output.model} > {log} 2>&1"


rule prepare_data:
    output:
        **data_outputs(),
        manifest="<results>/data/manifest.json",
    params:
        flags=prepare_data_flags,
        out_dir=subpath(output.manifest, parent=True),
    log:
        "<logs>/prepare_data/data.log",
    shell:
        "gsil prepare-data {params.flags} --output {params.out_dir} > {log} 2>&1"
