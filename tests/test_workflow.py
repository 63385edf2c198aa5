"""The Snakemake DAG: dry runs list the expected jobs, lint is clean but for the one explained lint, and a changed
hyperparameter reruns exactly what depends on it (on a results tree made by a stand-in `gsil` in seconds)."""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import yaml

from gsil.aggregate.plan import build_methods, build_plan
from helpers import REPO, copy_workflow, job_counts, merged_config, snakemake

# `snakemake --lint` asks every rule for a conda env or container. The suite is one Python package installed from
# pyproject.toml (workflow/bootstrap.sh), used by every rule; per-rule envs would only duplicate that install.
ALLOWED_LINTS = {"Specify a conda environment or container for each rule."}


def expected_counts(config: dict) -> Counter:
    """The jobs a fresh run must have, derived from the config independently of the rule files."""
    methods = build_methods(config)
    plan = build_plan(config)
    selfplay = [m for m in methods if m.kind == "selfplay"]
    preference = [m for m in methods if m.kind == "preference"]
    sft = "sft" if config["sft"].get("train", True) else "base"

    def start(method, k):
        # round 0 starts from the SFT model of the method's training seed (sft, or sft-s<seed> for a repeat)
        if k:
            return f"{method.name}/iter{k - 1}"
        return sft if method.seed_of is None else f"sft-s{method.seed}"

    def tokenization(m):
        h = m.hyperparameters
        return (h["max_length"], h["max_prompt_length"], h.get("template", "chat"), h.get("precision", "bf16"))

    generations = {(start(m, k), m.prompts, m.generation) for m in selfplay for k in range(m.iterations)}
    references = {(start(m, k), m.prompts, m.generation, tokenization(m)) for m in selfplay for k in range(m.iterations)}
    references |= {(start(m, 0), "preferences", tokenization(m)) for m in preference}
    counts = Counter({
        "prepare_model": 1, "prepare_data": 1, "write_plan": 1, "aggregate_results": 1, "paper_figures": 1, "all": 1,
        "generate_responses": len(generations), "reference_logps": len(references),
        "align_selfplay": sum(m.iterations for m in selfplay), "align_preferences": len(preference),
        # one job per model for all of its benchmarks
        "evaluate_model": len(plan["models"]) if plan["benchmarks"] else 0,
    })
    if sft == "sft":
        counts["sft_train"] = len({start(m, 0) for m in methods} | {"sft"})
    return counts


@pytest.mark.parametrize("configs", [(), ("test.yaml",), ("paper.yaml",), ("study.yaml",), ("sweep.yaml",),
                                     ("bench-demo.yaml",), ("data-seed-1.yaml",), ("family.yaml",)],
                         ids=["demo", "test", "paper", "study", "sweep", "bench-demo", "data-seed-1", "family"])
def test_dry_run_lists_the_expected_jobs(configs, tmp_path):
    workdir = copy_workflow(tmp_path)
    args = ["-n", "--cores", "2"]
    for name in configs:
        args += ["--configfile", f"config/{name}"]
    counts = job_counts(snakemake(*args, cwd=workdir))
    expected = expected_counts(merged_config(*configs))
    assert counts == expected


def test_family_dry_run_shares_iteration_zero_files(tmp_path):
    """Round 0 of SPIN, every GSIL loss and every ablation (the demo with config/family.yaml): one generation file
    and one reference file."""
    counts = job_counts(snakemake("-n", "--cores", "2", "--configfile", "config/family.yaml",
                                  cwd=copy_workflow(tmp_path)))
    config = merged_config("family.yaml")
    selfplay = [m for m in build_methods(config) if m.kind == "selfplay"]
    later_rounds = sum(m.iterations - 1 for m in selfplay)
    assert counts["generate_responses"] == 1 + later_rounds
    assert counts["reference_logps"] == 1 + later_rounds + 1  # + DPO's preference reference
    assert counts["align_selfplay"] == sum(m.iterations for m in selfplay)
    assert counts["align_preferences"] == 1


def shell_commands(dry_run_output: str) -> dict[str, list[str]]:
    """The shell commands of a `-n -p` run by rule."""
    commands: dict[str, list[str]] = {}
    rule = None
    for line in dry_run_output.splitlines():
        match = re.match(r"^(?:local)?rule (\w+):", line)
        if match:
            rule = match.group(1)
        elif line.startswith("Shell command: ") and rule:
            commands.setdefault(rule, []).append(line.removeprefix("Shell command: "))
    return commands


# Rules launched by `launched` (accelerate when they get GPUs or CPU processes) and by `threaded`/`evaluated`.
LAUNCHED_RULES = ("sft_train", "align_selfplay", "align_preferences", "reference_logps")
INFERENCE_RULES = ("generate_responses", "evaluate_model")


def test_paper_dry_run_works_offline_under_the_gpu_profile(tmp_path):
    """Every GPU job runs on GPUs of its own (`gsil with-gpus`); training and reference scoring under accelerate
    with the align rules' config and a free port (several multi-process jobs share the node)."""
    text = snakemake("-n", "-p", "--configfile", "config/paper.yaml", "--workflow-profile",
                     "config/profiles/local-gpu", cwd=copy_workflow(tmp_path))
    commands = shell_commands(text)
    assert set(LAUNCHED_RULES[1:] + INFERENCE_RULES) <= set(commands)
    gpus = {"sft_train": 8, "align_selfplay": 8, "align_preferences": 8, "reference_logps": 1}
    for rule in LAUNCHED_RULES:
        for command in commands.get(rule, []):
            n = gpus[rule]
            assert (f'if [ "{n}" -gt 0 ]; then launch="gsil with-gpus --count {n} -- accelerate launch '
                    f'--num_processes {n} --main_process_port 0 --config_file config/accelerate/zero3.yaml -m gsil"'
                    in command), command
    for rule in INFERENCE_RULES:
        for command in commands[rule]:
            assert 'if [ "1" -gt 0 ]; then slot="gsil with-gpus --count 1 --"' in command, command
            assert "$slot gsil " in command and "accelerate" not in command
    assert all("--device cuda" in command for command in commands["evaluate_model"])


def test_rehearsal_profile_runs_training_and_reference_as_two_cpu_processes(tmp_path):
    text = snakemake("-n", "-p", "--workflow-profile", "config/profiles/rehearsal-cpu", cwd=copy_workflow(tmp_path))
    commands = shell_commands(text)
    assert set(LAUNCHED_RULES + INFERENCE_RULES) <= set(commands)
    for rule in LAUNCHED_RULES:
        for command in commands[rule]:
            assert 'if [ "0" -gt 0 ]' in command, command
            assert ('elif [ "2" -gt 1 ]; then launch="env ACCELERATE_USE_CPU=true accelerate launch --multi_gpu '
                    '--num_processes 2 --main_process_port 0 --config_file config/accelerate/cpu_ddp.yaml -m gsil"'
                    in command), command
    for rule in INFERENCE_RULES:
        for command in commands[rule]:
            assert 'if [ "0" -gt 0 ]' in command and "accelerate" not in command, command


def test_slurm_profile_parses(tmp_path):
    profile = yaml.safe_load((REPO / "config" / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    for rule in ("sft_train", "align_selfplay", "align_preferences", "generate_responses", "evaluate_model"):
        resources = profile["set-resources"][rule]
        assert resources["gpu"] >= 1 and resources["runtime"] > 0 and resources["mem_mb"] > 0
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        pytest.skip("snakemake-executor-plugin-slurm is not installed: the SLURM dry run needs it")
    snakemake("-n", "--configfile", "config/paper.yaml", "--workflow-profile", "config/profiles/slurm",
              cwd=copy_workflow(tmp_path))


@pytest.mark.parametrize("profile", ["local-gpu", "slurm"])
def test_reference_scoring_is_launched_like_the_policy(profile):
    """The reference scorer reads the engine (e.g. DeepSpeed) from its launch to use the policy's numerics."""
    resources = yaml.safe_load((REPO / "config" / "profiles" / profile / "config.yaml").read_text())["set-resources"]
    configs = {rule: resources[rule]["accelerate_config"] for rule in ("align_selfplay", "align_preferences",
                                                                       "reference_logps")}
    assert len(set(configs.values())) == 1, configs
    assert (REPO / configs["reference_logps"]).is_file()


def test_lint_is_clean_but_for_the_explained_lint():
    text = snakemake("--lint", check=False)
    titles = set(re.findall(r"^\s+\* (.+?):\s*$", text, flags=re.MULTILINE))
    assert titles, f"no lint output parsed:\n{text[-2000:]}"
    assert titles <= ALLOWED_LINTS, f"unexpected lints: {titles - ALLOWED_LINTS}"


# ------------------------------------------------------------------------------------------------ rerun scope

# A stand-in for the `gsil` CLI: creates each declared output (files with a line of content, model folders), so
# the whole DAG "runs" in seconds and the rerun logic can be checked on a real Snakemake results tree. With
# GSIL_FAKE_CALLS set it also records each call (arguments, launcher, devices); `with-gpus` is the real one.
FAKE_GSIL = textwrap.dedent('''\
    #!{python}
    import json, os, sys
    from pathlib import Path
    args = sys.argv[1:]
    stage = args[0]
    if os.environ.get("GSIL_FAKE_CALLS"):
        with open(os.environ["GSIL_FAKE_CALLS"], "a") as calls:
            calls.write(json.dumps({{"program": "gsil", "argv": args, "via": os.environ.get("GSIL_FAKE_VIA"),
                                     "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                                     "use_cpu": os.environ.get("ACCELERATE_USE_CPU")}}) + "\\n")
    if stage == "with-gpus":
        os.execv(sys.executable, [sys.executable, "-m", "gsil", *args])
    def value(flag):
        return args[args.index(flag) + 1] if flag in args else None
    if stage in ("prepare-model", "sft", "align"):
        Path(value("--output")).mkdir(parents=True, exist_ok=True)
        (Path(value("--output")) / "config.json").write_text(json.dumps(args))
    if stage in ("sft", "align"):
        Path(value("--metrics")).write_text(json.dumps({{"step": 1, "loss": 1.0}}) + "\\n")
    if stage == "prepare-data":
        out = Path(value("--output"))
        for name in {data_files!r}:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_text("{{}}\\n")
        (out / "manifest.json").write_text("{{}}\\n")
    if stage in ("generate", "reference-logps"):
        Path(value("--output")).write_text(json.dumps(args) + "\\n")
    if stage == "evaluate":
        skipped = json.loads(value("--skip-json"))
        for name in value("--benchmark").split(","):
            record = {{"metric": "acc", "value": 0.5, "scale": "fraction", "skipped": skipped.get(name)}}
            Path(value("--output-dir"), f"{{name}}.json").write_text(json.dumps(record))
    if stage == "paper-figures":
        for name in {paper_figures!r}:
            Path(value("--output-dir"), name).write_text("x")
    if stage == "aggregate":
        for name in {tables!r}:
            for ext in ("md", "csv"):
                Path(value("--output-tables"), f"{{name}}.{{ext}}").write_text("x\\n")
        for name in {figures!r}:
            Path(value("--output-figures"), f"{{name}}.png").write_text("x")
''')


# A stand-in for `accelerate`: records the launch, then runs the `-m gsil ...` part once, marked as launched.
FAKE_ACCELERATE = textwrap.dedent('''\
    #!{python}
    import json, os, sys
    args = sys.argv[1:]
    with open(os.environ["GSIL_FAKE_CALLS"], "a") as calls:
        calls.write(json.dumps({{"program": "accelerate", "argv": args,
                                 "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}}) + "\\n")
    command = args[args.index("-m") + 1:]
    os.execvpe(command[0], command, {{**os.environ, "GSIL_FAKE_VIA": "accelerate"}})
''')


@pytest.fixture
def fake_workflow(tmp_path):
    """A copy of the workflow files in tmp_path with the stand-in gsil first on PATH."""
    from gsil.aggregate import plan as plan_module
    from gsil.aggregate.report import FIGURE_NAMES, TABLE_NAMES
    from gsil.paper_figures.report import OUTPUT_NAMES as PAPER_FIGURE_NAMES

    copy_workflow(tmp_path)
    data_files = sorted(set().union(*(f.values() for f in plan_module.DATA_FILES.values())))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "gsil"
    fake.write_text(FAKE_GSIL.format(python=sys.executable, data_files=data_files, tables=list(TABLE_NAMES),
                                     paper_figures=list(PAPER_FIGURE_NAMES.values()),
                                     figures=list(FIGURE_NAMES)))
    fake.chmod(0o755)
    accelerate = bin_dir / "accelerate"
    accelerate.write_text(FAKE_ACCELERATE.format(python=sys.executable))
    accelerate.chmod(0o755)
    # The stand-in writes a few bytes per model: the preflight's disk estimate (for the real base model, GBs) and
    # this machine's free space must not decide these tests. The preflight has its own (tests/test_preflight.py).
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "GSIL_SKIP_PREFLIGHT": "1"}
    return tmp_path, env


def rules_to_run(text: str) -> Counter:
    if "Nothing to be done" in text:
        return Counter()
    return job_counts(text)


def test_second_run_does_nothing_and_one_changed_hyperparameter_reruns_only_its_jobs(fake_workflow):
    workdir, env = fake_workflow
    snakemake("--cores", "2", cwd=workdir, env=env)
    assert rules_to_run(snakemake("-n", "--cores", "2", cwd=workdir, env=env)) == Counter()

    # Change the learning rate of DPO only (a one-round method): its training, its evaluations and the tables
    # rerun; no generation, reference or other training job does.
    config_path = workdir / "config" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    dpo = next(m for m in config["methods"] if m["name"] == "dpo")
    dpo_settings = dict(dpo.get("hyperparameters") or {})
    dpo["hyperparameters"] = {**dpo_settings, "lr": 1.0e-5}
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    text = snakemake("-n", "--cores", "2", cwd=workdir, env=env)
    assert rules_to_run(text) == Counter({"align_preferences": 1, "evaluate_model": 1, "write_plan": 1,
                                          "aggregate_results": 1, "all": 1})
    assert "results/demo/models/dpo" in text

    # Change SPIN's beta: both of its rounds retrain (round 1 starts from round 0), so round 0's generations and
    # reference are recomputed only for round 1; the shared files of round 0 stay.
    spin = next(m for m in config["methods"] if m["name"] == "spin")
    spin["hyperparameters"] = {"beta": 0.2}
    dpo["hyperparameters"] = dpo_settings
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    counts = rules_to_run(snakemake("-n", "--cores", "2", cwd=workdir, env=env))
    assert counts["align_selfplay"] == spin["iterations"]
    assert counts["generate_responses"] == spin["iterations"] - 1
    assert counts["reference_logps"] == spin["iterations"] - 1
    assert "sft_train" not in counts and "align_preferences" not in counts

    # Checkpointing changes how a job survives a kill, not what it computes: it reaches the training commands and
    # reruns nothing.
    spin.pop("hyperparameters")
    config["checkpointing"] = {"every": 7, "save": "in-place"}
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert rules_to_run(snakemake("-n", "--cores", "2", cwd=workdir, env=env)) == Counter()
    text = snakemake("-n", "-p", "--cores", "2", "--forcerun", "align_selfplay", cwd=workdir, env=env)
    assert "--checkpoint-every 7 --checkpoint-save in-place" in text

    # A benchmark's protocol reaches every model's evaluation job (one job per model scores all its benchmarks;
    # the evaluator's result cache then rescores only that benchmark, tests/test_evaluation_cache.py).
    bench = config["benchmarks"][-1]
    bench["protocol"] = {**(bench.get("protocol") or {}), "limit": 3}
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    n_models = len(build_plan(config)["models"])
    assert rules_to_run(snakemake("-n", "--cores", "2", cwd=workdir, env=env)) == Counter(
        {"evaluate_model": n_models, "aggregate_results": 1, "all": 1})


# ------------------------------------------------------------------------------------------------ launchers


def run_launch_targets(workdir: Path, env: dict, profile: str) -> list[dict]:
    """Run (with the stand-ins) one job of every heavy rule under `profile`, on a pretend 8-GPU node; the calls."""
    config = merged_config()
    selfplay = next(m for m in build_methods(config) if m.kind == "selfplay")
    preference = next(m for m in build_methods(config) if m.kind == "preference")
    bench = build_plan(config)["benchmarks"][0]["name"]
    run = f"results/{config['run']}"
    targets = [f"{run}/eval/{selfplay.name}/iter0/{bench}.json", f"{run}/models/{preference.name}"]
    calls = workdir / "calls.jsonl"
    env = {**env, "GSIL_FAKE_CALLS": str(calls), "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7",
           "GSIL_GPU_LOCK_DIR": str(workdir / "gpu-locks")}
    snakemake("--cores", "2", "--workflow-profile", f"config/profiles/{profile}", *targets, cwd=workdir, env=env)
    return [json.loads(line) for line in calls.read_text().splitlines()]


HEAVY_STAGES = {"sft", "align", "reference-logps", "generate", "evaluate"}


def test_gpu_profile_jobs_run_on_their_own_gpus_and_launch_with_a_free_port(fake_workflow):
    workdir, env = fake_workflow
    calls = run_launch_targets(workdir, env, "local-gpu")
    stages = [c for c in calls if c["program"] == "gsil" and c["argv"][0] in HEAVY_STAGES]
    assert {c["argv"][0] for c in stages} == HEAVY_STAGES
    gpus = {"sft": 8, "align": 8, "reference-logps": 1, "generate": 1, "evaluate": 1}
    for call in stages:
        stage = call["argv"][0]
        # CUDA_VISIBLE_DEVICES set by `gsil with-gpus` to the job's own devices among the node's eight.
        devices = call["cuda"].split(",")
        assert len(devices) == gpus[stage] and set(devices) <= set("01234567"), call
        assert call["via"] == ("accelerate" if stage in ("sft", "align", "reference-logps") else None), call
    assert all("--device" in c["argv"] and "cuda" in c["argv"] for c in stages if c["argv"][0] == "evaluate")
    launches = [c["argv"] for c in calls if c["program"] == "accelerate"]
    assert len(launches) == sum(c["via"] == "accelerate" for c in stages)
    for argv in launches:
        n = str(gpus[argv[argv.index("-m") + 2]])
        assert argv[:argv.index("-m")] == ["launch", "--num_processes", n, "--main_process_port", "0",
                                           "--config_file", "config/accelerate/zero3.yaml"], argv
    with_gpus = [c["argv"] for c in calls if c["argv"][0] == "with-gpus"]
    assert len(with_gpus) == len(stages)


def test_rehearsal_profile_launches_training_and_reference_as_two_cpu_processes(fake_workflow):
    workdir, env = fake_workflow
    calls = run_launch_targets(workdir, env, "rehearsal-cpu")
    assert not [c for c in calls if c["argv"][0] == "with-gpus"]
    stages = [c for c in calls if c["program"] == "gsil" and c["argv"][0] in HEAVY_STAGES]
    assert {c["argv"][0] for c in stages} == HEAVY_STAGES
    for call in stages:
        launched = call["argv"][0] in ("sft", "align", "reference-logps")
        assert call["via"] == ("accelerate" if launched else None), call
        assert call["use_cpu"] == ("true" if launched else None), call
    launches = [c["argv"] for c in calls if c["program"] == "accelerate"]
    assert launches and len(launches) == sum(c["via"] == "accelerate" for c in stages)
    for argv in launches:
        assert argv[:argv.index("-m")] == ["launch", "--multi_gpu", "--num_processes", "2", "--main_process_port",
                                           "0", "--config_file", "config/accelerate/cpu_ddp.yaml"], argv


def test_overlays_rerun_the_demo_core_comparison_unchanged():
    """config/data-seed-1.yaml changes only the data seed (and the run folder), or the check would compare different
    trainings; config/family.yaml adds methods to the demo's run and keeps every core method as the demo trains it."""
    demo, other = merged_config(), merged_config("data-seed-1.yaml")
    assert [m["name"] for m in other["methods"]] == ["dpo", "spin", "gsil-logistic", "gsil-logistic-g0"]
    assert other["data"]["seed"] != demo["data"]["seed"]
    family = merged_config("family.yaml")
    assert family["run"] == demo["run"]
    family_methods = {m["name"]: m for m in family["methods"]}
    assert all(family_methods[m["name"]] == m for m in demo["methods"])
    assert {m["loss"] for m in family["methods"]} == {"dpo", "spin", "logistic", "hinge", "brier", "exponential",
                                                    "kliep", "lsif"}
    assert family["ablations"] and {b["name"]: {k: v for k, v in b.items() if k != "models"}
                                    for b in family["benchmarks"]} == \
        {b["name"]: {k: v for k, v in b.items() if k != "models"} for b in demo["benchmarks"]}
    unchanged = set(demo) - {"run", "data"}
    assert {k: other[k] for k in unchanged} == {k: demo[k] for k in unchanged}
    assert {k: v for k, v in other["data"].items() if k != "seed"} == {k: v for k, v in demo["data"].items()
                                                                       if k != "seed"}


def test_an_attention_setting_reaches_training_and_its_reference_and_names_the_reference_file(tmp_path):
    """`align_defaults.attention` (e.g. eager, where a GPU kernel moves the reference's values) goes to align and to
    the reference scoring of the same pairs, and into the reference file's name; the default adds nothing."""
    workdir = copy_workflow(tmp_path)
    (workdir / "eager.yaml").write_text("align_defaults:\n  attention: eager\n")
    commands = shell_commands(snakemake("-n", "-p", "--configfile", "eager.yaml", cwd=workdir))
    for rule in ("reference_logps", "align_selfplay", "align_preferences"):
        assert commands[rule] and all("--attention eager" in c for c in commands[rule]), rule
    assert all(re.search(r"\.L\d+-P\d+-chat-\w+-eager\.jsonl", c) for c in commands["reference_logps"])
    default = shell_commands(snakemake("-n", "-p", cwd=workdir))
    assert not any("--attention" in c for rule in ("reference_logps", "align_selfplay") for c in default[rule])
    assert all(re.search(r"\.L\d+-P\d+-chat-(auto|bf16|fp32)\.jsonl", c) for c in default["reference_logps"])
