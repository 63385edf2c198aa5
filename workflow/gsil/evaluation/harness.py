"""lm-evaluation-harness, driven in-process: task rendering, model arguments, one task run, its headline number.

The suite's task YAMLs (workflow/tasks) are templates with `@GSIL_DATA_DIR@` / `@GSIL_RUN_DIR@` placeholders;
each run renders them into its own folder with absolute paths (relative `data_files` would be resolved against the
working directory) and hands that folder to `TaskManager(include_path=...)`, beside lm-eval's stock tasks.

Import order matters: `huggingface_hub` and `datasets` read HF_HUB_OFFLINE / HF_DATASETS_OFFLINE when they are
first imported, so `configure_offline` runs before anything here imports lm_eval (all such imports are lazy).
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from gsil.evaluation.groups import aggregate_group, is_group, leaf_task_names
from gsil.evaluation.hflm import DECODERS, LOGLIKELIHOODS, suite_hflm_class
from gsil.evaluation.suite_tasks import suite_tasks_dir
from gsil.logutil import GsilError

log = logging.getLogger("gsil.evaluate")

DATA_PLACEHOLDER = "@GSIL_DATA_DIR@"
RUN_PLACEHOLDER = "@GSIL_RUN_DIR@"
OFFLINE_SWITCHES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_EVALUATE_OFFLINE")


def configure_offline(offline: bool) -> None:
    """Switch the Hugging Face libraries to offline mode (must run before they are imported)."""
    if offline:
        for name in OFFLINE_SWITCHES:
            os.environ[name] = "1"


def harness_version() -> str | None:
    try:
        return importlib.metadata.version("lm_eval")
    except importlib.metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------------------------------------------
# task rendering


class _TaggedLoader(yaml.SafeLoader):
    """Reads lm-eval YAMLs without resolving `!function` tags (we only need plain keys such as data_files)."""


_TaggedLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def render_tasks(run_dir: Path, data_dir: Path | None, tasks_dir: Path | None = None) -> Path:
    """Copy the suite's task folder into `run_dir/tasks` with the placeholders replaced by absolute paths."""
    tasks_dir = tasks_dir or suite_tasks_dir()
    if not tasks_dir.is_dir():
        raise GsilError(f"suite task folder not found: {tasks_dir}, nor ./workflow/tasks in {Path.cwd()} (run from "
                        "the repository root, or set the protocol key tasks_dir)")
    target = run_dir / "tasks"
    shutil.copytree(tasks_dir, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    for path in target.rglob("*.yaml"):
        text = path.read_text(encoding="utf-8")
        if DATA_PLACEHOLDER in text and data_dir is not None:
            text = text.replace(DATA_PLACEHOLDER, str(data_dir.resolve()))
        text = text.replace(RUN_PLACEHOLDER, str(run_dir.resolve()))
        path.write_text(text, encoding="utf-8")
    return target


def find_task_yaml(rendered_dir: Path, task: str) -> Path | None:
    """The rendered YAML that defines `task`, or None when the task is not one of the suite's own."""
    for path in sorted(rendered_dir.rglob("*.yaml")):
        if _read_yaml(path).get("task") == task:
            return path
    return None


def _read_yaml(yaml_path: Path) -> dict[str, Any]:
    config = yaml.load(yaml_path.read_text(encoding="utf-8"), Loader=_TaggedLoader) or {}
    return config if isinstance(config, dict) else {}


def local_data_files(yaml_path: Path) -> list[str]:
    files = ((_read_yaml(yaml_path).get("dataset_kwargs") or {}).get("data_files")) or []
    if isinstance(files, str):
        return [files]
    if isinstance(files, dict):
        return [f for value in files.values() for f in ([value] if isinstance(value, str) else value)]
    return list(files)


def check_local_data(yaml_path: Path) -> None:
    """Fail before any model is loaded when a suite task's data file is missing or malformed.

    A suite YAML names the record kind of its files (`metadata.gsil_record_kind`); every file is then validated
    with `gsil.records.read_records`, which names the file, line and field of the first bad row.
    """
    kind = (_read_yaml(yaml_path).get("metadata") or {}).get("gsil_record_kind")
    for name in local_data_files(yaml_path):
        if DATA_PLACEHOLDER in name:
            raise GsilError(f"task {yaml_path.name} reads {name!r}: pass --data-dir (the folder holding eval/)")
        if not Path(name).is_file():
            raise GsilError(f"task {yaml_path.name}: data file {name} does not exist "
                            "(written by `gsil prepare-data`; check --data-dir)")
        if kind:
            from gsil.records import read_records

            rows = read_records(name, kind)
            if not rows:
                raise GsilError(f"task {yaml_path.name}: data file {name} holds no records")


# ----------------------------------------------------------------------------------------------------------------
# model arguments


def concrete_dtype(protocol: dict[str, Any]) -> str:
    """The protocol's weights dtype with `native` resolved for its device: bfloat16 where the device computes bf16
    natively and, on a CPU, measurably faster (gsil.cpu.bf16_choice), float32 elsewhere; any other value is returned
    as it is."""
    if protocol["dtype"] != "native":
        return protocol["dtype"]
    from gsil.generation.settings import resolve_precision

    device = protocol.get("device") or "cpu"
    return "bfloat16" if resolve_precision("auto", "cuda" if device.startswith("cuda") else "cpu") == "bf16" \
        else "float32"


def model_arguments(model_dir: Path, protocol: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(lm-eval model type, model_args, batch/device settings) for the `hf` or `vllm` backend."""
    model_type = protocol["model_type"]
    protocol = {**protocol, "dtype": concrete_dtype(protocol)}
    args: dict[str, Any] = {"pretrained": str(model_dir), "dtype": protocol["dtype"]}
    if model_type == "hf":
        if protocol.get("autocast_dtype"):
            args["mixed_precision_dtype"] = protocol["autocast_dtype"]
        if protocol["dtype"] in ("bfloat16", "float16") or protocol.get("autocast_dtype"):
            # log-softmax over the vocabulary in float32: bf16 rounding can flip close multiple-choice calls
            args["softmax_dtype"] = "float32"
        if protocol.get("max_length"):
            args["max_length"] = int(protocol["max_length"])
        decoder = protocol.get("decoder") or "drop_finished"
        if decoder not in DECODERS:
            raise GsilError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
        loglikelihood = protocol.get("loglikelihood") or "lm_eval"
        if loglikelihood not in LOGLIKELIHOODS:
            raise GsilError(f"loglikelihood must be one of {', '.join(LOGLIKELIHOODS)}, got {loglikelihood!r}")
        settings = {"batch_size": protocol["batch_size"], "max_batch_size": protocol["max_batch_size"],
                    "device": protocol["device"], "decoder": decoder, "loglikelihood": loglikelihood}
    elif model_type == "vllm":
        args.update(tensor_parallel_size=int(protocol["tensor_parallel_size"]),
                    gpu_memory_utilization=float(protocol["gpu_memory_utilization"]),
                    seed=int(protocol["seed"]))
        if protocol.get("max_model_len"):
            args["max_model_len"] = int(protocol["max_model_len"])
        settings = {"batch_size": protocol["batch_size"], "max_batch_size": protocol["max_batch_size"],
                    "device": None}
    else:
        raise GsilError(f"model_type must be 'hf' or 'vllm', got {model_type!r}")
    return model_type, args, settings


def set_threads(protocol: dict[str, Any]) -> None:
    if protocol.get("threads"):
        import torch

        torch.set_num_threads(int(protocol["threads"]))


def _create_lm(model_type: str, args: dict[str, Any], settings: dict[str, Any]):
    from lm_eval.api.registry import get_model

    if model_type == "vllm":
        _require_vllm()
    settings = dict(settings)
    # The suite's HFLM differs from lm-eval's only in how it decodes greedy requests and, where asked, scores the
    # choices of a shared context (gsil.evaluation.hflm).
    decoder, loglikelihood = settings.pop("decoder", None), settings.pop("loglikelihood", None)
    suite = decoder == "drop_finished" or loglikelihood == "shared_context"
    model_class = suite_hflm_class() if suite else get_model(model_type)
    lm = model_class.create_from_arg_obj(args, {k: v for k, v in settings.items() if v is not None})
    if suite:
        lm.drop_finished_rows = decoder == "drop_finished"
        lm.shared_context_loglikelihood = loglikelihood == "shared_context"
    return lm


class ModelPool:
    """The models of one evaluation process: each set of weights is loaded once and shared by every benchmark.

    `gsil evaluate` scores one model on all of its benchmarks in one process (the workflow's evaluate_model job);
    loading the weights, and importing torch, transformers and lm-eval, then happen once per model instead of once
    per benchmark. For the `hf` backend the first protocol loads the weights through lm-eval's own loader (the same
    numerics as a run of that benchmark alone); a later protocol with the same weights (path and dtype) but other
    wrapper settings (batch size, autocast, softmax dtype, context length) gets a new HFLM around the same
    `transformers` model, lm-eval's documented pre-initialised-model path. A vLLM engine holds most of the GPU's
    memory, so a protocol with other vLLM settings replaces it.
    """

    def __init__(self) -> None:
        self._entries: list[tuple[str, dict[str, Any], dict[str, Any], Any]] = []  # (type, args, settings, LM)

    def get(self, model_dir: Path, protocol: dict[str, Any]):
        model_type, args, settings = model_arguments(model_dir, protocol)
        for entry_type, entry_args, entry_settings, lm in self._entries:
            if (entry_type, entry_args, entry_settings) == (model_type, args, settings):
                return lm
        same_weights = [lm for entry_type, entry_args, _, lm in self._entries if entry_type == model_type == "hf"
                        and (entry_args["pretrained"], entry_args["dtype"]) == (args["pretrained"], args["dtype"])]
        if same_weights:
            log.info("reusing the loaded weights of %s with other wrapper settings", model_dir)
            shared = same_weights[0]
            lm = _create_lm(model_type, {**args, "pretrained": shared.model, "tokenizer": shared.tokenizer}, settings)
        else:
            if model_type == "vllm":
                self.close()
            lm = _create_lm(model_type, args, settings)
        self._entries.append((model_type, args, settings, lm))
        return lm

    def close(self) -> None:
        """Drop every loaded model (a vLLM engine frees its GPU memory when its last reference goes)."""
        self._entries.clear()
        import gc

        gc.collect()


def load_lm(model_dir: Path, protocol: dict[str, Any], pool: ModelPool | None = None):
    """An lm-eval LM object (HFLM or VLLM) for direct generation (MT-Bench, HH); same arguments as the tasks.
    With a `pool`, weights already loaded in this process are shared."""
    set_threads(protocol)
    if pool is not None:
        return pool.get(model_dir, protocol)
    model_type, args, settings = model_arguments(model_dir, protocol)
    return _create_lm(model_type, args, settings)


def _require_vllm() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError as err:
        raise GsilError("model_type 'vllm' needs the vllm package (pip install 'gsil-suite[vllm]') "
                        "and a CUDA GPU; use model_type 'hf' on CPU") from err


def generate_chat(lm, conversations: list[list[dict[str, str]]], gen_kwargs: dict[str, Any],
                  apply_chat_template: bool = True) -> list[str]:
    """Greedy/sampled answers of `lm` to chat histories ending with a user turn, batched by the backend."""
    from lm_eval.api.instance import Instance

    requests = []
    for index, messages in enumerate(conversations):
        if apply_chat_template:
            context = lm.apply_chat_template(messages, add_generation_prompt=True)
        else:
            context = "\n\n".join(m["content"] for m in messages)
        requests.append(Instance(request_type="generate_until", doc={}, arguments=(context, dict(gen_kwargs)),
                                 idx=index, metadata=("gsil_chat", index, 1)))
    return [text.strip() for text in lm.generate_until(requests)]


# ----------------------------------------------------------------------------------------------------------------
# running one task


def _is_offline_failure(err: BaseException) -> bool:
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    markers = ("OfflineModeIsEnabled", "Couldn't reach", "is not cached", "offline mode", "LocalEntryNotFound",
               "Max retries exceeded", "Failed to resolve", "Network is unreachable")
    return any(isinstance(e, ConnectionError) or any(m in repr(e) for m in markers) for e in chain)


def offline_error(dataset: str | None, task: str, err: BaseException) -> GsilError:
    switches = ", ".join(f"{n}={os.environ.get(n, '<unset>')}" for n in OFFLINE_SWITCHES[:2])
    return GsilError(
        f"task {task!r} cannot reach its dataset {dataset or '(see the task YAML)'}: {err}. "
        f"The Hub is not reachable or offline mode is on ({switches}); pre-download the dataset into the "
        "Hugging Face cache on a connected machine, or set the protocol key offline: false where the Hub is "
        "reachable.")


def stock_task_dirs(task: str) -> list[str]:
    """The folders of lm-eval's stock task YAMLs that define `task` (a task, group or tag); [] when none is found."""
    from gsil.preflight import StockTasks, lm_eval_tasks_dir

    root = lm_eval_tasks_dir()
    if root is None:
        return []
    return sorted({str(path.parent) for path in StockTasks(root).defining_files(task)})


def load_task(task_manager, task: str, dataset: str | None):
    """Build the task (downloading/reading its data) before the model is loaded, so bad data fails fast."""
    try:
        loaded = task_manager.load([task])
    except KeyError as err:
        raise GsilError(f"lm-eval does not know the task {task!r} ({err}); suite tasks live in "
                        f"{suite_tasks_dir()}") from err
    except Exception as err:  # datasets raises ConnectionError, FileNotFoundError, DatasetNotFoundError ...
        if _is_offline_failure(err):
            raise offline_error(dataset, task, err) from err
        raise GsilError(f"task {task!r} failed to load its data ({dataset}): {type(err).__name__}: {err}") from err
    obj = loaded["groups"].get(task) or loaded["tasks"].get(task)
    leaves = list(loaded["tasks"].values())
    return (obj if obj is not None else task), leaves


def run_task(model_dir: Path, protocol: dict[str, Any], run_dir: Path, data_dir: Path | None,
             *, predict_only: bool = False, repeats: int | None = None,
             pool: ModelPool | None = None) -> dict[str, Any]:
    """Run one lm-eval task on one model; returns lm-eval's output dict (results, samples, n-samples, ...).
    With a `pool`, the model is taken from (or loaded into) it instead of being loaded for this task alone."""
    configure_offline(bool(protocol.get("offline", True)))
    task = protocol["task"]
    tasks_dir = Path(protocol["tasks_dir"]) if protocol.get("tasks_dir") else suite_tasks_dir()
    rendered = render_tasks(run_dir, data_dir, tasks_dir)
    suite_yaml = find_task_yaml(rendered, task)
    if suite_yaml is not None:
        check_local_data(suite_yaml)

    import lm_eval
    from lm_eval.tasks import TaskManager

    # Indexing lm-eval's thousands of stock task YAMLs takes 20-50 s of CPU per job; a suite task needs none of them
    # and a stock task only the folders of the YAMLs that define it (found by a text scan in about a second).
    stock_dirs = [] if suite_yaml is not None else stock_task_dirs(task)
    task_manager = TaskManager(include_path=[str(rendered), *stock_dirs], include_defaults=False) \
        if suite_yaml is not None or stock_dirs else TaskManager(include_path=str(rendered), include_defaults=True)
    try:
        task_obj, leaves = load_task(task_manager, task, protocol.get("dataset"))
    except GsilError:
        if not stock_dirs:
            raise
        log.info("task %s did not load from %s alone; indexing every stock task", task, stock_dirs)
        task_manager = TaskManager(include_path=str(rendered), include_defaults=True)
        task_obj, leaves = load_task(task_manager, task, protocol.get("dataset"))
    if repeats is not None:
        for leaf in leaves:
            leaf.set_config(key="repeats", value=int(repeats))

    model_type, model_args, settings = model_arguments(model_dir, protocol)
    if model_type == "vllm":
        _require_vllm()
    set_threads(protocol)
    seed = int(protocol["seed"])
    log.info("lm-eval %s: task %s, %s-shot, limit %s, chat template %s, model %s (%s)", harness_version(), task,
             protocol["num_fewshot"], protocol.get("limit"), protocol["apply_chat_template"], model_dir, model_type)
    model = _create_lm(model_type, model_args, settings) if pool is None else pool.get(model_dir, protocol)
    try:
        out = lm_eval.simple_evaluate(
            model=model, tasks=[task_obj], num_fewshot=protocol["num_fewshot"],
            batch_size=settings["batch_size"], max_batch_size=settings["max_batch_size"], device=settings["device"],
            limit=protocol.get("limit"), bootstrap_iters=int(protocol.get("bootstrap_iters", 1000)),
            log_samples=bool(protocol.get("log_samples", True)) or predict_only,
            system_instruction=protocol.get("system_instruction"),
            apply_chat_template=bool(protocol["apply_chat_template"]),
            fewshot_as_multiturn=bool(protocol["apply_chat_template"] and protocol.get("fewshot_as_multiturn")),
            gen_kwargs=protocol.get("gen_kwargs") or None, task_manager=task_manager, predict_only=predict_only,
            random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
        )
    except Exception as err:
        if _is_offline_failure(err):
            raise offline_error(protocol.get("dataset"), task, err) from err
        raise
    if out is None:  # non-zero rank of a distributed run
        raise GsilError("lm-eval returned no results on this process (not rank 0)")
    return out


def headline(out: dict[str, Any], task: str, metric: str, filter_name: str,
             aggregation: str = "harness") -> dict[str, Any]:
    """The headline metric, its stderr and the evaluated document count of `task` from lm-eval's output.

    For a group task `aggregation` chooses the headline (gsil.evaluation.groups): lm-eval's own group value
    ("harness") or the unweighted mean over the leaf subtasks ("subtask_mean"); the returned "aggregation" holds
    both, with every subtask's value. It is None for a single task.
    """
    results = out["results"].get(task)
    if results is None:
        raise GsilError(f"lm-eval returned no results for task {task!r}; got {sorted(out['results'])}")
    key = f"{metric},{filter_name}"
    group = is_group(out, task)
    if key not in results and not (group and aggregation == "subtask_mean"):
        available = sorted(k for k in results if "," in k and "_stderr" not in k)
        raise GsilError(f"task {task!r} has no metric {key!r} (protocol keys metric/filter); available: {available}")
    stderr = results.get(f"{metric}_stderr,{filter_name}")
    if not isinstance(stderr, (int, float)) or (isinstance(stderr, float) and math.isnan(stderr)):
        stderr = None
    counts = out.get("n-samples") or {}
    n_samples = sum(int(counts[name]["effective"]) for name in leaf_task_names(out, task) if name in counts)
    metrics = {k: v for k, v in results.items() if k != "alias" and isinstance(v, (int, float))}
    head = {"value": float(results[key]) if key in results else None,
            "stderr": None if stderr is None else float(stderr), "n_samples": n_samples, "metrics": metrics,
            "aggregation": None}
    if group:
        trace = aggregate_group(out, task, key, aggregation)
        head.update(value=trace["value"], stderr=trace["stderr"], aggregation=trace)
    return head
