"""A tiny offline Hugging Face cache with everything the paper profile reads from the Hub, for the CPU rehearsal.

`build_hub_cache(root)` writes, under `root`:

* `hub/` (HF_HUB_CACHE): the model repo `alignment-handbook/zephyr-7b-sft-full` in the hub cache layout
  (`models--alignment-handbook--zephyr-7b-sft-full/{refs/main, snapshots/<sha>/...}`) at the revision pinned in
  config/paper.yaml: a randomly initialised MistralForCausalLM of zephyr's architecture (hidden 32, 2 layers, 2
  heads, 1 KV head, sliding window set, bf16 weights in two safetensors shards with an index, like the real repo;
  weights drawn wide enough that the context, BOS included, visibly changes its log-probs)
  and a Llama/Mistral-style tokenizer that adds `<s>` by default, with zephyr's chat template, which writes no
  BOS. `AutoModelForCausalLM.from_pretrained(repo, revision=sha)` and `AutoTokenizer` load it with
  HF_HUB_OFFLINE=1.
* `hub/datasets--<org>--<name>/snapshots/<sha>/...`: small copies of every Hub dataset the paper run reads, laid out
  like the real repos (parquet files per config and split, a README.md whose YAML `configs:` maps them), and
* `datasets/` (HF_DATASETS_CACHE): the same datasets in the processed cache layout
  (`<org>___<name>/<config>/0.0.0/<sha>/<name>-<split>.arrow` + `dataset_info.json`), built from those parquet
  files by the `parquet` builder exactly as `datasets.load_dataset` would build it after downloading them.

Why both dataset layouts: with HF_HUB_OFFLINE=1 the installed `datasets` (5.x) never reads the hub cache for a
dataset. `datasets.load.dataset_module_factory` calls `_raise_if_offline_mode_is_enabled()` before it would look up
the repo's README, and falls back to `CachedDatasetModuleFactory`, i.e. the `cache` builder over
HF_DATASETS_CACHE/<org>___<name>/<config>/<version>/<hash>/ (ignoring `revision`). So the processed cache is what
`load_dataset(path, name, split=..., revision=...)` reads offline, in `gsil.paper_data` and in lm-eval's stock tasks
alike; the hub-cache copies are the parquet sources it is built from (and what an online run would download).

The datasets and what reads them:
  HuggingFaceH4/ultrafeedback_binarized  default: train_prefs, test_prefs        gsil.paper_data (GSIL, DPO)
  UCLA-AGI/SPIN_iter0                    default: train, test                    gsil.paper_data (SPIN)
  allenai/ai2_arc                        ARC-Challenge: train, validation, test  lm-eval arc_challenge (25-shot)
  allenai/winogrande                     winogrande_xl: train, validation, test  lm-eval winogrande (5-shot)
  openai/gsm8k                           main: train, test                       lm-eval gsm8k (5-shot)
  Rowan/hellaswag                        default: train, validation, test        lm-eval hellaswag (10-shot)
  truthfulqa/truthful_qa                 multiple_choice: validation             lm-eval truthfulqa_mc2 (0-shot)
  cais/mmlu                              <57 subjects>: dev, validation, test    lm-eval mmlu (group, 5-shot)
Few-shot pools hold one row more than the paper's shot count (lm-eval draws n + 1 to drop the evaluated
document), so the rehearsal keeps the paper's shots. MMLU holds all 57 subjects (read from the installed lm-eval's
stock YAMLs), because the stock `mmlu` group loads every one of them.

Command line (rehearse by hand):

    python tests/hub_fixtures.py /tmp/gsil-hub      # builds the cache and prints the environment to export
    eval "$(python tests/hub_fixtures.py /tmp/gsil-hub)"
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
PAPER_CONFIG = REPO_ROOT / "config" / "paper.yaml"

MODEL_REPO = "alignment-handbook/zephyr-7b-sft-full"

# zephyr-7b-sft-full's architecture (config.json: MistralForCausalLM, rope 10000, sliding window 4096, untied
# embeddings, bf16) shrunk to a toy.
MODEL_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "max_position_embeddings": 32768,
    "sliding_window": 4096,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "initializer_range": 0.02,
}
MODEL_SEED = 0
# The weight matrices are drawn with std 0.1 instead of the config's 0.02: at 0.02 a toy this small barely attends
# (its log-probs move by ~0.02 nats whether the prompt starts with no, one or two BOS tokens, and its greedy answer
# is the same for every prompt); at 0.1 the context matters (BOS variants differ by 0.2-2 nats, far above bf16
# rounding) and greedy answers differ per prompt, while the numbers stay tame.
MODEL_INIT_STD = 0.1
# The real repo's tokenizer_config.json says 2048; kept so lm-eval and the trainers see the same limit.
MODEL_MAX_LENGTH = 2048


def fake_sha(name: str) -> str:
    """A stable 40-hex 'commit sha' for a fixture repo (the real shas cannot be looked up offline)."""
    return hashlib.sha1(f"gsil-rehearsal-fixture:{name}".encode()).hexdigest()


def paper_model_revision(paper_config: Path = PAPER_CONFIG) -> str:
    """The model revision pinned in config/paper.yaml (the fixture snapshot must sit exactly there)."""
    config = yaml.safe_load(paper_config.read_text(encoding="utf-8"))
    return config["base_model"]["hub"]["revision"]


def _repo_folder(kind: str, repo: str) -> str:
    return f"{kind}s--{repo.replace('/', '--')}"


def _write_refs(repo_dir: Path, sha: str) -> None:
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(sha)  # no newline, as huggingface_hub writes it


# ---------------------------------------------------------------------------------------------------------------
# the model


def zephyr_style_tokenizer():
    """tests/tokenizer_fixtures.py's Llama/Mistral-style tokenizer (adds <s> by default), zephyr's template."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        import tokenizer_fixtures
    finally:
        sys.path.pop(0)
    tokenizer = tokenizer_fixtures.llama_style_tokenizer(chat_template=tokenizer_fixtures.ZEPHYR_CHAT_TEMPLATE)
    # as the real repo's tokenizer_config.json says
    tokenizer.model_max_length = MODEL_MAX_LENGTH
    return tokenizer


def build_model_snapshot(hub_cache: Path, *, repo: str = MODEL_REPO, revision: str | None = None) -> Path:
    """Write the tiny zephyr look-alike into `hub_cache` at `revision`; returns the snapshot folder."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    revision = revision or paper_model_revision()
    repo_dir = hub_cache / _repo_folder("model", repo)
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)

    tokenizer = zephyr_style_tokenizer()
    tokenizer.save_pretrained(str(snapshot))

    torch.manual_seed(MODEL_SEED)
    config = MistralConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
        **MODEL_CONFIG,
    )
    model = MistralForCausalLM(config)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:  # embeddings, projections, lm head; the norms keep their ones
                parameter.normal_(0.0, MODEL_INIT_STD)
    model = model.to(torch.bfloat16)  # zephyr's weights are published in bf16
    # Two shards plus model.safetensors.index.json, as in the real repo (which has three).
    model.save_pretrained(str(snapshot), max_shard_size="64KB")
    for path in snapshot.iterdir():
        path.chmod(0o644)  # save_pretrained writes the shards private; a cache is shared like any download
    _write_refs(repo_dir, revision)
    return snapshot


# ---------------------------------------------------------------------------------------------------------------
# dataset rows (tiny, deterministic, in each Hub dataset's column shape)

_TOPICS = ["rain", "the moon", "bread", "a river", "chess", "tea", "a library", "winter", "bicycles", "the sea",
           "volcanoes", "bees", "a lighthouse", "trains", "maps", "clocks"]
# One long prompt per paper dataset: longer than the rehearsal's max_prompt_length (64 tokens), so prompt
# truncation (which keeps the prompt's end) runs as it does on the real data.
_LONG_PROMPT = ("I am planning a small community garden and need practical advice. " * 6
                + "Which three vegetables should a beginner plant first, and why?")


def _chat(user: str, assistant: str) -> list[dict[str, str]]:
    return [{"content": user, "role": "user"}, {"content": assistant, "role": "assistant"}]


def ultrafeedback_rows(split: str, n: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        topic = _TOPICS[i % len(_TOPICS)]
        prompt = _LONG_PROMPT if i == 3 else f"Write two sentences about {topic}."
        chosen = f"Here are two sentences about {topic}. It is a fine subject, and people enjoy it."
        rejected = f"{topic.capitalize()}."
        rows.append({
            "prompt": prompt,
            "prompt_id": hashlib.sha256(f"{split}:{prompt}:{i}".encode()).hexdigest(),
            "chosen": _chat(prompt, chosen),
            "rejected": _chat(prompt, rejected),
            "messages": _chat(prompt, chosen),
            "score_chosen": 8.0,
            "score_rejected": 4.0,
        })
    return rows


def spin_rows(split: str, n: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        topic = _TOPICS[(i + 5) % len(_TOPICS)]
        prompt = _LONG_PROMPT if i == 2 else f"Give me one tip about {topic}."
        rows.append({
            "real": _chat(prompt, f"One tip about {topic}: start small and practise every day."),
            "generated": _chat(prompt, f"I like {topic}."),
        })
    return rows


def arc_rows(split: str, n: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        a, b = i + 2, (i % 5) + 3
        answers = [str(a + b), str(a + b + 1), str(a * b + 7), str(abs(a - b) + 11)]
        rows.append({
            "id": f"Mercury_{split}_{i:04d}",
            "question": f"A box holds {a} red balls and {b} blue balls. How many balls are in the box?",
            "choices": {"text": answers, "label": ["A", "B", "C", "D"]},
            "answerKey": "A",
        })
    return rows


def winogrande_rows(split: str, n: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        topic = _TOPICS[i % len(_TOPICS)]
        rows.append({
            "sentence": f"Anna lent Maria a book about {topic} because _ wanted to read it.",
            "option1": "Anna",
            "option2": "Maria",
            # the test split has no labels on the Hub
            "answer": "" if split == "test" else ("2" if i % 2 == 0 else "1"),
        })
    return rows


def gsm8k_rows(split: str, n: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        a, b = 3 + i, 4 + 2 * i
        rows.append({
            "question": f"Tom has {a} apples and buys {b} more. How many apples does he have now?",
            "answer": f"Tom has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b}",
        })
    return rows


def hellaswag_rows(split: str, n: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        topic = _TOPICS[i % len(_TOPICS)]
        ctx_a, ctx_b = f"A person is reading about {topic}.", "they"
        rows.append({
            "ind": 1000 + i,
            "activity_label": "Reading",
            "ctx_a": ctx_a,
            "ctx_b": ctx_b,
            "ctx": f"{ctx_a} {ctx_b}",
            "endings": ["turn the page and keep reading.", "eat the book whole.", "fly over the house.",
                        "[title] become a tree."],
            "source_id": f"activitynet~v_{i:05d}",
            "split": split,
            "split_type": "indomain",
            "label": "" if split == "test" else "0",  # labels are strings on the Hub; empty in test
        })
    return rows


def truthfulqa_rows(split: str, n: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        topic = _TOPICS[i % len(_TOPICS)]
        true, false = f"Nothing special happens to {topic}.", f"{topic.capitalize()} turns to gold."
        rows.append({
            "question": f"What happens to {topic} at midnight?",
            "mc1_targets": {"choices": [true, false, "It vanishes."], "labels": [1, 0, 0]},
            "mc2_targets": {"choices": [true, "It stays the same.", false, "It vanishes."], "labels": [1, 1, 0, 0]},
        })
    return rows


def mmlu_rows(subject: str, split: str, n: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        a = 2 + i
        rows.append({
            "question": f"({subject.replace('_', ' ')}) What is {a} times 3?",
            "subject": subject,
            "choices": [str(3 * a + k) for k in range(4)],
            "answer": (i + len(subject)) % 4,  # the gold letter varies, so a model that always says "A" is not right
        })
    return rows


def mmlu_subjects() -> list[str]:
    """The subjects of the installed lm-eval's stock `mmlu` group (its default/mmlu_<subject>.yaml files)."""
    import lm_eval

    folder = Path(lm_eval.__file__).resolve().parent / "tasks" / "mmlu" / "default"
    subjects = []
    for path in sorted(folder.glob("mmlu_*.yaml")):
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        subjects.append(config["dataset_name"])
    if len(subjects) != 57:
        raise RuntimeError(f"expected the 57 MMLU subjects in {folder}, found {len(subjects)}")
    return subjects


def paper_dataset_specs() -> dict[str, dict[str, Any]]:
    """The datasets gsil.paper_data reads (see dataset_specs for the layout keys)."""
    return {
        "HuggingFaceH4/ultrafeedback_binarized": {"layout": "data", "configs": {"default": {
            "train_prefs": ultrafeedback_rows("train_prefs", 12), "test_prefs": ultrafeedback_rows("test_prefs", 2)}}},
        "UCLA-AGI/SPIN_iter0": {"layout": "data", "configs": {"default": {
            "train": spin_rows("train", 12), "test": spin_rows("test", 2)}}},
    }


def dataset_specs() -> dict[str, dict[str, Any]]:
    """repo -> {"configs": {config: {split: rows}}, "layout": how the real repo names its parquet files}.

    layout "config" : <config>/<split>-00000-of-00001.parquet   (ai2_arc, winogrande, gsm8k, truthful_qa, mmlu)
    layout "data"   : data/<split>-00000-of-00001.parquet        (single default config)
    """
    mmlu = {s: {"dev": mmlu_rows(s, "dev", 5), "validation": mmlu_rows(s, "validation", 1),
                "test": mmlu_rows(s, "test", 2)} for s in mmlu_subjects()}
    return {
        **paper_dataset_specs(),
        "allenai/ai2_arc": {"layout": "config", "configs": {"ARC-Challenge": {
            "train": arc_rows("train", 26), "validation": arc_rows("validation", 2), "test": arc_rows("test", 4)}}},
        "allenai/winogrande": {"layout": "config", "configs": {"winogrande_xl": {
            "train": winogrande_rows("train", 6), "validation": winogrande_rows("validation", 4),
            "test": winogrande_rows("test", 2)}}},
        "openai/gsm8k": {"layout": "config", "configs": {"main": {
            "train": gsm8k_rows("train", 6), "test": gsm8k_rows("test", 4)}}},
        "Rowan/hellaswag": {"layout": "data", "configs": {"default": {
            "train": hellaswag_rows("train", 11), "validation": hellaswag_rows("validation", 4),
            "test": hellaswag_rows("test", 2)}}},
        "truthfulqa/truthful_qa": {"layout": "config", "configs": {"multiple_choice": {
            "validation": truthfulqa_rows("validation", 4)}}},
        "cais/mmlu": {"layout": "config", "configs": mmlu},
    }


# ---------------------------------------------------------------------------------------------------------------
# dataset layouts


def _parquet_path(layout: str, config: str, split: str) -> str:
    folder = "data" if layout == "data" else config
    return f"{folder}/{split}-00000-of-00001.parquet"


def build_dataset_snapshot(hub_cache: Path, repo: str, spec: dict[str, Any]) -> tuple[Path, str]:
    """Parquet files + README.md (YAML `configs:`) of one dataset repo in the hub cache layout."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sha = fake_sha(repo)
    repo_dir = hub_cache / _repo_folder("dataset", repo)
    snapshot = repo_dir / "snapshots" / sha
    card_configs = []
    for config, splits in spec["configs"].items():
        data_files = []
        for split, rows in splits.items():
            relative = _parquet_path(spec["layout"], config, split)
            (snapshot / relative).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows), snapshot / relative)
            data_files.append({"split": split, "path": relative})
        card_configs.append({"config_name": config, "data_files": data_files})
    card = yaml.safe_dump({"configs": card_configs}, sort_keys=False)
    (snapshot / "README.md").write_text(
        f"---\n{card}---\n\n# {repo} (GSIL rehearsal fixture)\n\nA few synthetic rows in the real repo's shape.\n")
    _write_refs(repo_dir, sha)
    return snapshot, sha


def build_processed_cache(datasets_cache: Path, repo: str, snapshot: Path, sha: str, configs: list[str]) -> None:
    """Prepare each config into HF_DATASETS_CACHE as `load_dataset(repo, config)` does after downloading the files.

    The module comes from the snapshot's README (the same parquet builder configs the Hub path derives from its
    README), the builder gets the dataset name the Hub path gives it, and its Arrow files are written to
    <org>___<name>/<config>/0.0.0/<sha>/, the folder the Hub path prepares into and the offline `cache` builder
    reads. (The builder is not given the repo id: it would insist on hf:// data files.)
    """
    import shutil
    import tempfile

    from datasets.load import LocalDatasetModuleFactory, get_dataset_builder_class
    from datasets.naming import camelcase_to_snakecase

    module = LocalDatasetModuleFactory(str(snapshot)).get_module()
    dataset_name = camelcase_to_snakecase(repo.split("/")[-1])
    builder_cls = get_dataset_builder_class(module, dataset_name=dataset_name)
    namespace = repo.split("/")[0]
    scratch = Path(tempfile.mkdtemp(prefix="builder-", dir=datasets_cache.parent))
    try:
        for config in configs:
            builder = builder_cls(cache_dir=str(scratch), dataset_name=dataset_name, config_name=config, hash=sha,
                                  base_path=str(snapshot))
            if builder.config_id != config:
                raise RuntimeError(f"{repo}: config id {builder.config_id!r} is not the config name {config!r}")
            target = datasets_cache / f"{namespace}___{dataset_name}" / config / str(builder.config.version) / sha
            builder.download_and_prepare(output_dir=str(target))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# the whole cache


def hub_env(root: Path) -> dict[str, str]:
    """Environment variables that point the Hugging Face libraries at the cache under `root`, offline."""
    root = Path(root).resolve()
    return {
        "HF_HOME": str(root),
        "HF_HUB_CACHE": str(root / "hub"),
        "HF_DATASETS_CACHE": str(root / "datasets"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


def build_hub_cache(root: Path) -> dict[str, Any]:
    """Build the offline cache under `root`; returns {"env", "model_repo", "model_revision", "datasets"}.

    The builders run in a child Python process with the returned environment, so the cache is written with the
    same settings it is read with, whatever this process has already imported.
    """
    import os
    import subprocess

    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    env = hub_env(root)
    done = root / "fixture.json"
    if not done.is_file():
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--build-here", str(root)],
                       env={**os.environ, **env}, check=True)
    return {**json.loads(done.read_text()), "env": env}


def _build_here(root: Path) -> None:
    """The build itself, run with hub_env(root) already in the environment (see build_hub_cache)."""
    hub_cache, datasets_cache = root / "hub", root / "datasets"
    revision = paper_model_revision()
    build_model_snapshot(hub_cache, revision=revision)
    datasets_info = {}
    for repo, spec in dataset_specs().items():
        snapshot, sha = build_dataset_snapshot(hub_cache, repo, spec)
        build_processed_cache(datasets_cache, repo, snapshot, sha, list(spec["configs"]))
        datasets_info[repo] = {"revision": sha, "configs": {c: {s: len(r) for s, r in splits.items()}
                                                            for c, splits in spec["configs"].items()}}
    info = {"model_repo": MODEL_REPO, "model_revision": revision, "datasets": datasets_info}
    (root / "fixture.json").write_text(json.dumps(info, indent=1))


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--build-here":
        _build_here(Path(argv[1]))
        return 0
    if len(argv) != 1:
        print(__doc__.split("Command line")[1], file=sys.stderr)
        print("usage: python tests/hub_fixtures.py <dir>", file=sys.stderr)
        return 2
    info = build_hub_cache(Path(argv[0]))
    for key, value in info["env"].items():
        print(f"export {key}={shlex.quote(value)}")
    print(f"# model: {info['model_repo']}@{info['model_revision']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
