"""Where the suite's own lm-eval task templates (workflow/tasks) are.

In a checkout or an editable install they sit beside the package (workflow/gsil -> workflow/tasks). A regular
`pip install .` copies only the package into site-packages, so the templates are then looked for in the working
directory's workflow/tasks: Snakemake runs every job from the repository root.
"""

from __future__ import annotations

from pathlib import Path

CHECKOUT_TASKS_DIR = Path(__file__).resolve().parents[2] / "tasks"


def suite_tasks_dir() -> Path:
    """The task template folder: beside the package when it is there, else ./workflow/tasks when that is there, else
    the checkout path (whose absence the caller reports)."""
    if CHECKOUT_TASKS_DIR.is_dir():
        return CHECKOUT_TASKS_DIR
    in_working_dir = Path.cwd() / "workflow" / "tasks"
    return in_working_dir if in_working_dir.is_dir() else CHECKOUT_TASKS_DIR
