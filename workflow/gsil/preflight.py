"""Fail-fast checks of a run, before any job starts: what would otherwise fail hours later, checked in seconds.

Each check returns a list of problems, one string each, naming the config key, benchmark, environment variable or
path at fault and what to do. They take what they would otherwise look up (the environment, a network probe, the
GPU count, the free space) as arguments, so the tests drive them with fakes; the default look-ups live beside them.

  hub_needed_while_offline  a benchmark reads a dataset from the Hugging Face Hub, its job runs offline, and the
                            dataset is not in the local `datasets` cache
  judge_problems            a judge endpoint is configured but its key variable is unset, or it does not answer
  gpu_problems              a local run whose jobs ask for GPUs on a machine without (enough of) them
  disk_problems             less free space than the run's models and training checkpoints take

`gsil preflight` (gsil/stages/preflight.py) runs them all; the Snakefile runs it in its `onstart` handler, i.e.
only when the workflow really executes jobs (not in a dry run), and stops before the first job when it fails.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

# huggingface_hub's reading of its boolean switches (constants._is_true).
_TRUE = {"1", "ON", "YES", "TRUE"}
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
DEFAULT_HUB_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT_S = 3.0
# `datasets` builders that read local files: a stock task with such a dataset_path needs no Hub.
_LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas", "webdataset", "imagefolder", "audiofolder"}
# Executors that run the jobs on this machine; any other (slurm, ...) runs them elsewhere.
LOCAL_EXECUTORS = {None, "", "local", "dryrun", "touch"}
SKIP_VARIABLE = "GSIL_SKIP_PREFLIGHT"
# The workflow's rules that write model folders and training checkpoints (workflow/rules/{data,sft,align}.smk).
MODEL_RULES = ("prepare_model", "sft_train", "align_selfplay", "align_preferences")

Warn = Callable[[str], None]


def _ignore(_message: str) -> None:
    pass


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


# ================================================================================================================
# the Hugging Face Hub


def env_offline(environ: Mapping[str, str]) -> str | None:
    """'HF_HUB_OFFLINE=1' (the first offline switch that is on), or None."""
    for name in OFFLINE_VARIABLES:
        if str(environ.get(name, "")).strip().upper() in _TRUE:
            return f"{name}={environ[name]}"
    return None


def probe_url(url: str, *, method: str = "GET", timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when `url` answers at all (any HTTP status, 401 and 404 included), else why not (connection refused,
    name not resolved, timeout). No credentials are sent."""
    request = urllib.request.Request(url, method=method, headers={"User-Agent": "gsil-preflight"})
    result: list[str | None] = []

    def attempt() -> None:
        try:
            with urllib.request.urlopen(request, timeout=timeout):
                result.append(None)
        except urllib.error.HTTPError:
            result.append(None)  # the server answered
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            result.append(reason if isinstance(reason, str) else f"{type(reason).__name__}: {reason}")

    # urlopen's timeout does not bound the name lookup: a hanging resolver must not hang the run either.
    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout + 1.0)
    return result[0] if result else f"no answer within {timeout + 1.0:.0f} s"


def hub_offline_reason(environ: Mapping[str, str], probe: Callable[[str], str | None] | None = None) -> str | None:
    """Why jobs of this run cannot reach the Hub: an offline switch in the environment, or the Hub endpoint not
    answering within a few seconds; None when it is reachable (or `probe` is None: not checked)."""
    switch = env_offline(environ)
    if switch:
        return f"{switch} is set"
    if probe is None:
        return None
    endpoint = (environ.get("HF_ENDPOINT") or DEFAULT_HUB_ENDPOINT).rstrip("/")
    failure = probe(endpoint)
    return f"the Hub {endpoint} does not answer from here: {failure}" if failure else None


def datasets_cache_dir(environ: Mapping[str, str]) -> Path:
    """Where `datasets` keeps prepared datasets: HF_DATASETS_CACHE, else $HF_HOME/datasets."""
    if environ.get("HF_DATASETS_CACHE"):
        return Path(environ["HF_DATASETS_CACHE"]).expanduser()
    return _hf_home(environ) / "datasets"


def hub_cache_dir(environ: Mapping[str, str]) -> Path:
    """Where huggingface_hub keeps downloaded repos: HF_HUB_CACHE, else $HF_HOME/hub."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if environ.get(name):
            return Path(environ[name]).expanduser()
    return _hf_home(environ) / "hub"


def _hf_home(environ: Mapping[str, str]) -> Path:
    if environ.get("HF_HOME"):
        return Path(environ["HF_HOME"]).expanduser()
    xdg = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface"


def _normalised(name: str) -> str:
    # `datasets` snake-cases the dataset name of its cache folder (SPIN_iter0 -> spin_iter0, HellaSwag ->
    # hella_swag); comparing without case and underscores matches either spelling.
    return name.replace("_", "").lower()


def dataset_in_cache(datasets_cache: Path, repo: str, config: str | None) -> bool:
    """Whether `load_dataset(repo, config)` finds a prepared copy offline.

    With HF_HUB_OFFLINE set, `datasets` (5.x, datasets.load.dataset_module_factory) never reads the Hub cache for a
    dataset: it falls back to its own cache of prepared Arrow files, <HF_DATASETS_CACHE>/<org>___<name>/<config>/
    <version>/<hash>/ (CachedDatasetModuleFactory). So that folder, for the task's config, is what counts.
    """
    org, _, name = repo.rpartition("/")
    if not datasets_cache.is_dir():
        return False
    for entry in datasets_cache.iterdir():
        entry_org, sep, entry_name = entry.name.rpartition("___")
        if not entry.is_dir() or entry_org != org or (org and not sep):
            continue
        if _normalised(entry_name) != _normalised(name):
            continue
        pattern = os.path.join(glob.escape(str(entry)), glob.escape(config) if config else "*", "*", "*")
        if any(os.path.isdir(found) for found in glob.glob(pattern)):
            return True
    return False


def dataset_in_hub_cache(hub_cache: Path, repo: str) -> bool:
    return (hub_cache / f"datasets--{repo.replace('/', '--')}" / "snapshots").is_dir()


def default_cache_has(environ: Mapping[str, str]) -> Callable[[str, str | None], bool]:
    root = datasets_cache_dir(environ)
    return lambda repo, config: dataset_in_cache(root, repo, config)


class _TagIgnoringLoader(yaml.SafeLoader):
    """Reads lm-eval task YAMLs without resolving `!function` tags (only plain keys are needed here)."""


_TagIgnoringLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_TagIgnoringLoader)
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def task_names(tasks_dir: Path) -> set[str]:
    """The `task:` / `group:` names defined by the YAMLs under `tasks_dir` (the suite's own tasks)."""
    names = set()
    for path in sorted(Path(tasks_dir).rglob("*.yaml")):
        data = _load_yaml(path)
        for key in ("task", "group"):
            if isinstance(data.get(key), str):
                names.add(data[key])
    return names


def lm_eval_tasks_dir() -> Path | None:
    """lm-eval's stock task folder, found without importing lm_eval (seconds of imports)."""
    import importlib.util

    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "tasks"
    return path if path.is_dir() else None


class StockTasks:
    """The Hub datasets of lm-eval stock tasks and groups, read from the task YAMLs as text.

    lm-eval's TaskManager indexes every one of its ~14,000 YAMLs with the full loader (about 20 s of CPU); a regular
    expression over the raw text finds the few that define a name in about a second. A task's `dataset_path` and
    `dataset_name` come from its YAML and the files it `include`s; a group's from the tasks, groups and tags it
    lists, recursively.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self._texts: list[tuple[Path, str]] | None = None

    def _all(self) -> list[tuple[Path, str]]:
        if self._texts is None:
            self._texts = []
            for path in sorted(self.root.rglob("*.yaml")):
                try:
                    self._texts.append((path, path.read_text(encoding="utf-8", errors="replace")))
                except OSError:
                    continue
        return self._texts

    def _defining(self, name: str) -> list[Path]:
        pattern = re.compile(rf"^[\"']?(?:task|group)[\"']?\s*:\s*[\"']?{re.escape(name)}[\"']?\s*(?:#.*)?$", re.M)
        return [path for path, text in self._all() if name in text and pattern.search(text)]

    def defining_files(self, name: str) -> list[Path]:
        """The YAMLs that define `name` as a task or group, else those that tag it."""
        return self._defining(name) or self._tagged(name)

    def _tagged(self, name: str) -> list[Path]:
        found = []
        for path, text in self._all():
            if name in text and "tag" in text:
                tags = _load_yaml(path).get("tag")
                if tags == name or (isinstance(tags, list) and name in tags):
                    found.append(path)
        return found

    def _config(self, path: Path, depth: int = 0) -> dict[str, Any]:
        """A task YAML merged over the files it includes (the including file wins, as in lm-eval)."""
        data = _load_yaml(path)
        include = data.get("include")
        if isinstance(include, str) and depth < 8:
            base = Path(include) if os.path.isabs(include) else path.parent / include
            data = {**self._config(base, depth + 1), **{k: v for k, v in data.items() if k != "include"}}
        return data

    def datasets(self, name: str, _seen: set[str] | None = None) -> set[tuple[str | None, str | None]]:
        """{(dataset_path, dataset_name)} the task or group reads; (None, None) for a task whose YAML names no
        dataset (a Python-class task). KeyError when no YAML defines `name`."""
        seen = _seen if _seen is not None else set()
        if name in seen:
            return set()
        seen.add(name)
        paths = self._defining(name)
        if not paths:
            paths = self._tagged(name)
        if not paths:
            raise KeyError(name)
        found: set[tuple[str | None, str | None]] = set()
        for path in paths:
            config = self._config(path)
            if config.get("group") == name or (config.get("task") != name and name not in _as_list(config.get("tag"))):
                for entry in _as_list(config.get("task")):
                    found |= self._entry_datasets(entry, seen)
            else:
                found.add((config.get("dataset_path"), config.get("dataset_name")))
        return found

    def _entry_datasets(self, entry: Any, seen: set[str]) -> set[tuple[str | None, str | None]]:
        if isinstance(entry, str):
            return self.datasets(entry, seen)
        if isinstance(entry, dict):
            if entry.get("dataset_path"):
                return {(entry["dataset_path"], entry.get("dataset_name"))}
            if isinstance(entry.get("task"), str):
                return self.datasets(entry["task"], seen)
        return set()


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _is_local_dataset(path: str) -> bool:
    return path in _LOCAL_BUILDERS or path.startswith(("/", "./", "../", "~")) or os.path.isdir(path)


@dataclass
class HubNeed:
    """What one configured benchmark reads from the Hub."""
    benchmark: str
    what: str                                # "lm-eval stock task 'arc_challenge'", "protocol questions: hub"
    datasets: list[tuple[str, str | None]]   # (repo, config) pairs read from the Hub
    forced_offline: bool                     # protocol offline: true: its job sets HF_HUB_OFFLINE itself
    unknown: bool = False                    # a stock task whose YAML names no dataset


def effective_protocols(config: dict, names: Iterable[str] | None = None) -> tuple[dict[str, dict], list[str]]:
    """{benchmark: protocol as `gsil evaluate` resolves it} for the enabled benchmarks (those in `names` if given),
    built like the workflow's `benchmark_protocols` (config judge under the protocol's), and the problems of the
    protocols that `gsil evaluate` would refuse (unknown benchmark or key)."""
    from gsil.aggregate.plan import enabled_benchmarks
    from gsil.evaluation.benchmarks import get_benchmark, resolve_protocol
    from gsil.logutil import GsilError

    wanted = None if names is None else set(names)
    enabled = {id(entry) for entry in enabled_benchmarks(config)}
    protocols, problems = {}, []
    for index, entry in enumerate(config.get("benchmarks") or []):
        if id(entry) not in enabled or (wanted is not None and entry["name"] not in wanted):
            continue
        protocol = dict(entry.get("protocol") or {})
        if entry.get("needs_judge"):
            protocol["judge"] = {**(config.get("judge") or {}), **(protocol.get("judge") or {})}
        try:
            protocols[entry["name"]] = resolve_protocol(get_benchmark(entry["name"]), protocol)
        except GsilError as err:
            problems.append(f"benchmarks[{index}] ({entry['name']}): {err}; `gsil evaluate` would refuse it "
                            "after training. Fix its `protocol` in the config.")
    return protocols, problems


def hub_needs(protocols: Mapping[str, dict], *, suite_tasks: Callable[[dict], set[str]] | None = None,
              stock_datasets: Callable[[str], set[tuple[str | None, str | None]]] | None = None
              ) -> tuple[list[HubNeed], list[str]]:
    """What each benchmark reads from the Hub, from the registry (gsil.evaluation.benchmarks): an lm-eval task that
    is not one of the suite's own (workflow/tasks, or the protocol's tasks_dir) is a stock task, whose datasets the
    lm-eval YAMLs name; a protocol source set to "hub" (MT-Bench `questions`, HH `prompts`) reads `hub_dataset`.
    Returns the needs and the problems (a task lm-eval does not know)."""
    from gsil.evaluation.benchmarks import get_benchmark
    from gsil.evaluation.suite_tasks import suite_tasks_dir

    suite_cache: dict[str, set[str]] = {}

    def default_suite(protocol: dict) -> set[str]:
        folder = str(protocol.get("tasks_dir") or suite_tasks_dir())
        if folder not in suite_cache:
            suite_cache[folder] = task_names(Path(folder))
        return suite_cache[folder]

    stock: StockTasks | None = None

    def default_stock(task: str) -> set[tuple[str | None, str | None]]:
        nonlocal stock
        if stock is None:
            root = lm_eval_tasks_dir()
            if root is None:
                raise KeyError(task)
            stock = StockTasks(root)
        return stock.datasets(task)

    suite_tasks = suite_tasks or default_suite
    stock_datasets = stock_datasets or default_stock
    needs, problems = [], []
    for name, protocol in protocols.items():
        bench = get_benchmark(name)
        forced = bool(protocol.get("offline", True))
        if bench.runner == "lm_eval" and protocol.get("task") not in suite_tasks(protocol):
            task = protocol["task"]
            try:
                found = stock_datasets(task)
            except KeyError:
                problems.append(f"benchmark {name!r}: lm-eval has no task {task!r} (neither a stock task nor one of "
                                f"the suite's in {protocol.get('tasks_dir') or 'workflow/tasks'}); its evaluation "
                                "would fail after training. Fix the protocol key `task` or the benchmark name.")
                continue
            hub = sorted((p, c) for p, c in found if p and not _is_local_dataset(p))
            unknown = any(not p for p, _ in found)
            if hub or unknown:
                needs.append(HubNeed(name, f"lm-eval stock task {task!r}", hub, forced, unknown))
        sources = [key for key, value in protocol.items() if value == "hub"]
        if sources and protocol.get("hub_dataset"):
            needs.append(HubNeed(name, f"protocol {sources[0]}: hub", [(protocol["hub_dataset"], None)], forced))
    return needs, problems


def hub_needed_while_offline(needs: Iterable[HubNeed], offline: bool, cache_has: Callable[[str, str | None], bool],
                             *, offline_reason: str = "", cache_label: str = "the local datasets cache",
                             hub_copy: Callable[[str], bool] | None = None, warn: Warn = _ignore) -> list[str]:
    """Benchmarks whose job will run without the Hub (the run is `offline`, or the protocol's `offline: true`, the
    default, makes the job set HF_HUB_OFFLINE itself) and whose Hub datasets are not all in the local cache."""
    problems = []
    for need in needs:
        if not (offline or need.forced_offline):
            continue
        why = (f"its protocol has offline: true (the default), so its job runs with HF_HUB_OFFLINE=1"
               if need.forced_offline else f"the run is offline ({offline_reason or 'HF_HUB_OFFLINE'})")
        if need.unknown:
            warn(f"benchmark {need.benchmark!r} ({need.what}): its lm-eval YAML names no dataset_path, so whether "
                 f"its data is cached cannot be checked; {why}.")
        missing = [(repo, config) for repo, config in need.datasets if not cache_has(repo, config)]
        if not missing:
            continue
        names = ", ".join(f"{repo} ({config})" if config else repo for repo, config in missing[:4])
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        downloaded = [repo for repo, _ in missing if hub_copy and hub_copy(repo)]
        hint = (f" ({', '.join(sorted(set(downloaded)))} is in the Hub cache, but `datasets` reads only its "
                "prepared copy offline: load it once with the Hub reachable)") if downloaded else ""
        fix = ("set offline: false in its protocol and run where the Hub is reachable" if need.forced_offline
               else "run where the Hub is reachable")
        repo, config = missing[0]
        load = f"datasets.load_dataset('{repo}'" + (f", '{config}')" if config else ")")
        problems.append(
            f"benchmark {need.benchmark!r} ({need.what}) reads {names}{more} from the Hugging Face Hub, but {why} "
            f"and that data is not in {cache_label}{hint}. Pre-download it with the same HF_HOME where the Hub is "
            f"reachable (`python -c \"import datasets; {load}\"`, each config), {fix}, or remove "
            f"{need.benchmark!r} from `benchmarks`.")
    return problems


# ================================================================================================================
# the judge


def judge_problems(judge: Mapping[str, Any], environ: Mapping[str, str],
                   probe: Callable[[str], str | None] | None, *, used_by: str = "") -> list[str]:
    """A configured judge (non-empty base_url) without a model name, with its key variable unset or empty, or whose
    endpoint does not answer `GET <base_url>/models` (any HTTP status counts as an answer; `probe` None: not
    checked)."""
    base_url = str(judge.get("base_url") or "").strip()
    if not base_url:
        return []
    who = f"judge.base_url {base_url}" + (f" (used by {used_by})" if used_by else "")
    problems = []
    if not str(judge.get("model") or "").strip():
        problems.append(f"{who}: judge.model is empty; set the judge model name sent in each request.")
    key_env = judge.get("api_key_env")
    if key_env and not str(environ.get(key_env) or "").strip():
        problems.append(f"{who}: the environment variable {key_env} (judge.api_key_env) is unset or empty; export "
                        f"the API key as {key_env}, or set judge.api_key_env: \"\" for an endpoint that needs none.")
    if probe is not None:
        url = base_url.rstrip("/")
        url = url[: -len("/chat/completions")] if url.endswith("/chat/completions") else url
        failure = probe(f"{url}/models")
        if failure:
            problems.append(f"{who}: the endpoint {url}/models does not answer ({failure}); start the server or "
                            "fix judge.base_url (or empty it to leave the judged benchmarks out).")
    return problems


# ================================================================================================================
# GPUs


def local_gpu_count(environ: Mapping[str, str] | None = None) -> tuple[int, str]:
    """The GPUs `gsil with-gpus` would hand out here (CUDA_VISIBLE_DEVICES, else nvidia-smi) and where the count
    came from; 0 when neither exists."""
    from gsil import gpu_slots
    from gsil.logutil import GsilError

    try:
        devices, source = gpu_slots.device_list(None, os.environ if environ is None else environ)
    except GsilError as err:
        return 0, str(err)
    return len(devices), f"{source}: {','.join(devices) or 'none'}"


def gpu_problems(resources: Mapping[str, Any], executor: str | None,
                 cuda_count: Callable[[], tuple[int, str] | int]) -> list[str]:
    """A local run whose jobs ask for GPUs (resources gpu > 0) on a machine with none, or a job asking for more
    than the machine has. Skipped for cluster executors (slurm, ...): the submitting machine needs no GPU.

    `resources`: {"global": the run's `gpu` resource or None, "rules": {rule: largest gpu of its jobs}}.
    """
    if executor not in LOCAL_EXECUTORS:
        return []
    asks = {rule: int(n) for rule, n in (resources.get("rules") or {}).items() if isinstance(n, (int, float)) and n > 0}
    if not asks:
        return []
    counted = cuda_count()
    count, source = counted if isinstance(counted, tuple) else (counted, "")
    listed = ", ".join(f"{rule} (gpu={n})" for rule, n in sorted(asks.items()))
    where = f" ({source})" if source else ""
    if count == 0:
        return [f"jobs of {listed} ask for GPUs, but this machine has none{where}. Run on a GPU node, submit "
                "with a cluster profile (config/profiles/slurm), or use a CPU profile (config/profiles/local-cpu, "
                "rehearsal-cpu) that gives every rule gpu=0."]
    return [f"jobs of rule {rule} ask for {n} GPUs each, but this machine has {count}{where}; lower "
            f"set-resources {rule}: gpu in the profile, or run on a larger node."
            for rule, n in sorted(asks.items()) if n > count]


# ================================================================================================================
# disk

# Bytes per parameter of a resumable training checkpoint (accelerate save_state of model + optimizer):
# fp32 master weights (4) + 4 per fp32 optimizer moment + the bf16 working copy (2) that DeepSpeed's bf16 engine
# saves; without DeepSpeed there is no such copy, so the figure is 2 bytes/parameter high there (an upper bound).
# AdamW keeps two moments (14), RMSprop one (10), SGD none (6). A 7B model: ~100 / ~70 GB, the figures config/paper.yaml quotes for ZeRO-3.
OPTIMIZER_MOMENTS = {"adamw": 2, "rmsprop": 1, "sgd": 0}
_DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "float64": 8}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# The SmolLM2 tokenizer of the `random` source (len(tokenizer)).
_SMOLLM2_VOCAB = 49152


def checkpoint_bytes_per_param(optimizer: str | None) -> int:
    return 4 + 4 * OPTIMIZER_MOMENTS.get(str(optimizer or "adamw"), 2) + 2


def _config_params(config: dict) -> int | None:
    """Parameters of a decoder-only transformer from its config.json (Llama/Mistral shapes: GQA, SwiGLU MLP)."""
    try:
        h, layers = int(config["hidden_size"]), int(config["num_hidden_layers"])
        vocab, inter = int(config["vocab_size"]), int(config["intermediate_size"])
        heads = int(config["num_attention_heads"])
        kv = int(config.get("num_key_value_heads") or heads)
    except (KeyError, TypeError, ValueError):
        return None
    head_dim = int(config.get("head_dim") or h // heads)
    attention = h * heads * head_dim * 2 + h * kv * head_dim * 2
    per_layer = attention + 3 * h * inter + 2 * h
    embeddings = vocab * h * (1 if config.get("tie_word_embeddings", False) else 2)
    return layers * per_layer + embeddings + h


def model_folder_size(folder: Path) -> tuple[int, int] | None:
    """(parameters, bytes per parameter) of an HF checkpoint folder, from its weight files and config.json."""
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32").replace("torch.", "")
    per_param = _DTYPE_BYTES.get(dtype, 4)
    weight_bytes = sum(p.stat().st_size for p in folder.iterdir()
                       if p.name.endswith(_WEIGHT_SUFFIXES) and p.is_file())
    if weight_bytes:
        return weight_bytes // per_param, per_param
    params = _config_params(config)
    return (params, per_param) if params else None


@dataclass
class BaseModelSize:
    params: int | None
    bytes_per_param: int
    source: str  # where the count came from, or why it is unknown
    materialised: bool


def base_model_size(config: dict, results_dir: Path, environ: Mapping[str, str]) -> BaseModelSize:
    """The base model's parameter count: the materialised checkpoint, else the source's own description (the
    Hub cache copy of the pinned revision, the random model's shape, the GGUF file's size)."""
    base_dir = results_dir / "models" / "base"
    found = model_folder_size(base_dir) if base_dir.is_dir() else None
    if found:
        return BaseModelSize(found[0], found[1], f"{base_dir}", True)
    base = config.get("base_model") or {}
    source = base.get("source")
    if source == "hub":
        hub = base.get("hub") or {}
        repo, revision = hub.get("repo"), hub.get("revision")
        snapshot = hub_cache_dir(environ) / f"models--{str(repo).replace('/', '--')}" / "snapshots" / str(revision)
        found = model_folder_size(snapshot) if repo and revision and snapshot.is_dir() else None
        if found:
            return BaseModelSize(found[0], found[1], f"the Hub cache copy {snapshot}", False)
        return BaseModelSize(None, 2, f"{repo}@{revision} is neither materialised in {base_dir} nor in the Hub cache "
                                      f"({hub_cache_dir(environ)})", False)
    if source == "random":
        shape = base.get("random") or {}
        params = _config_params({"hidden_size": shape.get("hidden_size", 64),
                                 "num_hidden_layers": shape.get("num_layers", 2),
                                 "num_attention_heads": shape.get("num_heads", 4),
                                 "intermediate_size": shape.get("intermediate_size", 128),
                                 "vocab_size": _SMOLLM2_VOCAB, "tie_word_embeddings": True})
        return BaseModelSize(params, 4, "the base_model.random shape", False)
    if source == "gguf":
        from gsil.gguf_header import GGUFHeaderError, parameter_count

        try:
            from gsil.modeling import smollm2_gguf_path

            path = smollm2_gguf_path()
        except Exception as err:  # noqa: BLE001 - a missing package is reported by prepare-model itself
            return BaseModelSize(None, 4, f"the GGUF file is not found ({err})", False)
        try:
            params = parameter_count(path)
        except (OSError, GGUFHeaderError) as err:
            return BaseModelSize(None, 4, f"the GGUF header is unreadable ({err})", False)
        # prepare-model dequantises into float32 weights
        return BaseModelSize(params, 4, f"the tensor shapes in {path.name}", False)
    return BaseModelSize(None, 4, f"base_model.source {source!r} has no size to read", False)


@dataclass
class DiskNeed:
    needed_bytes: int | None
    detail: str


def estimate_disk_need(config: dict, results_dir: Path, environ: Mapping[str, str]) -> DiskNeed:
    """Bytes the rest of the run writes, at the peak: every model folder still missing (the base, the SFT model,
    every round of every method; weights in the base model's dtype) plus the largest training checkpoint
    (parameters x checkpoint_bytes_per_param of the optimizer, x2 with checkpointing.save "beside": the new one
    is written before the old one is deleted). Generations, reference log-probs and evaluations are small."""
    from gsil.aggregate.plan import build_methods, build_plan

    size = base_model_size(config, results_dir, environ)
    if size.params is None:
        return DiskNeed(None, size.source)
    plan = build_plan(config)
    missing = [m["id"] for m in plan["models"] if not (results_dir / "models" / m["id"]).is_dir()]
    trained = [m for m in missing if m != "base"]
    optimizers = [m.hyperparameters.get("optimizer") for m in build_methods(config)]
    if (config.get("sft") or {}).get("train", True):
        optimizers.append(((config.get("sft") or {}).get("hyperparameters") or {}).get("optimizer"))
    per_param = max(checkpoint_bytes_per_param(o) for o in optimizers) if optimizers else checkpoint_bytes_per_param(None)
    checkpointing = config.get("checkpointing") or {}
    copies = 0 if not int(checkpointing.get("every", 50) or 0) else (2 if checkpointing.get("save", "beside") == "beside"
                                                                      else 1)
    model_bytes = size.params * size.bytes_per_param
    checkpoint_bytes = copies * size.params * per_param if trained else 0
    needed = len(missing) * model_bytes + checkpoint_bytes
    detail = (f"{len(missing)} model folder(s) to write x {_human(model_bytes)} ({size.params / 1e6:.0f}M parameters "
              f"x {size.bytes_per_param} bytes, from {size.source}) + {copies} training checkpoint(s) x "
              f"{_human(size.params * per_param)} ({per_param} bytes/parameter: fp32 weights, optimizer moments, "
              f"DeepSpeed's bf16 copy)")
    return DiskNeed(needed, detail)


def _existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_problems(paths: Iterable[Path], needed_bytes: int, free: Callable[[Path], int] | None = None,
                  *, detail: str = "") -> list[str]:
    """Each path (or its nearest existing parent) whose file system has less than `needed_bytes` free."""
    free = free or (lambda p: shutil.disk_usage(p).free)
    problems, seen = [], set()
    for path in paths:
        where = _existing(Path(path))
        try:
            device = where.stat().st_dev
        except OSError:
            device = str(where)
        if device in seen:
            continue
        seen.add(device)
        available = free(where)
        if available < needed_bytes:
            problems.append(
                f"disk: {path} has {available} bytes free ({_human(available)}) but the run needs about "
                f"{needed_bytes} bytes ({_human(needed_bytes)})" + (f": {detail}" if detail else "") + ". Free space,"
                " point the run elsewhere (`run` names results/<run>), or set checkpointing.save: in-place "
                "(one checkpoint on disk) or checkpointing.every: 0.")
    return problems


# ================================================================================================================
# all checks


@dataclass
class Outcome:
    problems: list[str]
    warnings: list[str]
    checked: list[str]


def run_checks(config: dict, *, results_dir: Path, executor: str | None = None,
               gpu_resources: Mapping[str, Any] | None = None, benchmarks: Iterable[str] | None = None,
               environ: Mapping[str, str] | None = None, network: bool = True,
               probe: Callable[[str], str | None] = probe_url,
               cuda_count: Callable[[], tuple[int, str] | int] | None = None,
               free: Callable[[Path], int] | None = None) -> Outcome:
    """Every check on one merged config; the network is probed (Hub, judge) only when something needs it."""
    environ = os.environ if environ is None else environ
    warnings: list[str] = []
    problems: list[str] = []
    checked: list[str] = []

    protocols, found = effective_protocols(config, benchmarks)
    problems += found
    needs, found = hub_needs(protocols)
    problems += found
    checked.append(f"{len(protocols)} benchmark(s)")
    if any(not n.forced_offline for n in needs):
        probe_hub = (lambda url: probe_url(url, method="HEAD")) if probe is probe_url else probe
        reason = hub_offline_reason(environ, probe_hub if network else None)
    else:
        reason = env_offline(environ)  # every Hub job forces offline anyway: no need to probe
    hub_root, datasets_root = hub_cache_dir(environ), datasets_cache_dir(environ)
    problems += hub_needed_while_offline(
        needs, bool(reason), lambda repo, cfg: dataset_in_cache(datasets_root, repo, cfg), offline_reason=reason or "",
        cache_label=f"the local datasets cache {datasets_root} (HF_DATASETS_CACHE)",
        hub_copy=lambda repo: dataset_in_hub_cache(hub_root, repo), warn=warnings.append)

    judges: dict[str, tuple[dict, list[str]]] = {}
    for name, protocol in protocols.items():
        judge = protocol.get("judge")
        if isinstance(judge, dict) and str(judge.get("base_url") or "").strip():
            key = json.dumps({k: judge.get(k) for k in ("base_url", "model", "api_key_env")}, sort_keys=True)
            judges.setdefault(key, (judge, []))[1].append(name)
    for judge, names in judges.values():
        problems += judge_problems(judge, environ, probe if network else None, used_by=", ".join(names))
    if judges:
        checked.append("judge")

    if gpu_resources is not None:
        problems += gpu_problems(gpu_resources, executor, cuda_count or (lambda: local_gpu_count(environ)))
        checked.append(f"GPUs ({executor or 'local'} executor)")

    writes_models = gpu_resources is None or any(rule in MODEL_RULES for rule in gpu_resources.get("rules") or {})
    need = estimate_disk_need(config, results_dir, environ) if writes_models else None
    if need is None:
        pass  # no job writing a model is about to run (a data-only target, or the models exist)
    elif need.needed_bytes is None:
        warnings.append(f"disk: the base model's size is unknown ({need.detail}); free space not checked.")
    else:
        problems += disk_problems([results_dir], need.needed_bytes, free, detail=need.detail)
        checked.append(f"disk (~{_human(need.needed_bytes)})")
    return Outcome(problems, warnings, checked)


# ================================================================================================================
# from the Snakefile's onstart handler


def job_benchmarks(job) -> set[str]:
    """The benchmarks a Snakemake job will score: an evaluate_model job writes `<benchmark>.json` for every enabled
    benchmark and scores those its `unselected` param does not name; any other job with a `bench` wildcard scores
    that one."""
    bench = dict(getattr(job, "wildcards_dict", {}) or {}).get("bench")
    if bench:
        return {bench}
    if job.rule.name != "evaluate_model":
        return set()
    unselected = json.loads(getattr(job.params, "unselected", None) or "{}")
    return {Path(str(path)).stem for path in job.output} - set(unselected)


def snakemake_facts(workflow) -> tuple[str, dict[str, Any], list[str]]:
    """(executor name, {"global": gpu, "rules": {rule: largest gpu of its jobs to run}}, benchmarks with evaluation
    jobs to run) from Snakemake's `workflow` object at onstart time (the DAG is built, no job has run)."""
    plugin = getattr(workflow, "executor_plugin", None)
    executor = getattr(plugin, "name", None) or "local"
    total = workflow.global_resources.get("gpu")
    total = getattr(total, "value", total)
    rules: dict[str, int] = {}
    benchmarks: set[str] = set()
    for job in workflow.dag.needrun_jobs():
        value = job.resources.get("gpu", 0)
        value = getattr(value, "value", value)
        if isinstance(value, (int, float)):
            rules[job.rule.name] = max(rules.get(job.rule.name, 0), int(value))
        benchmarks.update(job_benchmarks(job))
    return executor, {"global": total if isinstance(total, (int, float)) else None, "rules": rules}, sorted(benchmarks)


def run_in_workflow(workflow, config: dict) -> str | None:
    """Run `gsil preflight` for this workflow (merged config in a temp JSON); None when it passed (its warnings
    printed), else its report, for the Snakefile to raise. GSIL_SKIP_PREFLIGHT=1 skips it."""
    import subprocess
    import tempfile

    if str(os.environ.get(SKIP_VARIABLE, "")).strip().upper() in _TRUE:
        print(f"gsil preflight: skipped ({SKIP_VARIABLE} is set)", file=sys.stderr)
        return None
    if getattr(workflow, "touch", False):
        return None  # --touch runs no job
    executor, resources, benchmarks = snakemake_facts(workflow)
    with tempfile.TemporaryDirectory(prefix="gsil-preflight-") as tmp:
        config_path = Path(tmp) / "config.json"
        config_path.write_text(json.dumps(config, default=str), encoding="utf-8")
        command = [sys.executable, "-m", "gsil", "preflight", "--config-json", str(config_path),
                   "--executor", executor, "--gpu-resources", json.dumps(resources),
                   "--results", f"results/{config['run']}", "--benchmarks", ",".join(benchmarks)]
        done = subprocess.run(command, capture_output=True, text=True)
    report = (done.stdout + done.stderr).strip()
    if done.returncode == 0:
        if report:
            print(report, file=sys.stderr)
        return None
    if "problem" not in report:  # the checks themselves failed
        report = (f"{report}\ngsil preflight failed (exit {done.returncode}) before it could check the run; "
                  f"set {SKIP_VARIABLE}=1 to run without it.")
    return report
