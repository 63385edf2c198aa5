"""The config schema: it agrees with the loss registry, accepts every shipped config and rejects bad ones by name."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from gsil.aggregate.plan import PlanError, build_plan

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def load(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / name).read_text())


def merged(*names: str) -> dict:
    """Configs merged the way Snakemake merges --configfile over configfile: (mappings key by key, lists replaced)."""

    def update(base: dict, over: dict) -> dict:
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                update(base[key], value)
            else:
                base[key] = copy.deepcopy(value)
        return base

    out: dict = {}
    for name in names:
        update(out, load(name))
    return out


def validate(config: dict) -> None:
    jsonschema.Draft202012Validator(SCHEMA).validate(config)


def test_loss_enum_equals_the_registry():
    from gsil.losses import LOSSES

    enum = SCHEMA["$defs"]["loss_name"]["enum"]
    assert sorted(enum) == sorted(LOSSES)


@pytest.mark.parametrize("names", [("config.yaml",), ("config.yaml", "paper.yaml"), ("config.yaml", "test.yaml")])
def test_shipped_configs_validate_and_plan(names):
    config = merged(*names)
    validate(config)
    plan = build_plan(config)
    assert plan["models"] and plan["benchmarks"]


def test_demo_config_trains_the_core_comparison_and_the_family_overlay_every_method_of_the_paper():
    plan = build_plan(merged("config.yaml"))
    assert {m["loss"] for m in plan["methods"]} == {"dpo", "spin", "logistic"}
    family = build_plan(merged("config.yaml", "family.yaml"))
    assert {m["loss"] for m in family["methods"]} == {"dpo", "spin", "logistic", "hinge", "brier", "exponential",
                                                      "kliep", "lsif"}
    assert any(m["ablation_axis"] == "beta" for m in family["methods"])
    multi = {m["name"] for m in plan["methods"] if m["iterations"] >= 2}
    assert {"spin", "gsil-logistic"} <= multi
    # γ = 0 is a core method of its own (two rounds, the claims table compares it with γ = 2)
    assert {"gsil-logistic", "gsil-logistic-g0"} <= multi
    assert {m["name"]: m["hyperparameters"].get("gamma") for m in plan["methods"]}["gsil-logistic-g0"] == 0
    assert {b["name"] for b in plan["benchmarks"]} == {"arith", "arith_mc", "humaneval"}
    humaneval = next(b for b in plan["benchmarks"] if b["name"] == "humaneval")
    assert humaneval["models"] == ["sft"]


def test_paper_config_benchmarks_and_judge_switch():
    config = merged("config.yaml", "paper.yaml")
    names = [b["name"] for b in build_plan(config)["benchmarks"]]
    assert names == ["arc_challenge", "truthfulqa_mc2", "winogrande", "gsm8k", "hellaswag", "mmlu", "humaneval"]
    shots = {b["name"]: b["protocol"].get("num_fewshot") for b in config["benchmarks"]}
    assert shots["arc_challenge"] == 25 and shots["hellaswag"] == 10 and shots["truthfulqa_mc2"] == 0
    config["judge"]["base_url"] = "https://judge.example/v1"
    assert "mtbench" in [b["name"] for b in build_plan(config)["benchmarks"]]


def _mapping_keys(tree: dict, prefix: tuple = ()) -> set[tuple]:
    keys = set()
    for key, value in tree.items():
        keys.add(prefix + (key,))
        if isinstance(value, dict):
            keys |= _mapping_keys(value, prefix + (key,))
    return keys


def test_paper_overlay_sets_every_key_the_demo_sets():
    """Snakemake merges paper.yaml over config.yaml, so a demo-only key would leak into the paper run. Sections that
    only the selected source/profile reads (base_model.gguf, data.demo) are exempt."""
    exempt = {("base_model", "gguf"), ("data", "demo")}
    demo, paper = _mapping_keys(load("config.yaml")), _mapping_keys(load("paper.yaml"))
    leaks = {k for k in demo - paper if not any(k[: len(e)] == e for e in exempt)}
    assert not leaks, f"keys of config.yaml not set in paper.yaml: {sorted(leaks)}"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"align_defaults": {"optimizer": "adam"}}, "optimizer"),
        ({"methods": [{"name": "spin", "loss": "sigmoid"}]}, "sigmoid"),
        ({"methods": [{"name": "spin", "loss": "spin", "hyperparamters": {}}]}, "hyperparamters"),
        ({"data": {"profile": "demo", "demo": {"sft_size": 0}}}, "sft_size"),
    ],
)
def test_schema_rejects_bad_values_naming_the_key(change, message):
    config = merged("config.yaml")
    config.update(change)
    with pytest.raises(jsonschema.ValidationError) as info:
        validate(config)
    error = info.value
    assert message in str(error.message) + "/".join(map(str, error.absolute_path))


def test_plan_rejects_inconsistent_configs():
    config = merged("config.yaml", "paper.yaml")
    config["sft"]["train"] = True  # the paper data profile has no SFT demonstrations
    with pytest.raises(PlanError, match="sft.train"):
        build_plan(config)
    config = merged("config.yaml")
    config["methods"][1]["prompts"] = "spin_selfplay"
    with pytest.raises(PlanError, match="spin_selfplay"):
        build_plan(config)


def test_snakemake_refuses_a_bad_config_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("align_defaults:\n  optimizer: adam\n")
    out = subprocess.run([str(SNAKEMAKE), "-n", "--configfile", str(bad)], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "optimizer" in text and "adam" in text
    assert "Job stats" not in text

    unknown_base = tmp_path / "bad_ablation.yaml"
    unknown_base.write_text("ablations:\n  - base: gsil-nope\n    beta: [0.2]\n")
    out = subprocess.run([str(SNAKEMAKE), "-n", "--configfile", str(unknown_base)], cwd=REPO, capture_output=True,
                         text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert out.returncode != 0
    assert "ablations[0].base" in out.stdout + out.stderr


@pytest.mark.parametrize("section", ["sft", "align_defaults"])
def test_training_precision_takes_auto_and_names_a_bad_value(section):
    config = merged("config.yaml")
    hyperparameters = config["sft"]["hyperparameters"] if section == "sft" else config["align_defaults"]
    assert hyperparameters["precision"] == "auto"  # the demo: bf16 only where the CPU has it natively
    for value in ("auto", "bf16", "fp32"):
        hyperparameters["precision"] = value
        validate(config)
    hyperparameters["precision"] = "fp16"
    with pytest.raises(jsonschema.ValidationError, match="fp16"):
        validate(config)
    paper = merged("config.yaml", "paper.yaml")
    assert paper["sft"]["hyperparameters"]["precision"] == paper["align_defaults"]["precision"] == "bf16"


def test_reference_file_tag_carries_precision_auto():
    """common.smk's TOKENIZATION_PATTERN reads a reference file's tag back, and (as a non-capturing copy, Snakefile)
    constrains the `tokenization` wildcard: a configured `auto` must pass both."""
    import ast
    import re

    text = (REPO / "workflow" / "rules" / "common.smk").read_text()
    pattern = ast.literal_eval(re.search(r"^TOKENIZATION_PATTERN = (r\".*\")$", text, re.MULTILINE).group(1))
    match = re.fullmatch(pattern, "L256-P128-chat-auto")
    assert match and match.groupdict() == {"max_length": "256", "max_prompt_length": "128", "template": "chat",
                                           "precision": "auto", "attention": None}
    assert re.fullmatch(pattern, "L256-P128-chat-bf16-eager").group("attention") == "eager"
    wildcard = re.sub(r"\(\?P<\w+>", "(?:", pattern)
    assert all(re.fullmatch(wildcard, f"L256-P128-spin-{p}") for p in ("auto", "bf16", "fp32"))
    assert re.fullmatch(wildcard, "L256-P128-spin-bf16-sdpa")
    assert not re.fullmatch(wildcard, "L256-P128-chat-fp16")
    assert not re.fullmatch(wildcard, "L256-P128-chat-bf16-auto")  # auto is never spelled out
