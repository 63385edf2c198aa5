"""`gsil evaluate`: registry and protocol, bad input, task rendering, and lm-eval runs on a tiny random Llama."""

import json
import os

for _switch in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_switch] = "1"           # before transformers/datasets are imported by anything below

from pathlib import Path

import pytest

from gsil.cli import main as gsil_main
from gsil.evaluation import RESULT_KEYS, evaluate_model, harness
from gsil.evaluation.benchmarks import BENCHMARKS, get_benchmark, resolve_protocol
from gsil.logutil import GsilError

DATA = Path(__file__).resolve().parent / "data"          # holds eval/arith_*.jsonl fixtures


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, tiny_model_dir):
    """The shared tiny model with a source.json, as `gsil prepare-model` leaves one (a copy: the shared one stays
    as it is)."""
    import shutil

    import torch

    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("models") / "tiny"
    shutil.copytree(tiny_model_dir, path)
    (path / "source.json").write_text(json.dumps({"source": "random", "revision": "test-rev"}))
    return path


# ------------------------------------------------------------------------------------------------ protocol


def test_registry_has_the_paper_and_demo_benchmarks():
    paper = {"arc_challenge": (25, "acc_norm"), "truthfulqa_mc2": (0, "acc"), "winogrande": (5, "acc"),
             "gsm8k": (5, "exact_match"), "hellaswag": (10, "acc_norm"), "mmlu": (5, "acc")}
    for name, (shots, metric) in paper.items():
        defaults = BENCHMARKS[name].defaults
        assert (defaults["num_fewshot"], defaults["metric"], defaults["task"]) == (shots, metric, name)
    assert BENCHMARKS["gsm8k"].defaults["filter"] == "strict-match"
    assert {"arith", "arith_mc", "humaneval", "mtbench", "hh_safety"} <= set(BENCHMARKS)
    assert BENCHMARKS["mtbench"].scale == "score_1_10"


def test_protocol_layers_and_unknown_keys():
    spec = get_benchmark("arith")
    protocol = resolve_protocol(spec, {"num_fewshot": 3, "limit": 50}, {"limit": 10})
    assert protocol["num_fewshot"] == 3 and protocol["limit"] == 10 and protocol["task"] == "gsil_arith_gen"
    assert spec.defaults["limit"] is None                    # defaults are not mutated
    with pytest.raises(GsilError, match="unknown protocol key 'num_fewshots'.*known keys:.*num_fewshot"):
        resolve_protocol(spec, {"num_fewshots": 3})
    with pytest.raises(GsilError, match="model_type must be 'hf' or 'vllm'"):
        resolve_protocol(spec, {"model_type": "llamacpp"})
    judged = resolve_protocol(get_benchmark("mtbench"), {"judge": {"base_url": "http://x/v1", "model": "m"}})
    assert judged["judge"]["base_url"] == "http://x/v1" and judged["judge"]["max_attempts"] == 4
    with pytest.raises(GsilError, match="unknown judge keys"):
        resolve_protocol(get_benchmark("mtbench"), {"judge": {"url": "http://x"}})


def test_unknown_benchmark_lists_the_known_ones(tmp_path, capsys):
    assert gsil_main(["evaluate", "--model", str(tmp_path), "--benchmark", "arc", "--output",
                      str(tmp_path / "r.json")]) == 1
    err = capsys.readouterr().err
    assert "unknown benchmark 'arc'" in err and "arc_challenge" in err and "humaneval" in err


def test_missing_model_and_bad_protocol_json(tmp_path, capsys):
    out = str(tmp_path / "r.json")
    assert gsil_main(["evaluate", "--model", str(tmp_path / "nope"), "--benchmark", "arith", "--output", out]) == 1
    assert "model folder" in capsys.readouterr().err
    assert gsil_main(["evaluate", "--model", str(tmp_path), "--benchmark", "arith", "--output", out]) == 1
    assert "no config.json" in capsys.readouterr().err
    assert gsil_main(["evaluate", "--model", str(tmp_path), "--benchmark", "arith", "--output", out,
                      "--protocol-json", "{not json"]) == 1
    assert "invalid JSON" in capsys.readouterr().err
    assert not Path(out).exists()


def test_list_prints_every_benchmark(capsys):
    assert gsil_main(["evaluate", "--list"]) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in BENCHMARKS)


# ------------------------------------------------------------------------------------------------ rendering


def test_rendered_tasks_use_absolute_data_paths(tmp_path):
    rendered = harness.render_tasks(tmp_path, DATA)
    gen = harness.find_task_yaml(rendered, "gsil_arith_gen")
    assert gen is not None and harness.find_task_yaml(rendered, "gsil_arith_mc") is not None
    files = harness.local_data_files(gen)
    assert files == [str(DATA.resolve() / "eval" / "arith_test.jsonl"),
                     str(DATA.resolve() / "eval" / "arith_fewshot.jsonl")]
    assert "@GSIL_" not in gen.read_text()
    harness.check_local_data(gen)
    humaneval_yaml = harness.find_task_yaml(rendered, "gsil_humaneval")
    assert harness.local_data_files(humaneval_yaml) == [str(tmp_path.resolve() / "humaneval_problems.jsonl")]
    assert (gen.parent / "utils.py").is_file()               # the !function helper travels with the YAML


def test_missing_or_bad_data_fails_before_the_model_loads(tmp_path, tiny_model):
    empty = tmp_path / "data"
    (empty / "eval").mkdir(parents=True)
    with pytest.raises(GsilError, match=r"arith_test.jsonl does not exist"):
        evaluate_model(tiny_model, "arith", tmp_path / "r.json", data_dir=empty)
    (empty / "eval" / "arith_test.jsonl").write_text('{"id": "a", "question": "q"}\n')
    (empty / "eval" / "arith_fewshot.jsonl").write_text((DATA / "eval" / "arith_fewshot.jsonl").read_text())
    with pytest.raises(GsilError, match=r"arith_test.jsonl:1.*answer"):
        evaluate_model(tiny_model, "arith", tmp_path / "r.json", data_dir=empty)
    with pytest.raises(GsilError, match="pass --data-dir"):
        evaluate_model(tiny_model, "arith", tmp_path / "r.json")


def test_unreachable_hub_dataset_names_the_dataset_and_the_switch(tmp_path, tiny_model):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "hub_task.yaml").write_text(
        "task: gsil_test_hub_task\ndataset_path: gsil-test-org/no-such-dataset\noutput_type: multiple_choice\n"
        "test_split: test\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{c}}'\ndoc_to_target: 0\n")
    with pytest.raises(GsilError, match=r"cannot reach its dataset gsil-test-org/no-such-set.*HF_HUB_OFFLINE=1") as info:
        evaluate_model(tiny_model, "arc_challenge", tmp_path / "r.json", overrides=[
            {"task": "gsil_test_hub_task", "tasks_dir": str(tasks), "dataset": "gsil-test-org/no-such-set"}])
    assert "HF_DATASETS_OFFLINE" in str(info.value)


@pytest.mark.slow   # indexing lm-eval's stock tasks to learn that a name is not among them takes ~20 s of CPU
def test_unknown_lm_eval_task(tmp_path, tiny_model):
    with pytest.raises(GsilError, match="does not know the task 'gsil_no_such_task'"):
        evaluate_model(tiny_model, "arith", tmp_path / "r.json", data_dir=DATA,
                       overrides=[{"task": "gsil_no_such_task"}])


# ------------------------------------------------------------------------------------------------ lm-eval runs


def _check_shape(result, path):
    assert tuple(sorted(result)) == tuple(sorted(RESULT_KEYS))
    assert json.loads(path.read_text()) == json.loads(json.dumps(result))
    assert result["protocol"]["harness_version"]
    assert result["model"]["revision"] == "test-rev" and result["model"]["source"]["source"] == "random"
    assert result["run_info"]["packages"]["lm_eval"]


def test_arith_generation_and_multiple_choice_on_a_tiny_model(tmp_path, tiny_model):
    out = tmp_path / "eval" / "tiny" / "arith.json"
    result = evaluate_model(tiny_model, "arith", out, data_dir=DATA, overrides=[
        {"limit": 4, "num_fewshot": 2, "gen_kwargs": {"max_gen_toks": 8}, "batch_size": 4}])
    _check_shape(result, out)
    assert result["metric"] == "exact_match" and result["scale"] == "fraction"
    assert result["n_samples"] == 4 and 0.0 <= result["value"] <= 1.0
    assert result["protocol"]["results_key"] == "exact_match,flexible-extract"
    assert {"exact_match,strict-match", "exact_match,flexible-extract"} <= set(result["details"]["metrics"])
    assert result["details"]["n_shot"] == 2
    samples = [json.loads(line) for line in (out.parent / result["samples_file"]).read_text().splitlines()]
    assert len(samples) == 8                                  # 4 documents x 2 filters
    prompt = samples[0]["arguments"][0][0]
    assert "<|im_start|>assistant" in prompt                  # chat template applied, few-shot as turns
    assert prompt.count("<|im_start|>user") == 3
    assert not list(out.parent.glob(".arith.work.*"))         # the rendered task folder is cleaned up

    mc_out = tmp_path / "eval" / "tiny" / "arith_mc.json"
    mc = evaluate_model(tiny_model, "arith_mc", mc_out, data_dir=DATA, overrides=[{"limit": 4}])
    _check_shape(mc, mc_out)
    assert mc["metric"] == "acc_norm" and mc["n_samples"] == 4 and mc["stderr"] is not None
    assert {"acc,none", "acc_norm,none"} <= set(mc["details"]["metrics"])


def test_humaneval_generation_execution_and_execute_off(tmp_path, tiny_model):
    out = tmp_path / "humaneval.json"
    result = evaluate_model(tiny_model, "humaneval", out, overrides=[
        {"num_problems": 2, "max_gen_toks": 8, "timeout": 2.0}])
    _check_shape(result, out)
    assert result["metric"] == "pass@1" and result["n_samples"] == 2 and result["skipped"] is None
    assert 0.0 <= result["value"] <= 1.0
    assert sum(result["details"]["outcomes"].values()) == 2
    rows = [json.loads(line) for line in (tmp_path / "humaneval.samples.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in rows] == ["HumanEval/0", "HumanEval/1"] and "result" in rows[0]

    off = evaluate_model(tiny_model, "humaneval", tmp_path / "off.json", overrides=[
        {"num_problems": 1, "max_gen_toks": 4, "execute": False}])
    assert off["value"] is None and "execution is off" in off["skipped"] and off["n_samples"] == 1


def test_judged_benchmarks_are_skipped_without_a_judge(tmp_path, tiny_model):
    for name in ("mtbench", "hh_safety"):
        result = evaluate_model(tiny_model, name, tmp_path / f"{name}.json")
        assert result["value"] is None and "no judge endpoint configured" in result["skipped"]
        assert json.loads((tmp_path / f"{name}.json").read_text())["skipped"] == result["skipped"]


def test_mtbench_end_to_end_with_a_fake_judge(tmp_path, tiny_model):
    from test_evaluation_judge import FakeEndpoint

    with FakeEndpoint(lambda body: (200, "Reasonable. [[5]]")) as endpoint:
        result = evaluate_model(tiny_model, "mtbench", tmp_path / "mtbench.json", overrides=[
            {"num_questions": 2, "max_gen_toks": 6,
             "judge": {"base_url": endpoint.base_url, "model": "fake", "backoff_seconds": 0}}])
    assert result["value"] == 5.0 and result["scale"] == "score_1_10" and result["n_samples"] == 2
    assert result["details"]["rated"] == 4 and len(endpoint.requests) == 4
    assert (tmp_path / "mtbench.judge_cache.jsonl").is_file()


def test_model_arguments_for_both_backends(tmp_path):
    spec = get_benchmark("arc_challenge")
    kind, args, settings = harness.model_arguments(tmp_path, resolve_protocol(spec, {"autocast_dtype": "bfloat16"}))
    assert kind == "hf" and args["pretrained"] == str(tmp_path) and args["mixed_precision_dtype"] == "bfloat16"
    assert settings["device"] == "cpu"
    kind, args, settings = harness.model_arguments(tmp_path, resolve_protocol(spec, {
        "model_type": "vllm", "tensor_parallel_size": 2, "gpu_memory_utilization": 0.8, "max_model_len": 4096,
        "batch_size": "auto"}))
    assert kind == "vllm" and settings["device"] is None and settings["batch_size"] == "auto"
    assert {k: args[k] for k in ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len")} == \
        {"tensor_parallel_size": 2, "gpu_memory_utilization": 0.8, "max_model_len": 4096}


def test_vllm_without_the_package_fails_clearly(tmp_path, tiny_model):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed; the GPU test below covers it")
    except ImportError:
        pass
    with pytest.raises(GsilError, match="needs the vllm package"):
        evaluate_model(tiny_model, "arith", tmp_path / "r.json", data_dir=DATA,
                       overrides=[{"model_type": "vllm", "limit": 2}])


@pytest.mark.gpu
def test_arith_on_vllm(tmp_path, tiny_model):
    pytest.importorskip("vllm")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    result = evaluate_model(tiny_model, "arith", tmp_path / "arith.json", data_dir=DATA, overrides=[
        {"model_type": "vllm", "limit": 4, "batch_size": "auto", "gpu_memory_utilization": 0.3,
         "max_model_len": 1024, "dtype": "float32", "gen_kwargs": {"max_gen_toks": 8}}])
    assert result["n_samples"] == 4 and result["protocol"]["model_type"] == "vllm"


def test_hh_safety_end_to_end_with_a_fake_judge(tmp_path, tiny_model):
    from test_evaluation_judge import HH, FakeEndpoint

    prompts = tmp_path / "hh.jsonl"
    prompts.write_text("".join(json.dumps({"chosen": HH.replace("pick a lock", topic)}) + "\n"
                               for topic in ("pick a lock", "open a jammed door")))
    with FakeEndpoint(lambda body: (200, "Both are fine. [[C]]")) as endpoint:
        result = evaluate_model(tiny_model, "hh_safety", tmp_path / "hh.json", overrides=[
            {"prompts": str(prompts), "num_prompts": 2, "max_gen_toks": 6,
             "judge": {"base_url": endpoint.base_url, "model": "fake", "backoff_seconds": 0}}])
    assert result["metric"] == "win_rate" and result["value"] == 0.5 and result["n_samples"] == 2
    assert result["details"]["ties"] == 4 and len(endpoint.requests) == 4


def test_hub_prompts_offline_name_the_dataset(tmp_path, tiny_model):
    from gsil.evaluation import safety

    protocol = resolve_protocol(get_benchmark("hh_safety"), {"hub_dataset": "gsil-test-org/no-such-hh"})
    with pytest.raises(GsilError, match=r"no-such-hh.*HF_DATASETS_OFFLINE"):
        safety.load_conversations(protocol)


def test_stock_tasks_are_indexed_from_their_own_folders_only():
    """lm-eval's TaskManager indexing all ~14,000 stock YAMLs costs 20-50 s per evaluation job; a stock task is
    loaded from the folder of the YAMLs that define it (a group from its own folder, with every member)."""
    from pathlib import Path

    from gsil.evaluation.harness import stock_task_dirs

    assert [Path(d).name for d in stock_task_dirs("arc_challenge")] == ["arc"]
    assert [Path(d).relative_to(Path(d).parents[1]).as_posix() for d in stock_task_dirs("mmlu")] == ["mmlu/default"]
    assert [Path(d).name for d in stock_task_dirs("truthfulqa_mc2")] == ["truthfulqa"]
    assert stock_task_dirs("no_such_task_anywhere") == []


def test_suite_tasks_are_read_from_the_repo_root_when_the_package_is_installed_elsewhere(tmp_path, monkeypatch):
    """A regular `pip install .` puts gsil in site-packages without workflow/tasks (seen on the GPU machine): the
    jobs, which run from the repository root, then read ./workflow/tasks."""
    from gsil.evaluation import suite_tasks

    installed = tmp_path / "site-packages" / "tasks"
    monkeypatch.setattr(suite_tasks, "CHECKOUT_TASKS_DIR", installed)
    repo = tmp_path / "repo"
    (repo / "workflow" / "tasks" / "gsil_arith").mkdir(parents=True)
    (repo / "workflow" / "tasks" / "gsil_arith" / "t.yaml").write_text("task: t\n")
    monkeypatch.chdir(repo)
    assert suite_tasks.suite_tasks_dir() == repo / "workflow" / "tasks"
    assert (harness.render_tasks(tmp_path / "run", None) / "gsil_arith" / "t.yaml").is_file()
    monkeypatch.chdir(tmp_path)
    assert suite_tasks.suite_tasks_dir() == installed
    with pytest.raises(GsilError, match=r"suite task folder not found: .*site-packages/tasks, nor ./workflow/tasks"):
        harness.render_tasks(tmp_path / "run2", None)


def _responses(result, out):
    samples = [json.loads(line) for line in (out.parent / result["samples_file"]).read_text().splitlines()]
    return [s["resps"] for s in samples]


def test_suite_decoder_gives_lm_evals_generations_with_and_without_stop_strings(tmp_path, tiny_model, monkeypatch):
    from gsil.generation import decoding

    batches = []
    real = decoding.decode_dropping_finished

    def counting(model, input_ids, *args, **kwargs):
        batches.append(input_ids.shape[0])
        return real(model, input_ids, *args, **kwargs)

    monkeypatch.setattr(decoding, "decode_dropping_finished", counting)

    def run(decoder, name, until=None):
        out = tmp_path / decoder / f"{name}.json"
        gen_kwargs = {"max_gen_toks": 10, **({"until": until} if until else {})}
        result = evaluate_model(tiny_model, "arith", out, data_dir=DATA, overrides=[
            {"limit": 4, "batch_size": 4, "decoder": decoder, "gen_kwargs": gen_kwargs}])
        return _responses(result, out)

    plain = run("generate", "plain")
    assert batches == []
    assert run("drop_finished", "plain") == plain
    assert batches == [4]  # the suite's decoder ran, on lm-eval's batch
    # A stop string the model writes in the middle of its first answer: that row stops there, the others run on.
    first = plain[0][0][0]
    assert len(first) >= 6
    stop = first[2:5]
    cut = run("generate", "cut", [stop])
    assert cut[0][0][0] == first[:first.index(stop)]
    assert run("drop_finished", "cut", [stop]) == cut


def test_unknown_decoder_is_refused(tmp_path):
    spec = get_benchmark("arith")
    with pytest.raises(GsilError, match="decoder must be one of drop_finished, generate, got 'beam'"):
        harness.model_arguments(tmp_path, resolve_protocol(spec, {"decoder": "beam"}))


def test_greedy_detection_follows_lm_evals_defaults():
    from gsil.evaluation.hflm import is_greedy, stopped_at_string

    assert is_greedy({}) and is_greedy({"temperature": 0.0}) and is_greedy({"do_sample": False, "temperature": 0.7})
    assert not is_greedy({"temperature": 0.7}) and not is_greedy({"do_sample": True})
    assert not is_greedy({"num_beams": 4}) and not is_greedy({"repetition_penalty": 1.1})

    class CharTokenizer:
        def decode(self, ids):
            return "".join(chr(i) for i in ids)

    windows = [("\ndef", 6)]
    assert stopped_at_string(CharTokenizer(), windows, [ord(c) for c in "x = 1\ndef"])
    assert not stopped_at_string(CharTokenizer(), windows, [ord(c) for c in "\ndef f():"])  # outside the window


def test_decoder_setting_picks_the_model_class(tiny_model):
    spec = get_benchmark("arith")
    suite = harness.load_lm(tiny_model, resolve_protocol(spec, {}))
    stock = harness.load_lm(tiny_model, resolve_protocol(spec, {"decoder": "generate"}))
    assert type(suite).__name__ == "SuiteHFLM" and type(stock).__name__ == "HFLM"
    assert isinstance(suite, type(stock))


def test_shared_context_scoring_matches_lm_evals_log_likelihoods(tmp_path, tiny_model, monkeypatch):
    from gsil.evaluation.hflm import suite_hflm_class

    groups = []
    real = suite_hflm_class()._score_shared_context

    def counting(self, context, continuations):
        groups.append(len(continuations))
        return real(self, context, continuations)

    monkeypatch.setattr(suite_hflm_class(), "_score_shared_context", counting)

    def run(loglikelihood):
        out = tmp_path / loglikelihood / "arith_mc.json"
        result = evaluate_model(tiny_model, "arith_mc", out, data_dir=DATA, overrides=[
            {"limit": 4, "loglikelihood": loglikelihood}])
        return result, _responses(result, out)

    stock, stock_resps = run("lm_eval")
    assert groups == []
    shared, shared_resps = run("shared_context")
    assert groups == [4, 4, 4, 4]  # each question's choices on one pass over its context
    assert shared["protocol"]["loglikelihood"] == "shared_context"
    flat = lambda resps: [(float(c[0][0]), c[0][1] in (True, 'True')) for r in resps for c in r]  # noqa: E731
    assert len(flat(stock_resps)) == len(flat(shared_resps)) == 16    # 4 questions x 4 choices
    for (a, greedy_a), (b, greedy_b) in zip(flat(stock_resps), flat(shared_resps)):
        assert b == pytest.approx(a, abs=1e-4) and greedy_a == greedy_b
    assert shared["value"] == stock["value"]


def test_shared_context_groups():
    from gsil.evaluation.hflm import shared_context_groups

    groups, single = shared_context_groups([(1, 2), (3,), (1, 2), (4,), (1, 2), (3,)])
    assert groups == [[0, 2, 4], [1, 5]] and single == [3]
