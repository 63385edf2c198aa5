"""CPU rehearsal of the paper run: config/paper.yaml + config/rehearsal.yaml through Snakemake with the
rehearsal-cpu profile, on a local Hugging Face cache built by tests/hub_fixtures.py, so that a defect of the paper
DAG fails here instead of after GPU time is spent.

The paper's code paths run unchanged: the base model comes from the Hub cache (`gsil prepare-model --source hub`,
alignment-handbook/zephyr-7b-sft-full at paper.yaml's pinned revision: here a random 2-layer MistralForCausalLM with
zephyr's chat template, which writes no BOS, and a Llama-style tokenizer that adds `<s>`), the data from the Hub
datasets (`gsil prepare-data --profile paper`: UltraFeedback train_prefs, SPIN_iter0 train), no SFT stage, the
paper's losses, optimizers, schedules and bf16 training with gradient checkpointing, and lm-eval's STOCK task YAMLs
(arc_challenge, truthfulqa_mc2, winogrande, gsm8k, hellaswag, the mmlu group) with the paper's shot counts, reading
their datasets from the cache exactly as they read the Hub, plus HumanEval. Only sizes are smaller
(config/rehearsal.yaml says which).

CUDA-only parts swapped for CPU counterparts:
  * vLLM generation -> the transformers backend (config/rehearsal.yaml, generation.*.backend);
  * DeepSpeed ZeRO-3 over NCCL on 8 GPUs -> DDP over gloo with 2 CPU processes under `accelerate launch`
    (config/profiles/rehearsal-cpu, config/accelerate/cpu_ddp.yaml), for training and reference scoring;
  * `device: cuda` -> `cpu` in the benchmark protocols, and lm-eval's `batch_size: auto` -> 8 (config/rehearsal.yaml);
  * the judged MT-Bench / HH stay off, as in paper.yaml (judge.base_url is empty).
The paper config names no attention implementation (the trainers choose sdpa/eager on the CPU themselves).

Measured 7.5 min on 2 lightly shared CPU cores (2026-11-30; 11.5 min before the rehearsal dropped SPIN's second
round and its ablation point), most of it in the 35 evaluation jobs; run alone with
`pytest -m e2e tests/test_paper_rehearsal.py`. The tests above the rehearsal's (config structure, dry run, the
cache) take seconds and carry no marker.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest

from helpers import REPO, copy_workflow, merged_config, read_csv, read_jsonl, snakemake

COMMAND = ["--configfile", "config/paper.yaml", "config/rehearsal.yaml",
           "--workflow-profile", "config/profiles/rehearsal-cpu"]

# The paper's benchmark columns (labels in config/paper.yaml; workflow/gsil/aggregate/tables.py lays them out).
PAPER_COLUMNS = ["ARC", "TruthfulQA", "Winogrande", "GSM8K", "HellaSwag", "MMLU", "HumanEval"]
LM_EVAL_BENCHMARKS = ["arc_challenge", "truthfulqa_mc2", "winogrande", "gsm8k", "hellaswag", "mmlu"]
MODELS = ["base", "dpo", "spin/iter0", "gsil-logistic/iter0", "gsil-logistic/iter1"]
TRAINED = MODELS[1:]


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    import hub_fixtures

    return hub_fixtures.build_hub_cache(tmp_path_factory.mktemp("hf"))


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory, hub_cache):
    workdir = copy_workflow(tmp_path_factory.mktemp("rehearsal"))
    env = {**hub_cache["env"], "TOKENIZERS_PARALLELISM": "false"}
    run_dir = workdir / "results" / "rehearsal"
    snakemake(*COMMAND, cwd=workdir, env=env, timeout=None, log=workdir / "snakemake.log", run_dir=run_dir)
    second = snakemake(*COMMAND, "-n", cwd=workdir, env=env, check=False)
    (run_dir / "second_run.txt").write_text(second)
    return run_dir


# ---------------------------------------------------------------------------------------------------------------
# the rehearsal config keeps the paper's structure (fast)


# Keys the rehearsal may change (sizes, and the CPU swaps named in the module docstring); anything else differing
# from the paper run is a structural drift of the rehearsal and fails below.
SIZE_KEYS = {"global_batch_size", "max_length", "max_prompt_length", "max_new_tokens", "batch_size", "limit",
             "num_problems", "max_gen_toks", "gen_kwargs", "iterations"}
SWAPS = {("backend", "vllm", "transformers"), ("device", "cuda", "cpu")}


def _differences(paper, rehearsal, path=()):
    if isinstance(paper, dict) and isinstance(rehearsal, dict):
        for key in sorted(set(paper) | set(rehearsal)):
            yield from _differences(paper.get(key), rehearsal.get(key), path + (key,))
    elif paper != rehearsal:
        yield path, paper, rehearsal


def test_rehearsal_overlay_validates_and_keeps_the_paper_structure():
    import jsonschema
    import yaml

    from gsil.aggregate.plan import build_plan

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    paper, rehearsal = merged_config("paper.yaml"), merged_config("paper.yaml", "rehearsal.yaml")
    jsonschema.Draft202012Validator(schema).validate(rehearsal)
    plan = build_plan(rehearsal)
    assert [m["id"] for m in plan["models"]] == MODELS
    assert [b["label"] for b in plan["benchmarks"]] == PAPER_COLUMNS

    # methods, ablation points and benchmarks are the paper's (a subset, in the paper's order) ...
    paper_methods = {m["name"]: m for m in paper["methods"]}
    names = [m["name"] for m in rehearsal["methods"]]
    assert names == [n for n in paper_methods if n in names]
    assert {"dpo", "spin", "gsil-logistic"} <= set(names)
    pairs = [(m, paper_methods[m["name"]]) for m in rehearsal["methods"]]
    pairs += list(zip(rehearsal["ablations"], paper["ablations"]))
    pairs += list(zip(rehearsal["benchmarks"], paper["benchmarks"]))
    assert [b["name"] for b in rehearsal["benchmarks"]] == [b["name"] for b in paper["benchmarks"]]
    for ablation, paper_ablation in zip(rehearsal["ablations"], paper["ablations"]):
        assert set(ablation["beta"]) <= set(paper_ablation["beta"])
        assert set(ablation["gamma"]) <= set(paper_ablation["gamma"])
    # ... and every other difference from the paper run is a size or a CPU swap
    drift = []
    for ours, theirs in [(rehearsal, paper)] + pairs:
        for path, old, new in _differences(theirs, ours):
            if path[0] in ("methods", "ablations", "benchmarks") and ours is rehearsal:
                continue  # compared item by item above
            if path in (("run",), ("data", "paper", "limit"), ("beta",), ("gamma",)):
                continue
            if path[-1] in SIZE_KEYS or (path[-1], old, new) in SWAPS:
                continue
            drift.append((path, old, new))
    assert not drift, f"config/rehearsal.yaml changes more than sizes and the CPU swaps: {drift}"
    for method in rehearsal["methods"]:
        assert method.get("iterations", 1) <= paper_methods[method["name"]].get("iterations", 1)
    assert [m.get("iterations", 1) for m in rehearsal["methods"][:3]] == [1, 1, 2]
    assert rehearsal["judge"]["base_url"] == ""


def test_rehearsal_command_line_merges_in_order(tmp_path):
    """Snakemake itself (a dry run) sees config.yaml < paper.yaml < rehearsal.yaml and validates the result."""
    text = snakemake("-n", "-p", *COMMAND, cwd=copy_workflow(tmp_path / "work"))
    assert "results/rehearsal/" in text and "results/paper/" not in text
    assert "gsil prepare-model --repo alignment-handbook/zephyr-7b-sft-full --revision " in text
    assert "gsil prepare-data --limit 8 --profile paper" in text
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", text, flags=re.M))
    assert int(counts["evaluate_model"]) == len(MODELS)  # one job per model for all of its benchmarks
    assert int(counts["align_selfplay"]) == 3 and int(counts["align_preferences"]) == 1


GPU_COMMAND = ["--configfile", "config/paper.yaml", "config/rehearsal.yaml", "config/rehearsal-gpu.yaml",
               "--workflow-profile", "config/profiles/rehearsal-gpu"]


def test_gpu_rehearsal_puts_back_only_the_gpu():
    """config/rehearsal-gpu.yaml undoes the CPU swap of the benchmarks (device, lm-eval's automatic batch size) and
    nothing else: the same jobs and sizes as the CPU rehearsal, in results/rehearsal-gpu/."""
    rehearsal = merged_config("paper.yaml", "rehearsal.yaml")
    gpu = merged_config("paper.yaml", "rehearsal.yaml", "rehearsal-gpu.yaml")
    paper_protocols = {b["name"]: b["protocol"] for b in merged_config("paper.yaml")["benchmarks"]}
    drift = [(path, old, new) for path, old, new in _differences(rehearsal, gpu) if path != ("run",)
             and not (path[0] == "benchmarks")]
    assert not drift and gpu["run"] == "rehearsal-gpu"
    assert [b["name"] for b in gpu["benchmarks"]] == [b["name"] for b in rehearsal["benchmarks"]]
    for ours, cpu in zip(gpu["benchmarks"], rehearsal["benchmarks"]):
        paper = paper_protocols[ours["name"]]
        assert ours["protocol"]["device"] == paper["device"] == "cuda"
        assert ours["protocol"].get("batch_size") == paper.get("batch_size")
        rest = {k: v for k, v in ours["protocol"].items() if k not in ("device", "batch_size")}
        assert rest == {k: v for k, v in cpu["protocol"].items() if k not in ("device", "batch_size")}
        assert {k: v for k, v in ours.items() if k != "protocol"} == {k: v for k, v in cpu.items() if k != "protocol"}


def test_gpu_rehearsal_dry_run_launches_as_the_paper_run(tmp_path):
    """The one-GPU profile: training and reference scoring under with-gpus and accelerate with ZeRO-3, generation on
    its own GPU, the evaluations unslotted on cuda (their protocols), all validated by Snakemake itself."""
    text = snakemake("-n", "-p", *GPU_COMMAND, cwd=copy_workflow(tmp_path / "work"))
    assert "results/rehearsal-gpu/" in text and "results/rehearsal/" not in text
    assert re.search(r'launch="gsil with-gpus --count 1 -- accelerate launch --num_processes 1 --main_process_port 0 '
                     r'--config_file config/accelerate/zero3.yaml -m gsil"', text)
    assert 'slot="gsil with-gpus --count 1 --"; else slot=; fi; OMP_NUM_THREADS=4 MKL_NUM_THREADS=4 $slot gsil ' \
           'generate' in text
    evaluations = [line for line in text.splitlines() if " gsil evaluate " in line]
    assert len(evaluations) == len(MODELS)
    assert all('if [ "0" -gt 0 ]' in line and '"device": "cuda"' in line and '"batch_size": "auto"' in line
               for line in evaluations)


# ---------------------------------------------------------------------------------------------------------------
# the cache itself (fast: no Snakemake)


def test_cache_serves_the_paper_model_offline(hub_cache):
    """The fixture model loads by repo id and pinned sha, offline, as `gsil prepare-model --source hub` loads it."""
    code = (
        "import json, sys\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "repo, rev = sys.argv[1:]\n"
        "tok = AutoTokenizer.from_pretrained(repo, revision=rev)\n"
        "model = AutoModelForCausalLM.from_pretrained(repo, revision=rev, dtype='auto')\n"
        "text = tok.apply_chat_template([{'role': 'user', 'content': 'Hi'}], add_generation_prompt=True,"
        " tokenize=False)\n"
        "print(json.dumps({'arch': type(model).__name__, 'dtype': str(model.dtype), 'text': text,"
        " 'ids': tok(text)['input_ids'][:2], 'bos': tok.bos_token_id,"
        " 'window': model.config.sliding_window, 'kv': model.config.num_key_value_heads}))\n"
    )
    env = {**os.environ, **hub_cache["env"]}
    out = subprocess.run([sys.executable, "-c", code, hub_cache["model_repo"], hub_cache["model_revision"]],
                         env=env, capture_output=True, text=True, check=True)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["arch"] == "MistralForCausalLM" and info["dtype"] == "torch.bfloat16"
    assert info["window"] and info["kv"] == 1
    # zephyr's template writes no BOS; the tokenizer's default encoding adds it
    assert not info["text"].startswith("<s>") and info["text"].startswith("<|user|>\n")
    assert info["ids"][0] == info["bos"] and info["ids"][1] != info["bos"]


# ---------------------------------------------------------------------------------------------------------------
# the rehearsal


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_data_came_from_the_hub_datasets(rehearsal, hub_cache):
    manifest = json.loads((rehearsal / "data" / "manifest.json").read_text())
    assert manifest["profile"] == "paper"
    assert manifest["counts"] == {"selfplay": 8, "spin_selfplay": 8, "preferences": 8}
    fixture = hub_cache["datasets"]
    ultrafeedback, spin = "HuggingFaceH4/ultrafeedback_binarized", "UCLA-AGI/SPIN_iter0"
    for name, repo in (("selfplay", ultrafeedback), ("preferences", ultrafeedback), ("spin_selfplay", spin)):
        source = manifest["sources"][name]
        assert source["source"] == "hub" and source["repo"] == repo and source["limit"] == 8
        assert source["resolved_sha"] == fixture[repo]["revision"], source
    source = json.loads((rehearsal / "models" / "base" / "source.json").read_text())
    assert source == {"source": "hub", "repo": hub_cache["model_repo"], "revision": hub_cache["model_revision"]}


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_second_run_has_nothing_to_do(rehearsal):
    assert "Nothing to be done" in (rehearsal / "second_run.txt").read_text()


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_paper_tables_have_the_paper_columns(rehearsal):
    rows = read_csv(rehearsal / "tables" / "main.csv")
    assert [r["Method"] for r in rows] == ["SFT (zephyr-7b-sft-full)", "DPO", "SPIN", "GSIL (logistic) (iter1)"]
    columns = list(rows[0])
    assert columns[:2] == ["Method", "Model"] and columns[-2:] == ["Average", "best_in"]
    assert [c for c in columns if c in PAPER_COLUMNS] == PAPER_COLUMNS
    for row in rows:  # every cell of ours is filled from an eval file, a percentage
        for column in PAPER_COLUMNS + ["Average"]:
            assert row[column] != "" and 0.0 <= float(row[column]) <= 100.0, (row["Method"], column)
    # Figure 6's benchmarks (aggregate.gsil_vs_dpo), in the benchmark list's order
    assert [r["Benchmark"] for r in read_csv(rehearsal / "tables" / "gsil_vs_dpo.csv")] == [
        "TruthfulQA", "GSM8K", "HumanEval"]
    # the one method of two rounds
    assert [(r["Method"], r["Iteration"]) for r in read_csv(rehearsal / "tables" / "iterations.csv")] == [
        ("GSIL (logistic)", "start (SFT)"), ("GSIL (logistic)", "iter0"), ("GSIL (logistic)", "iter1")]
    # no ablation grid in the rehearsal (the tiny run has one): the tables are there, empty
    for axis in ("beta", "gamma"):
        assert read_csv(rehearsal / "tables" / f"ablation_{axis}.csv") == []
    for name in ("gsil_vs_dpo", "ablation", "rewards", "iterations"):
        assert (rehearsal / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_every_benchmark_scored_every_model(rehearsal):
    for model in MODELS:
        for bench in LM_EVAL_BENCHMARKS + ["humaneval"]:
            result = json.loads((rehearsal / "eval" / model / f"{bench}.json").read_text())
            assert result["n_samples"] > 0 and math.isfinite(result["value"]), (model, bench, result)
        # MMLU is the stock group: one document from each of its 57 subjects
        assert json.loads((rehearsal / "eval" / model / "mmlu.json").read_text())["n_samples"] == 57
    assert not list((rehearsal / "eval").rglob("mtbench.json")) and not list((rehearsal / "eval").rglob("hh_*.json"))


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_training_and_reference_scoring_ran_as_two_processes(rehearsal):
    logs = rehearsal / "logs"
    training = sorted(logs.glob("align_selfplay/*/iter*.log")) + sorted(logs.glob("align_preferences/*.log"))
    assert len(training) == len(TRAINED)
    for path in training:
        assert re.search(r"global batch 4 = 2 process\(es\)", path.read_text()), path
    reference = sorted(logs.rglob("reference_logps/**/*.log"))
    assert len(reference) == 4
    for path in reference:
        assert "over 2 process(es)" in path.read_text(), path
    for meta in (rehearsal / "reference").rglob("*.meta.json"):
        assert json.loads(meta.read_text())["processes"] == 2, meta


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_reference_delta_is_zero_at_the_first_step(rehearsal):
    """At the first step the policy IS the reference model, so the log-ratios Δ (rewards/*) start at ~0: the
    reference log-probs were computed on the same tokens with the policy's numerics."""
    for model in TRAINED:
        first = read_jsonl(rehearsal / "train" / model / "metrics.jsonl")[0]
        # a self-play run logs the paper's words, DPO (preference pairs) TRL's
        for side in ("chosen", "rejected") if model == "dpo" else ("real", "generated"):
            delta, scale = abs(first[f"rewards/{side}"]), abs(first[f"logps/{side}"])
            # up to float rounding of a sum over up to 128 tokens: far below any real update's effect
            assert delta <= 1e-3 * scale + 1e-2, (model, side, first)


def _bos_variants(prompt_ids: list[int], bos: int) -> dict[str, list[int]]:
    body = prompt_ids[1:] if prompt_ids[:1] == [bos] else prompt_ids
    return {"one": [bos] + body, "none": body, "two": [bos, bos] + body}


def _response_logp(model, prompt_ids: list[int], response_ids: list[int], autocast: bool) -> float:
    import torch

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(torch.tensor([prompt_ids + response_ids])).logits[0].float()
    logps = torch.log_softmax(logits[len(prompt_ids) - 1:-1], dim=-1)
    return float(logps.gather(1, torch.tensor(response_ids)[:, None]).sum())


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_every_prompt_starts_with_exactly_one_bos(rehearsal):
    """Every sequence the trainers and the reference scorer built starts with exactly one BOS, although zephyr's
    template writes none: checked by re-encoding each scored pair file with the stages' own encoder (which must put
    the BOS first even for prompts cut to max_prompt_length; the scored token counts must agree), and by the
    recorded reference log-probs themselves, which must match the one-BOS sequence, not the same sequence without
    a BOS or with two (the fixture model's log-probs move by 0.2-2 nats between those; batching and bf16
    rounding move them by a few hundredths)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gsil.records import as_pairs, read_records
    from gsil.training.examples import encode_pairs

    workdir = rehearsal.parents[1]
    metas = sorted((rehearsal / "reference").rglob("*.meta.json"))
    assert len(metas) == 4
    truncated = 0
    for meta_path in metas:
        meta = json.loads(meta_path.read_text())
        model_dir = workdir / meta["model"]
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        bos = tokenizer.bos_token_id
        pairs = as_pairs(read_records(workdir / meta["pairs"], meta["kind"]), meta["kind"])
        examples, _ = encode_pairs(pairs, tokenizer, validate=False, **meta["tokenization"])
        reference = meta_path.with_name(meta_path.name[:-len(".meta.json")] + ".jsonl")
        rows = {row["id"]: row for row in read_jsonl(reference)}
        assert len(rows) == len(examples) == len(pairs)
        for example in examples:
            for side in ("positive", "negative"):
                encoded = getattr(example, side)
                ids = list(encoded.input_ids)
                assert ids[0] == bos and ids.count(bos) == 1, (reference.name, example.id, side, ids[:8])
                truncated += encoded.prompt_truncated
                assert rows[example.id][f"{side}_tokens"] == encoded.response_length, (reference.name, example.id)
        # The scored values: the reference log-probs of a few positives, recomputed with the reference's numerics
        # (fp32 weights, bf16 autocast where it recorded one) for the prompt with one, no and two BOS tokens.
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        autocast = meta["numerics"]["autocast_dtype"] == "bfloat16"
        for example in examples[:3]:
            encoded = example.positive
            prompt = list(encoded.input_ids[:encoded.prompt_length])
            response = list(encoded.input_ids[encoded.prompt_length:])
            scores = {name: _response_logp(model, ids, response, autocast)
                      for name, ids in _bos_variants(prompt, bos).items()}
            gaps = {name: abs(rows[example.id]["positive"] - value) for name, value in scores.items()}
            assert min(gaps, key=gaps.get) == "one" and gaps["one"] < 0.15, (
                reference.name, example.id, rows[example.id], scores)
    assert truncated > 0  # the fixture's long prompts were cut, and kept their BOS
