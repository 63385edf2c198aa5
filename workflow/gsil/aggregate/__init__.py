"""Tables and figures of a run, computed from its result files only (eval JSONs, metrics.jsonl, benchmark TSVs).

`plan` is also imported by the Snakefile (no heavy imports here: the DAG is built with it).
"""
