"""The names of the tables and figures `gsil aggregate` writes: results/<run>/tables/<name>.md|csv and
results/<run>/figures/<name>.png. The workflow declares exactly these as the aggregate rule's outputs (common.smk
imports them from here, a module without heavy imports, so parsing the Snakefile stays fast)."""

TABLE_NAMES = ("main", "main_sources", "comparisons", "claims", "seeds", "scale", "gsil_vs_dpo", "ablation_beta",
               "ablation_gamma", "iterations", "compute")
FIGURE_NAMES = ("overview", "gsil_vs_dpo", "ablation", "rewards", "iterations")
