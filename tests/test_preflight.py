"""Fail-fast checks (gsil.preflight, `gsil preflight`, the Snakefile's onstart): each check with fakes, the CLI on the
shipped configs, and one real workflow run that stops before its first job."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from gsil import cli, preflight
from gsil.preflight import HubNeed

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def merged(*names: str, extra: dict | None = None) -> dict:
    """config/config.yaml and overlays merged and defaulted as the Snakefile does (update_config, validate)."""
    from snakemake.utils import update_config, validate

    config: dict = {}
    for name in ("config.yaml", *names):
        update_config(config, yaml.safe_load((REPO / "config" / name).read_text()))
    if extra:
        update_config(config, extra)
    validate(config, schema=str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    return config


ARC = {"name": "arc_challenge", "label": "ARC", "protocol": {"limit": 2}}


# ------------------------------------------------------------------------------------------------ Hub data


def test_offline_stock_task_not_cached_is_a_problem_naming_benchmark_and_switch():
    config = merged("test.yaml", extra={"benchmarks": [ARC]})
    protocols, problems = preflight.effective_protocols(config)
    assert problems == []
    needs, problems = preflight.hub_needs(protocols, stock_datasets=lambda task: {("allenai/ai2_arc", "ARC-Challenge")})
    assert problems == [] and [n.benchmark for n in needs] == ["arc_challenge"]
    assert needs[0].datasets == [("allenai/ai2_arc", "ARC-Challenge")] and needs[0].forced_offline

    found = preflight.hub_needed_while_offline(needs, True, lambda repo, cfg: False,
                                               offline_reason="HF_HUB_OFFLINE=1 is set")
    assert len(found) == 1
    assert "'arc_challenge'" in found[0] and "HF_HUB_OFFLINE" in found[0] and "allenai/ai2_arc" in found[0]

    asked = []
    assert preflight.hub_needed_while_offline(needs, True, lambda repo, cfg: asked.append((repo, cfg)) or True) == []
    assert asked == [("allenai/ai2_arc", "ARC-Challenge")]


def test_protocol_offline_true_needs_the_cache_even_online_and_offline_false_does_not():
    need = HubNeed("gsm8k", "lm-eval stock task 'gsm8k'", [("openai/gsm8k", "main")], forced_offline=True)
    found = preflight.hub_needed_while_offline([need], False, lambda repo, cfg: False)
    assert len(found) == 1 and "offline: true" in found[0] and "HF_HUB_OFFLINE=1" in found[0]
    need.forced_offline = False
    assert preflight.hub_needed_while_offline([need], False, lambda repo, cfg: False) == []
    assert len(preflight.hub_needed_while_offline([need], True, lambda repo, cfg: False,
                                                  offline_reason="the Hub is not reachable")) == 1


def test_suite_tasks_and_local_benchmarks_need_no_hub_but_hub_question_sources_do():
    config = merged(extra={"judge": {"base_url": "http://judge.invalid/v1", "model": "m"},
                           "benchmarks": [{"name": "arith", "data": ["eval/arith_test.jsonl"]},
                                          {"name": "humaneval"},
                                          {"name": "mtbench", "needs_judge": True, "protocol": {"questions": "hub"}},
                                          {"name": "hh_safety", "needs_judge": True}]})
    protocols, problems = preflight.effective_protocols(config)
    assert problems == [] and set(protocols) == {"arith", "humaneval", "mtbench", "hh_safety"}

    def no_stock(task):
        raise AssertionError(f"{task} is a suite task, not a stock one")

    needs, problems = preflight.hub_needs(protocols, stock_datasets=no_stock)
    assert problems == []
    assert {n.benchmark: n.datasets for n in needs} == {"mtbench": [("HuggingFaceH4/mt_bench_prompts", None)],
                                                       "hh_safety": [("Anthropic/hh-rlhf", None)]}


def test_unknown_task_and_bad_protocol_key_are_problems():
    config = merged("test.yaml", extra={"benchmarks": [ARC, {"name": "arith", "protocol": {"shots": 3}}]})
    protocols, problems = preflight.effective_protocols(config)
    assert len(problems) == 1 and "arith" in problems[0] and "shots" in problems[0]

    def unknown(task):
        raise KeyError(task)

    _, problems = preflight.hub_needs(protocols, stock_datasets=unknown)
    assert len(problems) == 1 and "arc_challenge" in problems[0]


def test_only_the_benchmarks_with_jobs_to_run_are_checked():
    config = merged("test.yaml", extra={"benchmarks": [ARC, {"name": "arith"}]})
    protocols, _ = preflight.effective_protocols(config, ["arith"])
    assert list(protocols) == ["arith"]


@pytest.mark.skipif(preflight.lm_eval_tasks_dir() is None, reason="lm-eval is not installed")
def test_stock_task_datasets_come_from_the_installed_lm_eval_yamls():
    tasks = preflight.StockTasks(preflight.lm_eval_tasks_dir())
    assert tasks.datasets("arc_challenge") == {("allenai/ai2_arc", "ARC-Challenge")}  # through `include`
    assert tasks.datasets("truthfulqa_mc2") == {("truthfulqa/truthful_qa", "multiple_choice")}
    mmlu = tasks.datasets("mmlu")  # group -> subgroups -> tags -> 57 subject tasks
    assert {path for path, _ in mmlu} == {"cais/mmlu"} and len(mmlu) == 57 and ("cais/mmlu", "anatomy") in mmlu
    with pytest.raises(KeyError):
        tasks.datasets("no_such_task_anywhere")


def test_cache_lookup_uses_the_prepared_datasets_layout(tmp_path):
    datasets_cache, hub = tmp_path / "datasets", tmp_path / "hub"
    (datasets_cache / "allenai___ai2_arc" / "ARC-Challenge" / "0.0.0" / "abc").mkdir(parents=True)
    (datasets_cache / "UCLA-AGI___spin_iter0" / "default" / "0.0.0" / "abc").mkdir(parents=True)
    (hub / "datasets--openai--gsm8k" / "snapshots" / "abc").mkdir(parents=True)
    assert preflight.dataset_in_cache(datasets_cache, "allenai/ai2_arc", "ARC-Challenge")
    assert not preflight.dataset_in_cache(datasets_cache, "allenai/ai2_arc", "ARC-Easy")
    assert preflight.dataset_in_cache(datasets_cache, "UCLA-AGI/SPIN_iter0", None)
    assert not preflight.dataset_in_cache(datasets_cache, "openai/gsm8k", "main")
    assert preflight.dataset_in_hub_cache(hub, "openai/gsm8k")
    env = {"HF_HOME": str(tmp_path)}
    assert preflight.datasets_cache_dir(env) == datasets_cache and preflight.hub_cache_dir(env) == hub
    assert preflight.default_cache_has(env)("allenai/ai2_arc", "ARC-Challenge")


def test_offline_switches_and_hub_probe():
    assert preflight.env_offline({"HF_HUB_OFFLINE": "1"}) == "HF_HUB_OFFLINE=1"
    assert preflight.env_offline({"HF_DATASETS_OFFLINE": "true"}) == "HF_DATASETS_OFFLINE=true"
    assert preflight.env_offline({"HF_HUB_OFFLINE": "0"}) is None
    assert preflight.hub_offline_reason({}, None) is None
    probed = []
    reason = preflight.hub_offline_reason({"HF_ENDPOINT": "http://hub.local"},
                                          lambda url: probed.append(url) or "ConnectionRefusedError")
    assert probed == ["http://hub.local"] and "http://hub.local" in reason
    assert preflight.hub_offline_reason({"HF_HUB_OFFLINE": "1"}, lambda url: pytest.fail("probed")) is not None


def test_run_checks_probes_the_hub_only_for_a_benchmark_that_may_go_online(tmp_path):
    online_arc = {**ARC, "protocol": {"limit": 2, "offline": False}}
    env = {"HF_HOME": str(tmp_path / "hf")}
    probed = []

    def unreachable(url):
        probed.append(url)
        return "gaierror: Name or service not known"

    outcome = preflight.run_checks(merged("test.yaml", extra={"benchmarks": [online_arc]}), results_dir=tmp_path,
                                   environ=env, probe=unreachable, gpu_resources={"rules": {}})
    assert probed == ["https://huggingface.co"]
    assert len(outcome.problems) == 1 and "huggingface.co" in outcome.problems[0] and "arc_challenge" in outcome.problems[0]

    outcome = preflight.run_checks(merged("test.yaml", extra={"benchmarks": [online_arc]}), results_dir=tmp_path,
                                   environ=env, probe=lambda url: None, gpu_resources={"rules": {}})
    assert outcome.problems == []  # reachable: the job downloads what it needs

    probed.clear()
    outcome = preflight.run_checks(merged("test.yaml", extra={"benchmarks": [ARC]}), results_dir=tmp_path,
                                   environ=env, probe=unreachable, gpu_resources={"rules": {}})
    assert probed == [] and len(outcome.problems) == 1  # offline: true (default) needs the cache, online or not


def test_disk_is_checked_only_when_a_job_writing_a_model_will_run(tmp_path):
    config = merged("test.yaml")
    tiny = lambda path: 1  # noqa: E731
    assert preflight.run_checks(config, results_dir=tmp_path, gpu_resources={"rules": {"prepare_data": 0}},
                                free=tiny, network=False).problems == []
    found = preflight.run_checks(config, results_dir=tmp_path, gpu_resources={"rules": {"sft_train": 0}},
                                 free=tiny, network=False).problems
    assert len(found) == 1 and found[0].startswith("disk:")


# ------------------------------------------------------------------------------------------------ judge


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def answering_401():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(401)
            self.end_headers()
            self.wfile.write(b'{"error": "no key"}')

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_judge_key_variable_unset_is_a_problem_naming_it():
    judge = {"base_url": "http://judge.local/v1", "model": "gpt-4", "api_key_env": "GSIL_TEST_JUDGE_KEY"}
    found = preflight.judge_problems(judge, {}, None)
    assert len(found) == 1 and "GSIL_TEST_JUDGE_KEY" in found[0]
    assert preflight.judge_problems(judge, {"GSIL_TEST_JUDGE_KEY": ""}, None)
    assert preflight.judge_problems(judge, {"GSIL_TEST_JUDGE_KEY": "sk-x"}, None) == []
    assert preflight.judge_problems({**judge, "api_key_env": ""}, {}, None) == []  # a local server needs no key
    assert preflight.judge_problems({**judge, "base_url": ""}, {}, lambda url: pytest.fail("probed")) == []
    assert "judge.model" in preflight.judge_problems({**judge, "model": ""}, {"GSIL_TEST_JUDGE_KEY": "k"}, None)[0]


def test_unreachable_judge_endpoint_is_a_problem_naming_the_url():
    url = f"http://127.0.0.1:{closed_port()}/v1"
    started = time.monotonic()
    found = preflight.judge_problems({"base_url": url, "model": "m", "api_key_env": ""}, {}, preflight.probe_url)
    assert time.monotonic() - started < 5
    assert len(found) == 1 and f"{url}/models" in found[0]


def test_judge_endpoint_answering_401_counts_as_reachable(answering_401):
    judge = {"base_url": answering_401, "model": "m", "api_key_env": "GSIL_TEST_JUDGE_KEY"}
    assert preflight.probe_url(f"{answering_401}/models") is None
    assert preflight.judge_problems(judge, {"GSIL_TEST_JUDGE_KEY": "k"}, preflight.probe_url) == []


def test_run_checks_probes_each_configured_judge_once(tmp_path):
    config = merged(extra={"judge": {"base_url": "http://judge.local/v1", "model": "m", "api_key_env": "K"},
                           "benchmarks": [{"name": "mtbench", "needs_judge": True},
                                          {"name": "hh_safety", "needs_judge": True, "protocol": {"prompts": "x.jsonl"}}]})
    probed = []
    outcome = preflight.run_checks(config, results_dir=tmp_path / "results", environ={"K": "k"},
                                   probe=lambda url: probed.append(url) or "ConnectionRefusedError",
                                   free=lambda path: 10**15)
    assert probed == ["http://judge.local/v1/models"]
    assert len(outcome.problems) == 1 and "mtbench, hh_safety" in outcome.problems[0]


# ------------------------------------------------------------------------------------------------ GPUs


def test_gpu_profile_without_gpus_is_a_problem():
    resources = {"global": 8, "rules": {"align_selfplay": 8, "evaluate_model": 1, "prepare_data": 0}}
    found = preflight.gpu_problems(resources, "local", lambda: (0, "nvidia-smi not installed"))
    assert len(found) == 1 and "align_selfplay (gpu=8)" in found[0] and "prepare_data" not in found[0]
    too_many = preflight.gpu_problems(resources, "local", lambda: (4, "CUDA_VISIBLE_DEVICES: 0,1,2,3"))
    assert len(too_many) == 1 and "align_selfplay" in too_many[0] and "8 GPUs" in too_many[0]
    assert preflight.gpu_problems(resources, "local", lambda: 8) == []


def test_gpu_check_is_skipped_on_a_cluster_executor_and_for_cpu_jobs():
    resources = {"global": None, "rules": {"align_selfplay": 8}}
    assert preflight.gpu_problems(resources, "slurm", lambda: pytest.fail("counted GPUs")) == []
    assert preflight.gpu_problems({"rules": {"sft_train": 0}}, "local", lambda: pytest.fail("counted GPUs")) == []


def test_local_gpu_count_follows_cuda_visible_devices():
    assert preflight.local_gpu_count({"CUDA_VISIBLE_DEVICES": "0,1,2"})[0] == 3
    assert preflight.local_gpu_count({"CUDA_VISIBLE_DEVICES": ""})[0] == 0


# ------------------------------------------------------------------------------------------------ disk


def test_disk_too_small_is_a_problem_with_the_bytes(tmp_path):
    found = preflight.disk_problems([tmp_path / "results" / "run"], 5_000_000_000, lambda path: 1_000_000)
    assert len(found) == 1 and "5000000000" in found[0] and "1000000" in found[0] and "results" in found[0]
    assert preflight.disk_problems([tmp_path], 10, lambda path: 11) == []


def test_disk_need_from_the_materialised_base_model(tmp_path):
    config = merged("test.yaml")
    results = tmp_path / "results" / "test"
    base = results / "models" / "base"
    base.mkdir(parents=True)
    (base / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16"}))
    (base / "model.safetensors").write_bytes(b"\0" * 2_000)  # 1000 parameters in bf16
    need = preflight.estimate_disk_need(config, results, {})
    from gsil.aggregate.plan import build_plan

    models = len(build_plan(config)["models"]) - 1  # every model but the base is still to be written
    # optimizers: SFT adamw (2 moments), the pairwise methods rmsprop: checkpoints at 4 + 2*4 + 2 = 14 bytes/param,
    # two on disk with checkpointing.save beside
    assert need.needed_bytes == models * 2_000 + 2 * 1000 * 14
    config["checkpointing"] = {"every": 50, "save": "in-place"}
    assert preflight.estimate_disk_need(config, results, {}).needed_bytes == models * 2_000 + 1000 * 14


def test_gguf_parameter_count_from_the_header_of_a_written_file(tmp_path):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    from gsil.gguf_header import GGUFHeaderError, parameter_count

    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_array("tokenizer.ggml.tokens", ["a", "bc", "", "def"])  # strings of every length, an empty one
    writer.add_array("tokenizer.ggml.scores", [0.5, 1.5])
    writer.add_uint32("llama.block_count", 2)
    writer.add_string("general.name", "hand-made")
    writer.add_tensor("token_embd.weight", np.zeros((3, 4), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.zeros(5, dtype=np.float32))
    writer.add_tensor("blk.0.ffn_up.weight", np.zeros((2, 3, 2), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert parameter_count(path) == 3 * 4 + 5 + 2 * 3 * 2

    (tmp_path / "not.gguf").write_bytes(b"GGML" + bytes(20))
    with pytest.raises(GGUFHeaderError, match="not a GGUF file"):
        parameter_count(tmp_path / "not.gguf")
    (tmp_path / "cut.gguf").write_bytes(path.read_bytes()[:40])
    with pytest.raises(GGUFHeaderError, match="ends early"):
        parameter_count(tmp_path / "cut.gguf")


def test_demo_disk_need_counts_the_embedded_model_exactly(tmp_path):
    """The demo's base model: the GGUF's own tensor count (gguf's reader agrees), 4 bytes each once dequantised,
    which is what a materialised model folder of the demo weighs."""
    gguf = pytest.importorskip("gguf")
    from gsil.modeling import GsilError, smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except GsilError as err:
        pytest.skip(str(err))
    expected = sum(int(t.n_elements) for t in gguf.GGUFReader(str(smollm2_gguf_path())).tensors)
    size = preflight.base_model_size(merged(), tmp_path / "results" / "demo", {})
    assert (size.params, size.bytes_per_param, size.materialised) == (expected, 4, False)
    assert "SmolLM2" in size.source


def test_disk_need_is_unknown_for_a_hub_model_neither_materialised_nor_cached(tmp_path):
    config = merged("paper.yaml")
    need = preflight.estimate_disk_need(config, tmp_path / "results" / "paper", {"HF_HOME": str(tmp_path / "hf")})
    assert need.needed_bytes is None and "zephyr" in need.detail
    outcome = preflight.run_checks(config, results_dir=tmp_path / "results" / "paper", benchmarks=[],
                                   environ={"HF_HOME": str(tmp_path / "hf")}, network=False)
    assert outcome.problems == [] and any("disk" in w for w in outcome.warnings)


# ------------------------------------------------------------------------------------------------ the CLI


def run_cli(tmp_path, config: dict, *args: str) -> int:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return cli.main(["preflight", "--config-json", str(path), "--results", str(tmp_path / "results"), *args])


@pytest.mark.parametrize("overlays", [(), ("test.yaml",)], ids=["demo", "test"])
def test_demo_and_test_configs_pass_offline_on_the_cpu(tmp_path, monkeypatch, capsys, overlays):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for name in ("HF_DATASETS_CACHE", "HF_HUB_CACHE", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    # This machine's free space must not decide it (the disk check has its own tests): a roomy disk.
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: SimpleNamespace(total=2**41, used=0, free=2**41))
    resources = json.dumps({"global": 0, "rules": {"sft_train": 0, "evaluate_model": 0}})
    assert run_cli(tmp_path, merged(*overlays), "--gpu-resources", resources) == 0
    assert "gsil preflight: ok" in capsys.readouterr().out


def test_cli_lists_every_problem_and_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    monkeypatch.delenv("GSIL_TEST_JUDGE_KEY", raising=False)
    config = merged("test.yaml", extra={
        "judge": {"base_url": f"http://127.0.0.1:{closed_port()}/v1", "model": "m", "api_key_env": "GSIL_TEST_JUDGE_KEY"},
        "benchmarks": [{"name": "arith"}, {"name": "mtbench", "needs_judge": True}]})
    assert run_cli(tmp_path, config, "--skip-network", "--executor", "slurm",
                   "--gpu-resources", json.dumps({"global": None, "rules": {"align_selfplay": 8}})) == 1
    out = capsys.readouterr().out
    assert "1 problem found" in out and "GSIL_TEST_JUDGE_KEY" in out and "does not answer" not in out


# ------------------------------------------------------------------------------------------------ the workflow


def test_workflow_stops_before_any_job_when_a_benchmark_needs_the_hub_offline(tmp_path):
    from helpers import copy_workflow

    workdir = copy_workflow(tmp_path / "wf")
    overlay = {"benchmarks": [{"name": "arith", "label": "Arith", "data": ["eval/arith_test.jsonl",
                                                                        "eval/arith_fewshot.jsonl"],
                               "protocol": {"limit": 4}}, ARC]}
    (workdir / "config" / "hub_offline.yaml").write_text(yaml.safe_dump(overlay))
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_DATASETS_CACHE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", preflight.SKIP_VARIABLE)}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "empty-hf"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    command = [str(SNAKEMAKE), "--cores", "2", "--configfile", "config/test.yaml", "config/hub_offline.yaml"]

    # A dry run plans the ARC jobs and runs no preflight.
    dry = subprocess.run([*command, "-n"], cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "preflight" not in dry.stdout + dry.stderr and "evaluate_model" in dry.stdout

    started = time.monotonic()
    out = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - started
    text = out.stdout + out.stderr
    assert out.returncode != 0, text[-3000:]
    assert "gsil preflight: 1 problem" in text and "'arc_challenge'" in text and "HF_HUB_OFFLINE" in text, text[-3000:]
    assert not (workdir / "results" / "test" / "models").exists()
    assert not (workdir / "results").exists(), sorted(p.name for p in (workdir / "results").rglob("*"))
    assert elapsed < 120, elapsed
