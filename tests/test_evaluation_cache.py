"""One evaluation process per model: several benchmarks share one loaded model, results are cached by what they
depend on, and a benchmark a model is not scored on gets a result saying why."""

import json
import os
import shutil

for _switch in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_switch] = "1"

from pathlib import Path

import pytest

from gsil.cli import main as gsil_main
from gsil.evaluation import Request, evaluate_benchmarks, evaluate_model, harness
from gsil.evaluation.cache import ResultCache, cache_key
from gsil.logutil import GsilError

DATA = Path(__file__).resolve().parent / "data"

ARITH = {"limit": 3, "gen_kwargs": {"max_gen_toks": 6}, "batch_size": 4}
ARITH_MC = {"limit": 3, "batch_size": 4}
HUMANEVAL = {"num_problems": 1, "max_gen_toks": 4, "timeout": 2.0}


@pytest.fixture()
def workspace(tmp_path, tiny_model_dir):
    """A private copy of the tiny model and of the evaluation data (tests below touch both)."""
    import torch

    torch.set_num_threads(1)
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    data = tmp_path / "data"
    shutil.copytree(DATA / "eval", data / "eval")
    return model, data


@pytest.fixture()
def loads(monkeypatch):
    """Every LM the harness creates, as (what `pretrained` was, batch size)."""
    made = []
    original = harness._create_lm

    def counting(model_type, args, settings):
        lm = original(model_type, args, settings)
        made.append((args["pretrained"], settings.get("batch_size"), lm))
        return lm

    monkeypatch.setattr(harness, "_create_lm", counting)
    return made


def requests(out: Path, **skips: str) -> list[Request]:
    return [Request("arith", out / "arith.json", (ARITH,), skips.get("arith")),
            Request("arith_mc", out / "arith_mc.json", (ARITH_MC,), skips.get("arith_mc")),
            Request("humaneval", out / "humaneval.json", (HUMANEVAL,), skips.get("humaneval"))]


def strip_volatile(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("run_info", "seconds", "cache_key")}


def test_one_process_loads_the_weights_once_and_scores_like_separate_runs(tmp_path, workspace, loads):
    model, data = workspace
    together = evaluate_benchmarks(model, requests(tmp_path / "together"), data_dir=data)
    # The weights load once: arith_mc (shared-context scoring) and humaneval (another batch size) wrap the
    # transformers model arith loaded instead of loading it again.
    assert len(loads) == 3
    assert isinstance(loads[0][0], str) and loads[1][0] is loads[0][2].model and loads[2][0] is loads[0][2].model
    assert loads[2][1] == 32

    loads.clear()
    for request in requests(tmp_path / "alone"):
        evaluate_model(model, request.benchmark, request.output, data_dir=data, overrides=list(request.overrides))
    assert len(loads) == 3 and all(isinstance(pretrained, str) for pretrained, _, _ in loads)
    for result in together:
        name = result["benchmark"]
        alone = json.loads((tmp_path / "alone" / f"{name}.json").read_text())
        assert strip_volatile(result) | {"model": None} == strip_volatile(alone) | {"model": None}, name
        if result["samples_file"]:
            assert ((tmp_path / "together" / result["samples_file"]).read_text()
                    == (tmp_path / "alone" / alone["samples_file"]).read_text())


def test_cache_reuses_unchanged_results_and_rescores_what_changed(tmp_path, workspace, loads):
    model, data = workspace
    out, cache = tmp_path / "eval", tmp_path / "cache"
    first = evaluate_benchmarks(model, requests(out), data_dir=data, cache_dir=cache)
    assert loads and all(r["cache_key"] for r in first)

    # Snakemake deletes a job's outputs before it reruns it: the cache alone brings them back, loading nothing.
    shutil.rmtree(out)
    loads.clear()
    again = evaluate_benchmarks(model, requests(out), data_dir=data, cache_dir=cache)
    assert loads == []
    assert [strip_volatile(r) for r in again] == [strip_volatile(r) for r in first]
    assert [r["run_info"]["finished_at"] for r in again] == [r["run_info"]["finished_at"] for r in first]
    assert (out / "arith.samples.jsonl").is_file() and (out / "humaneval.samples.jsonl").is_file()

    # One protocol changed: only that benchmark is scored again.
    changed = requests(out)
    changed[1] = Request("arith_mc", out / "arith_mc.json", ({**ARITH_MC, "limit": 2},))
    results = evaluate_benchmarks(model, changed, data_dir=data, cache_dir=cache)
    assert [r["n_samples"] for r in results] == [3, 2, 1] and len(loads) == 1
    assert results[1]["cache_key"] != first[1]["cache_key"] and results[0]["cache_key"] == first[0]["cache_key"]

    # Edited evaluation data, or a retrained model (new files), miss the cache.
    test_file = data / "eval" / "arith_test.jsonl"
    key = cache_key("arith", {"limit": 3}, model, data)
    test_file.write_text(test_file.read_text() + "\n".join(test_file.read_text().splitlines()[:1]) + "\n")
    assert cache_key("arith", {"limit": 3}, model, data) != key
    key = cache_key("arith", {"limit": 3}, model, data)
    weights = next(model.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000))
    assert cache_key("arith", {"limit": 3}, model, data) != key


def test_a_failure_keeps_the_results_scored_before_it(tmp_path, workspace, loads):
    model, data = workspace
    out, cache = tmp_path / "eval", tmp_path / "cache"
    broken = [Request("arith_mc", out / "arith_mc.json", (ARITH_MC,)),
              Request("arith", out / "arith.json", ({**ARITH, "tasks_dir": str(tmp_path / "missing")},))]
    with pytest.raises(GsilError, match="suite task folder not found"):
        evaluate_benchmarks(model, broken, data_dir=data, cache_dir=cache)
    assert (out / "arith_mc.json").is_file() and not (out / "arith.json").exists()
    shutil.rmtree(out)
    loads.clear()
    evaluate_benchmarks(model, broken[:1], data_dir=data, cache_dir=cache)
    assert loads == [] and (out / "arith_mc.json").is_file()


def test_unselected_benchmark_gets_a_skipped_result_without_loading_anything(tmp_path, workspace, loads):
    model, data = workspace
    reason = "not scored on this model: config benchmark humaneval selects only models base, sft"
    skip_all = requests(tmp_path, arith="a", arith_mc="b", humaneval=reason)
    results = evaluate_benchmarks(model, skip_all, data_dir=data, cache_dir=tmp_path / "cache")
    assert loads == []
    humaneval = json.loads((tmp_path / "humaneval.json").read_text())
    assert humaneval["skipped"] == reason and humaneval["value"] is None and humaneval["samples_file"] is None
    assert [r["skipped"] for r in results] == ["a", "b", reason]
    assert not (tmp_path / "cache").exists()


def test_a_torn_cache_entry_is_a_miss(tmp_path):
    cache = ResultCache(tmp_path)
    cache.store("arith", "k1", {"value": 0.5, "samples_file": None}, None)
    assert cache.lookup("arith", "k1") == ({"value": 0.5, "samples_file": None}, None)
    assert cache.lookup("arith", "k2") is None
    (tmp_path / "arith.json").write_text('{"key": "k1", "res')
    assert cache.lookup("arith", "k1") is None
    cache.store("arith_mc", "k", {"value": 1.0, "samples_file": "arith_mc.samples.jsonl"}, None)
    assert cache.lookup("arith_mc", "k") is None           # a result whose samples went missing is a miss


@pytest.mark.parametrize("argv, message", [
    (["--benchmark", "arith,arith_mc", "--output", "x.json"], "--output names one result file but 2 benchmarks"),
    (["--benchmark", "arith", "--benchmark", "arith", "--output-dir", "d"], "--benchmark names arith more than once"),
    (["--benchmark", "arith", "--output-dir", "d", "--protocols-json", '{"arith_mc": {}}'],
     "--protocols-json names benchmark\\(s\\) arith_mc not given to --benchmark"),
    (["--benchmark", "arith", "--output-dir", "d", "--skip-json", '{"arith": ""}'],
     "--skip-json: the reason for 'arith' must be a non-empty string"),
    (["--benchmark", "arith,arith_mc", "--output-dir", "d", "--protocol-json", "{}"],
     "--protocol-json is for one benchmark"),
    (["--benchmark", "arith,nope", "--output-dir", "d"], "unknown benchmark 'nope'"),
    (["--benchmark", "arith", "--output", "x.json", "--output-dir", "d"], "not both"),
])
def test_cli_refuses_ambiguous_requests(argv, message, capsys):
    assert gsil_main(["evaluate", "--model", "m", *argv]) != 0
    assert __import__("re").search(message, capsys.readouterr().err)


def test_cli_scores_several_benchmarks_into_one_folder(tmp_path, workspace):
    model, data = workspace
    protocols = json.dumps({"arith": ARITH, "arith_mc": ARITH_MC})
    code = gsil_main(["evaluate", "--model", str(model), "--benchmark", "arith,arith_mc,humaneval",
                      "--data-dir", str(data), "--protocols-json", protocols, "--skip-json",
                      json.dumps({"humaneval": "not selected"}), "--output-dir", str(tmp_path / "eval"),
                      "--cache-dir", str(tmp_path / "cache"), "--threads", "1"])
    assert code == 0
    scored = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "eval").glob("*.json")}
    assert set(scored) == {"arith", "arith_mc", "humaneval"}
    assert scored["arith"]["n_samples"] == 3 and scored["humaneval"]["skipped"] == "not selected"
    assert scored["arith"]["protocol"]["threads"] == 1


@pytest.mark.parametrize("native, expected", [(True, "bfloat16"), (False, "float32")])
def test_native_dtype_is_bf16_only_where_the_cpu_computes_it(monkeypatch, native, expected):
    from gsil.generation import settings

    monkeypatch.setattr(settings, "cpu_prefers_bf16", lambda: native)
    assert harness.concrete_dtype({"dtype": "native", "device": "cpu"}) == expected
    assert harness.concrete_dtype({"dtype": "float16", "device": "cpu"}) == "float16"
    _, args, _ = harness.model_arguments(Path("m"), {**resolve("arith"), "dtype": "native"})
    assert args["dtype"] == expected and ("softmax_dtype" in args) == (expected == "bfloat16")


def test_result_names_the_dtype_native_resolved_to(monkeypatch, tmp_path, workspace):
    from gsil.generation import settings

    model, data = workspace
    monkeypatch.setattr(settings, "cpu_prefers_bf16", lambda: False)
    result = evaluate_model(model, "arith_mc", tmp_path / "mc.json", data_dir=data, overrides=[ARITH_MC],
                            cache_dir=tmp_path / "cache")
    assert result["protocol"]["dtype"] == "float32" and result["protocol"]["dtype_requested"] == "native"
    monkeypatch.setattr(settings, "cpu_prefers_bf16", lambda: True)
    other = evaluate_model(model, "arith_mc", tmp_path / "mc.json", data_dir=data, overrides=[ARITH_MC],
                           cache_dir=tmp_path / "cache")
    assert other["protocol"]["dtype"] == "bfloat16" and other["cache_key"] != result["cache_key"]


def resolve(name: str) -> dict:
    from gsil.evaluation.benchmarks import get_benchmark, resolve_protocol

    return resolve_protocol(get_benchmark(name))
