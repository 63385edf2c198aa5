"""The one training loop behind `gsil sft` and `gsil align`, on `accelerate.Accelerator`.

The loop knows nothing about losses: an *objective* (gsil.training.objectives) turns a micro-batch into a summed
loss and per-example records, and summarises a step's records into metrics. The same loop therefore runs SFT,
SPIN, every GSIL loss and DPO, on one CPU, under DDP, DeepSpeed ZeRO-3 or FSDP (`accelerate launch`).

Gradient accumulation is exact: a step's examples are fixed by the data plan, so every micro-batch's summed loss is
divided by the step's total weight (pairs for pairwise losses, response tokens for SFT). A global batch of 4 as
one micro-batch of 4 or four of 1 gives the same update up to float rounding.

`train` is the recipe: `_setup_accelerator`, `_setup_budget`, `_setup_model_and_optimizer`, `_setup_resume`, then
one `_optimizer_step` per step of `_remaining_steps`, each followed by its metrics row, a checkpoint when one is
due (gsil.training.checkpoint) and the SIGTERM check; then the final save.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gsil.io import append_jsonl, atomic_path, write_json
from gsil.logutil import GsilError
from gsil.modeling import keep_rope_float32, set_cpu_threads
from gsil.runinfo import write_run_info
from gsil.training import checkpoint
from gsil.training.data import plan_epoch, steps_per_epoch
from gsil.training.optim import build_optimizer, build_scheduler
from gsil.training.settings import BatchLayout, TrainSettings, batch_layout
from gsil.training.tracking import TRACKING_FIELDS, RunTracking, accelerator_kwargs

log = logging.getLogger("gsil.training")


class TrainingPreempted(GsilError):
    """SIGTERM stopped the run after a checkpoint was saved; rerunning the same command continues from it."""

    exit_code = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM


class TerminationNotice:
    """Notes SIGTERM (what a cluster sends before it kills: preemption, the time limit) instead of dying at once, so
    that the loop can finish its optimizer step, save a checkpoint with the metrics so far and exit. Every process
    must stop after the same step (the checkpoint is a collective), so the processes agree through an all-reduce."""

    def __init__(self) -> None:
        self.received = False
        self._previous = None

    def __enter__(self) -> "TerminationNotice":
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            self._previous = signal.signal(signal.SIGTERM, self._note)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _note(self, signum, frame) -> None:
        if not self.received:
            log.warning("SIGTERM received: finishing this optimizer step, then saving a checkpoint and exiting")
        self.received = True

    def agreed(self, accelerator) -> bool:
        """True on every process when any process received SIGTERM."""
        if accelerator.num_processes == 1:
            return self.received
        flag = torch.tensor([1.0 if self.received else 0.0], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


@dataclass
class TrainResult:
    steps: int
    resumed_from_step: int
    seconds: float
    last_metrics: dict = field(default_factory=dict)
    stopped_early: bool = False


class TrainHooks:
    """The one way into a `train` call besides its inputs, for tests and benchmarks; this base changes nothing.

    `after_step(metrics)` runs on every process after each optimizer step, once the step's metrics row is written
    and tracked and before the step's checkpoint; True ends the call after that step (and its checkpoint, when one
    is due) without the final save, with `TrainResult.stopped_early` (except after the last step, which always goes
    on to the final save). `save_model = False` skips the final save (benchmarks time steps, not writing weights).
    """

    save_model: bool = True

    def after_step(self, metrics: dict) -> bool:
        return False


class StopAfter(TrainHooks):
    """Stop after `steps` optimizer steps of this call: how tests simulate a killed run (the checkpoint left behind
    is what a real kill leaves)."""

    def __init__(self, steps: int) -> None:
        self.steps, self.done = steps, 0

    def after_step(self, metrics: dict) -> bool:
        self.done += 1
        return self.done >= self.steps


def make_accelerator(settings: TrainSettings, layout_accumulation: int = 1):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    from gsil.launch import process_state, use_cpu

    if settings.precision not in ("bf16", "fp32"):  # auto is resolved once, by settings_from_args, before this
        raise GsilError(f"precision {settings.precision!r} is not resolved: expected bf16 or fp32 (see "
                        f"gsil.training.settings.resolve_settings_precision)")
    mixed = "bf16" if settings.precision == "bf16" else "no"
    if process_state().num_processes == 1:
        # accelerate keeps one global state per process; a second training run in the same single process (tests,
        # benchmarks) with another precision or accumulation would otherwise be refused or inherit stale counters.
        AcceleratorState._reset_state()
        GradientState._reset_state()
    # log_with / project_dir only when --tracking names trackers (gsil.training.tracking)
    return Accelerator(mixed_precision=mixed, gradient_accumulation_steps=layout_accumulation, cpu=use_cpu(),
                       **accelerator_kwargs(settings))


def make_training_accelerator(settings: TrainSettings):
    """The run's Accelerator and batch layout, made BEFORE the model is loaded.

    Under DeepSpeed ZeRO-3 with `zero3_init_flag`, the Accelerator registers the DeepSpeed config with transformers,
    so `from_pretrained` then builds the model inside `deepspeed.zero.Init` and each rank holds only its shard (a
    model loaded earlier is a full fp32 copy per rank: ~230 GB of host memory for 7B on 8 ranks). FSDP's
    `cpu_ram_efficient_loading` likewise needs the process group first. DeepSpeed also needs the batch geometry in
    its config before that, since no dataloader is prepared.
    """
    from accelerate.utils import DistributedType

    from gsil.launch import process_state

    layout = batch_layout(settings.global_batch_size, settings.per_device_batch_size, process_state().num_processes)
    accelerator = make_accelerator(settings, layout.accumulation_steps)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        configure_deepspeed(accelerator.state.deepspeed_plugin.deepspeed_config, settings, layout)
    return accelerator, layout


def configure_deepspeed(ds_config: dict, settings: TrainSettings, layout: BatchLayout) -> None:
    """Fill the batch geometry and clipping DeepSpeed reads from its config (no dataloader tells it)."""
    ds_config["train_micro_batch_size_per_gpu"] = layout.per_device_batch_size
    ds_config["gradient_accumulation_steps"] = layout.accumulation_steps
    ds_config["train_batch_size"] = layout.global_batch_size
    ds_config["gradient_clipping"] = settings.max_grad_norm if settings.max_grad_norm > 0 else 0.0


def apply_lora(model, settings: TrainSettings):
    """Wrap the model with LoRA adapters (peft imported lazily: it is an optional dependency)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise GsilError("--lora-r > 0 needs the `peft` package (pip install 'gsil-suite[peft]')") from err
    config = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=0.0,
                        target_modules=list(settings.lora_targets), task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def prepare_model_for_training(model, settings: TrainSettings):
    # The KV cache is only for generation; building it during training costs time and memory.
    model.config.use_cache = False
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if settings.lora_r:
            model.enable_input_require_grads()
    if settings.lora_r:
        model = apply_lora(model, settings)
    model.train()
    return model


def prepare_model_and_optimizer(accelerator, model, settings: TrainSettings, layout: BatchLayout):
    """accelerate.prepare for every backend; returns (model, wrapped optimizer, the torch optimizer inside).

    The model and its optimizer go to one `prepare` call on every backend: FSDP2 (accelerate >= 1.6) shards the
    model inside that call and swaps the optimizer's parameter references for the shards, and refuses a model
    prepared alone. The optimizer is built on the model's parameters before the call.
    """
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:  # pragma: no cover - GPU clusters
        configure_deepspeed(accelerator.state.deepspeed_plugin.deepspeed_config, settings, layout)
    torch_optimizer = build_optimizer(model.parameters(), name=settings.optimizer, lr=settings.lr,
                                      weight_decay=settings.weight_decay)
    model, optimizer = accelerator.prepare(model, torch_optimizer)
    recast = keep_rope_float32(model)
    if recast:
        log.info("rotary frequencies of %d module(s) restored to float32 after the engine cast them", recast)
    # The schedule drives the torch optimizer's param_groups, which every wrapper (DeepSpeed's ZeRO optimizer
    # included) reads; FSDP2 swaps its parameters in place, so it stays the same object.
    return model, optimizer, torch_optimizer


def save_final_model(accelerator, model, tokenizer, output: Path, config: dict, run_settings: dict,
                     lora: bool) -> None:
    """Write the trained model (LoRA merged), tokenizer, training_config.json and run_info.json, whole or not at all."""
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    if lora:
        unwrapped = unwrapped.merge_and_unload()
        state_dict = None
    else:
        state_dict = accelerator.get_state_dict(model)  # a collective under ZeRO-3 / FSDP: every process calls it
    if accelerator.is_main_process:
        with atomic_path(output, is_dir=True) as tmp:
            unwrapped.config.use_cache = True  # the saved model is for generation and scoring
            unwrapped.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            write_json(tmp / "training_config.json", config)
            write_run_info(tmp, run_settings)
    accelerator.wait_for_everyone()


@dataclass(frozen=True)
class _Budget:
    """The run's optimizer steps: `per_epoch` a pass over the data, `total` over every epoch, capped by --max-steps."""

    per_epoch: int
    total: int


@dataclass
class _Run:
    """What each optimizer step uses: the prepared objects and the run's fixed inputs."""

    accelerator: Any
    model: Any
    optimizer: Any
    scheduler: Any
    objective: Any
    examples: Sequence
    settings: TrainSettings
    layout: BatchLayout
    budget: _Budget


def _setup_accelerator(settings: TrainSettings, accelerator) -> tuple[Any, BatchLayout]:
    """The Accelerator (made here unless the stage made it before loading the model) and the batch layout; seeds
    every RNG."""
    if accelerator is None:
        from gsil.launch import process_state

        processes = process_state().num_processes
        layout = batch_layout(settings.global_batch_size, settings.per_device_batch_size, processes)
        accelerator = make_accelerator(settings, layout.accumulation_steps)
    else:
        layout = batch_layout(settings.global_batch_size, settings.per_device_batch_size, accelerator.num_processes)
    from accelerate.utils import set_seed

    set_seed(settings.seed)
    return accelerator, layout


def _setup_budget(examples: Sequence, settings: TrainSettings, layout: BatchLayout) -> _Budget:
    """Steps per epoch and in all (the schedule's length); refuses data that cannot fill one step."""
    if not examples:
        raise GsilError("no training examples left (see the counts above)")
    per_epoch = steps_per_epoch(len(examples), layout)
    if per_epoch == 0:
        micro_batches = layout.accumulation_steps * layout.num_processes
        raise GsilError(f"{len(examples)} examples cannot fill one step of {micro_batches} micro-batches; "
                        f"lower --global-batch-size")
    total_steps = per_epoch * settings.epochs
    if settings.max_steps:
        total_steps = min(total_steps, settings.max_steps)
    rest = len(examples) % layout.global_batch_size
    dropped = rest if rest < layout.accumulation_steps * layout.num_processes else 0
    log.info("%d examples, %d optimizer steps (%d per epoch x %d epochs%s); global batch %d = %d process(es) x "
             "%d per device x %d accumulation; %d example(s) per epoch left out of a short last step",
             len(examples), total_steps, per_epoch, settings.epochs,
             f", capped by --max-steps {settings.max_steps}" if settings.max_steps else "",
             layout.global_batch_size, layout.num_processes, layout.per_device_batch_size,
             layout.accumulation_steps, dropped)
    return _Budget(per_epoch=per_epoch, total=total_steps)


def _setup_model_and_optimizer(accelerator, model, settings: TrainSettings, layout: BatchLayout,
                               total_steps: int):
    """The model made ready to train (LoRA, checkpointing) and prepared with its optimizer in one call, its numerics
    checked, and the schedule; returns (model, optimizer, scheduler, numerics)."""
    model = prepare_model_for_training(model, settings)
    # ZeRO-3 (zero3_init_flag) has already partitioned the weights: p.numel() is 0 there, ds_numel the full size.
    trainable = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
    log.info("trainable parameters: %d; precision %s; optimizer %s; lr %g %s, warmup %.2f",
             trainable, settings.precision, settings.optimizer, settings.lr, settings.lr_scheduler,
             settings.warmup_ratio)
    model, optimizer, torch_optimizer = prepare_model_and_optimizer(accelerator, model, settings, layout)
    numerics = check_numerics(accelerator, model, settings)
    scheduler = build_scheduler(torch_optimizer, kind=settings.lr_scheduler, total_steps=total_steps,
                                warmup_ratio=settings.warmup_ratio)
    # The scheduler is stepped by hand once per optimizer step (accelerate's wrapper would step it once per
    # process); it is registered so that checkpoints carry it.
    accelerator.register_for_checkpointing(scheduler)
    return model, optimizer, scheduler, numerics


def _training_config(settings: TrainSettings, config_extra: dict | None, run: _Run, numerics) -> dict:
    """training_config.json: the settings (tracking left out), the stage's extras, layout, steps and numerics."""
    return {**{k: v for k, v in settings.to_dict().items() if k not in TRACKING_FIELDS}, **(config_extra or {}),
            "layout": run.layout.__dict__, "total_steps": run.budget.total, "examples": len(run.examples),
            "numerics": numerics.to_dict()}


def _setup_resume(run: _Run, output: Path,
                  metrics_path: Path) -> tuple[checkpoint.RunCheckpoint, checkpoint.StartPoint]:
    """The run's checkpoint, and where to start: from it (`--resume auto` and one is there), else from step 0."""
    settings = run.settings
    fingerprint = checkpoint.run_fingerprint(settings, [ex.id for ex in run.examples],
                                             {"objective": run.objective.describe(),
                                              "processes": run.layout.num_processes})
    ckpt = checkpoint.RunCheckpoint(checkpoint.checkpoint_dir_for(output), fingerprint, metrics_path,
                                    in_place=settings.checkpoint_save == "in-place")
    if settings.resume == "auto" and ckpt.exists():
        return ckpt, ckpt.resume(run.accelerator, run.budget.total)
    return ckpt, ckpt.start_fresh(run.accelerator)


def _remaining_steps(run: _Run, start_step: int) -> Iterator[tuple[float, list[list[int]]]]:
    """(the epoch reached at the end of the step, its micro-batches of all processes) for each step from
    `start_step` on; the data order of each epoch follows from (seed, epoch), so a resumed run sees the same."""
    lengths = [ex.length for ex in run.examples]
    per_epoch = run.budget.per_epoch
    for epoch in range(start_step // per_epoch, run.settings.epochs):
        plan = plan_epoch(lengths, run.layout, run.settings.seed, epoch)
        for index_in_epoch, micro_batches in enumerate(plan):
            if epoch * per_epoch + index_in_epoch < start_step:
                continue
            if epoch * per_epoch + index_in_epoch >= run.budget.total:
                return
            yield round(epoch + (index_in_epoch + 1) / per_epoch, 4), micro_batches


def _optimizer_step(run: _Run, micro_batches: list[list[int]], *, step: int, epoch: float, elapsed,
                    from_start: bool = False) -> dict:
    """Optimizer step number `step`: forward and backward over this process's micro-batches of it, clipping, the
    optimizer and scheduler steps. Returns the step's metrics row, the same on every process. `from_start`: the
    run's first step from its starting weights, whose forwards the objective checks (`check_start`)."""
    accelerator, model, objective, examples = run.accelerator, run.model, run.objective, run.examples
    rank, k, procs = accelerator.process_index, run.layout.accumulation_steps, run.layout.num_processes
    step_started = time.perf_counter()
    step_weight = sum(examples[i].weight for mb in micro_batches for i in mb)
    # accelerate divides by k and DDP averages over processes: undo both, then divide by the step's weight
    scale = k * procs / step_weight
    lr = run.scheduler.get_last_lr()[0]
    records: dict[str, list[torch.Tensor]] = {}
    tokens = 0
    grad_norm = None
    for micro in micro_batches[rank * k:(rank + 1) * k]:
        batch_examples = [examples[i] for i in micro]
        batch = objective.collate(batch_examples)
        tokens += batch["num_tokens"]
        batch = {key: value if isinstance(value, (int, float)) else value.to(accelerator.device)
                 for key, value in batch.items()}
        with accelerator.accumulate(model):
            with accelerator.autocast():
                loss_sum, record = objective.forward(model, batch)
            if not torch.isfinite(loss_sum):
                raise GsilError(objective.describe_nonfinite(step, batch_examples, loss_sum, record))
            accelerator.backward(loss_sum * scale)
            if accelerator.sync_gradients:
                max_norm = run.settings.max_grad_norm if run.settings.max_grad_norm > 0 else math.inf
                norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
                grad_norm = float(norm) if norm is not None else None
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
        for key, value in record.items():
            records.setdefault(key, []).append(value.detach())
    run.scheduler.step()

    gathered = _gather_records(accelerator, records)
    total_tokens = _reduce_sum(accelerator, tokens)
    step_seconds = time.perf_counter() - step_started
    if grad_norm is not None and not math.isfinite(grad_norm):
        raise GsilError(f"step {step}: gradient norm is {grad_norm}; batch ids "
                        f"{[examples[i].id for mb in micro_batches for i in mb]}")
    metrics = {"step": step, "epoch": epoch}
    metrics.update(objective.summarise(gathered))
    if from_start:
        metrics.update(objective.check_start(gathered))
    metrics.update({
        "lr": lr,
        "grad_norm": grad_norm,
        "tokens": int(total_tokens),
        "tokens_per_s": total_tokens / step_seconds if step_seconds > 0 else None,
        "step_s": step_seconds,
        "elapsed_s": elapsed(),
    })
    return metrics


def _gather_records(accelerator, records: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate this step's per-example records over micro-batches and processes (sizes may differ)."""
    local = {key: torch.cat(values).float().cpu() for key, values in records.items()}
    if accelerator.num_processes == 1:
        return local
    import torch.distributed as dist

    gathered: list = [None] * accelerator.num_processes
    dist.all_gather_object(gathered, local)
    return {key: torch.cat([part[key] for part in gathered]) for key in local}


def _reduce_sum(accelerator, value: float) -> float:
    if accelerator.num_processes == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=accelerator.device)
    return float(accelerator.reduce(tensor, reduction="sum").item())


def train(
    *,
    model,
    tokenizer,
    objective,
    examples: Sequence,
    settings: TrainSettings,
    output: str | Path,
    metrics_path: str | Path,
    run_settings: dict,
    config_extra: dict | None = None,
    accelerator=None,
    hooks: TrainHooks | None = None,
) -> TrainResult:
    """Train `model` on `examples` with `objective`; save it to `output` unless stopped early.

    `accelerator`: the one the stage made before loading the model (`make_training_accelerator`), else one is made
    here. `hooks` (tests, benchmarks): see TrainHooks.
    """
    from tqdm.auto import tqdm

    output, metrics_path = Path(output), Path(metrics_path)
    hooks = hooks if hooks is not None else TrainHooks()
    set_cpu_threads(settings.threads)
    accelerator, layout = _setup_accelerator(settings, accelerator)
    budget = _setup_budget(examples, settings, layout)
    model, optimizer, scheduler, numerics = _setup_model_and_optimizer(accelerator, model, settings, layout,
                                                                       budget.total)
    run = _Run(accelerator, model, optimizer, scheduler, objective, examples, settings, layout, budget)
    config = _training_config(settings, config_extra, run, numerics)
    ckpt, start = _setup_resume(run, output, metrics_path)

    started = time.perf_counter()

    def elapsed() -> float:
        return start.elapsed_s + time.perf_counter() - started

    progress = tqdm(total=budget.total, initial=start.step, desc=objective.name, unit="step",
                    disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    tracking = RunTracking(accelerator, settings, run_name=settings.tracking_run or output.name,
                           config={**run_settings, **config}, start_step=start.step, metrics_path=metrics_path)
    step, last_metrics = start.step, {}
    with TerminationNotice() as termination, tracking:
        for epoch, micro_batches in _remaining_steps(run, start.step):
            metrics = _optimizer_step(run, micro_batches, step=step + 1, epoch=epoch, elapsed=elapsed,
                                      from_start=step == 0)
            step, last_metrics = metrics["step"], metrics
            if accelerator.is_main_process:
                append_jsonl(metrics_path, metrics)
            tracking.log(metrics)
            stop = hooks.after_step(metrics)
            progress.update(1)
            progress.set_postfix({key: f"{metrics[key]:.4g}" for key in objective.progress_keys
                                  if isinstance(metrics.get(key), float)})
            preempted = termination.agreed(accelerator)
            if step == budget.total:
                break  # the final save follows, never a checkpoint
            if preempted or (settings.checkpoint_every and step % settings.checkpoint_every == 0):
                ckpt.save(accelerator, step, metrics["elapsed_s"])
            if preempted:
                progress.close()
                raise TrainingPreempted(f"stopped by SIGTERM after optimizer step {step} of {budget.total}; "
                                        f"checkpoint and metrics saved in {ckpt.directory}; the same command "
                                        f"continues from there")
            if stop:
                progress.close()
                return TrainResult(step, start.step, time.perf_counter() - started, last_metrics, stopped_early=True)
    progress.close()

    if hooks.save_model:
        save_final_model(accelerator, model, tokenizer, output, config, run_settings, lora=bool(settings.lora_r))
    ckpt.remove(accelerator)
    seconds = time.perf_counter() - started
    log.info("trained %d steps in %.1f s; saved %s", step - start.step, seconds, output)
    return TrainResult(step, start.step, seconds, last_metrics)


def check_numerics(accelerator, model, settings: TrainSettings):
    """The prepared run's numerics (logged, recorded in training_config.json); a warning when they are not what
    `expected_numerics` predicts, since the reference log-probs were computed with the prediction."""
    from gsil.training.numerics import engine_from_distributed_type, expected_numerics, observed_numerics

    observed = observed_numerics(accelerator, model)
    expected = expected_numerics(settings.precision, engine_from_distributed_type(accelerator.distributed_type))
    log.info("numerics: %s", observed.describe())
    if observed.values_key != expected.values_key:
        log.warning("the prepared model computes with %s, but reference scoring for this engine assumes %s: Δ "
                    "will not start at 0", observed.describe(), expected.describe())
    return observed
