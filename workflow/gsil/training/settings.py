"""Training hyperparameters shared by `gsil sft` and `gsil align`: CLI flags, the resolved settings, batch layout.

One config means the same optimisation on one CPU and on eight GPUs: the global batch is the setting, and the
per-device batch and gradient accumulation are derived from it and the process count at run time.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import dataclass, field

from gsil.generation.settings import PRECISIONS, auto_precision_reason, resolve_precision
from gsil.logutil import GsilError
from gsil.modeling import ATTENTION_CHOICES, add_attention_argument

log = logging.getLogger("gsil.training")

OPTIMIZERS = ("adamw", "rmsprop", "sgd")
SCHEDULERS = ("linear", "cosine", "constant")
CHECKPOINT_SAVES = ("beside", "in-place")


@dataclass
class TrainSettings:
    """Every setting that changes what a training run computes (saved as training_config.json)."""

    lr: float = 5e-7
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.1
    optimizer: str = "rmsprop"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    epochs: int = 1
    max_steps: int = 0  # 0: as many as the epochs give
    global_batch_size: int = 8
    per_device_batch_size: int = 0  # 0: the whole per-device share of the global batch in one micro-batch
    max_length: int = 1024
    max_prompt_length: int = 512
    template: str = "chat"
    seed: int = 42
    precision: str = "bf16"  # bf16 | fp32 once resolved (settings_from_args); auto only before that
    # What --precision asked for (auto, bf16 or fp32; "" = `precision`), recorded beside the resolved `precision`.
    precision_requested: str = ""
    attention: str = "auto"  # gsil.modeling.resolve_attention
    gradient_checkpointing: bool = False
    lora_r: int = 0
    lora_alpha: float = 16.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    checkpoint_every: int = 50
    checkpoint_save: str = "beside"  # gsil.training.checkpoint.save_checkpoint
    resume: str = "auto"
    threads: int = 0  # 0: torch's default (the physical cores)
    # Where a copy of the per-step metrics goes (gsil.training.tracking): changes no output; not fingerprinted and
    # not in training_config.json.
    tracking: list[str] = field(default_factory=list)
    tracking_dir: str = ""
    tracking_project: str = "gsil"
    tracking_run: str = ""  # "": the output folder's name

    def __post_init__(self) -> None:
        self.precision_requested = self.precision_requested or self.precision

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def add_training_arguments(parser: argparse.ArgumentParser, defaults: TrainSettings | None = None) -> None:
    """The hyperparameter flags of CONTRACT.md, with `defaults` (SFT and align differ in lr, optimizer, ...)."""
    d = defaults or TrainSettings()
    group = parser.add_argument_group("training hyperparameters")
    group.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (default %(default)s)")
    group.add_argument("--lr-scheduler", choices=SCHEDULERS, default=d.lr_scheduler)
    group.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio,
                       help="fraction of the optimizer steps spent warming up linearly (from lr/(n+1), never 0; default %(default)s)")
    group.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    group.add_argument("--weight-decay", type=float, default=d.weight_decay)
    group.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm,
                       help="clip the global gradient norm to this; 0 turns clipping off (default %(default)s)")
    group.add_argument("--epochs", type=int, default=d.epochs)
    group.add_argument("--max-steps", type=int, default=d.max_steps,
                       help="stop after this many optimizer steps; 0: run all epochs (default)")
    group.add_argument("--global-batch-size", type=int, default=d.global_batch_size,
                       help="examples (pairs for align) per optimizer step over all processes (default %(default)s)")
    group.add_argument("--per-device-batch-size", type=int, default=d.per_device_batch_size,
                       help="examples per forward pass on one device; 0: global batch / processes, no "
                            "accumulation. Accumulation steps = global / (per-device x processes)")
    group.add_argument("--max-length", type=int, default=d.max_length, help="prompt + response tokens")
    group.add_argument("--max-prompt-length", type=int, default=d.max_prompt_length)
    group.add_argument("--template", choices=("chat", "spin"), default=d.template,
                       help="prompt rendering (gsil.tokenization): the tokenizer's chat template or SPIN's raw one")
    group.add_argument("--seed", type=int, default=d.seed)
    group.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                       help="bf16: autocast with fp32 master weights; fp32: no autocast; auto: bf16 where the "
                            "device computes it natively (CUDA with bf16; a CPU with AVX512-BF16 or AMX where a "
                            "cached probe finds bf16 faster than fp32), fp32 elsewhere, resolved once at the start "
                            "(default %(default)s)")
    add_attention_argument(group, default=d.attention)
    group.add_argument("--gradient-checkpointing", action="store_true", default=d.gradient_checkpointing)
    group.add_argument("--lora-r", type=int, default=d.lora_r, help="LoRA rank; 0 trains all weights (default)")
    group.add_argument("--lora-alpha", type=float, default=d.lora_alpha)
    group.add_argument("--lora-targets", default=",".join(d.lora_targets),
                       help="comma-separated module names LoRA adapts (default %(default)s)")
    group.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                       help="save a resumable checkpoint every N optimizer steps into <output>.checkpoint/; 0: never")
    group.add_argument("--checkpoint-save", choices=CHECKPOINT_SAVES, default=d.checkpoint_save,
                       help="beside: write the new checkpoint next to the previous one and delete that after (two on "
                            "disk during a save); in-place: delete the previous one first (one on disk; a kill "
                            "during the save restarts the run) (default %(default)s)")
    group.add_argument("--resume", choices=("auto", "never"), default=d.resume,
                       help="auto: continue from <output>.checkpoint/ when it exists (default)")
    group.add_argument("--threads", type=int, default=d.threads,
                       help="CPU threads for torch; 0 keeps torch's default")
    track = parser.add_argument_group("experiment tracking (a copy of metrics.jsonl's rows; changes no output)")
    track.add_argument("--tracking", default=",".join(d.tracking), metavar="tensorboard[,wandb,mlflow]",
                       help="trackers that also get every step's metrics and the hyperparameters, through "
                            "accelerate; each must be installed (default: none)")
    track.add_argument("--tracking-dir", default=d.tracking_dir, metavar="DIR",
                       help="tracking folder (accelerate's project_dir): TensorBoard writes "
                            "DIR/<--tracking-project>/; wandb keeps its files here")
    track.add_argument("--tracking-project", default=d.tracking_project,
                       help="project: TensorBoard's sub-folder, the wandb project, the mlflow experiment "
                            "(default %(default)s)")
    track.add_argument("--tracking-run", default=d.tracking_run, metavar="NAME",
                       help="the run's name in wandb / mlflow (default: the --output folder's name)")


def settings_from_args(args: argparse.Namespace, device: str | None = None) -> TrainSettings:
    """The run's settings, validated, with --precision auto resolved for `device` (default: the device this
    process trains on, `training_device()`): the one place a training stage resolves it."""
    values = {}
    for f in dataclasses.fields(TrainSettings):
        if hasattr(args, f.name):
            values[f.name] = getattr(args, f.name)
    if isinstance(values.get("lora_targets"), str):
        values["lora_targets"] = [t.strip() for t in values["lora_targets"].split(",") if t.strip()]
    if "tracking" in values:
        from gsil.training.tracking import parse_trackers

        values["tracking"] = parse_trackers(values["tracking"])
    settings = TrainSettings(**values)
    validate_settings(settings)
    return resolve_settings_precision(settings, device)


def training_device() -> str:
    """'cpu' or 'cuda': where this process's Accelerator will put the model (gsil.launch.use_cpu)."""
    from gsil.launch import use_cpu

    return "cpu" if use_cpu() else "cuda"


def resolve_stage_precision(requested: str, device: str) -> str:
    """bf16 or fp32 for --precision `requested` on `device` (gsil.generation.settings.resolve_precision, shared
    with generation); for auto, logs what it resolved to and why."""
    resolved = resolve_precision(requested, device)
    if requested == "auto":
        log.info("--precision auto -> %s on %s: %s", resolved, device, auto_precision_reason(resolved, device))
    return resolved


def resolve_settings_precision(settings: TrainSettings, device: str | None = None) -> TrainSettings:
    """`settings` with `precision` resolved to bf16 or fp32 and the requested value in `precision_requested`."""
    if settings.precision != "auto":
        return settings
    resolved = resolve_stage_precision(settings.precision, device or training_device())
    return dataclasses.replace(settings, precision=resolved, precision_requested=settings.precision)


def validate_settings(s: TrainSettings) -> None:
    checks = [
        (s.lr > 0, "--lr", s.lr, "must be > 0"),
        (0 <= s.warmup_ratio < 1, "--warmup-ratio", s.warmup_ratio, "must be in [0, 1)"),
        (s.epochs >= 1, "--epochs", s.epochs, "must be >= 1"),
        (s.max_steps >= 0, "--max-steps", s.max_steps, "must be >= 0"),
        (s.global_batch_size >= 1, "--global-batch-size", s.global_batch_size, "must be >= 1"),
        (s.per_device_batch_size >= 0, "--per-device-batch-size", s.per_device_batch_size, "must be >= 0"),
        (s.max_length > s.max_prompt_length > 0, "--max-length/--max-prompt-length",
         (s.max_length, s.max_prompt_length), "need max_length > max_prompt_length > 0"),
        (s.max_grad_norm >= 0, "--max-grad-norm", s.max_grad_norm, "must be >= 0"),
        (s.lora_r >= 0, "--lora-r", s.lora_r, "must be >= 0"),
        (s.checkpoint_every >= 0, "--checkpoint-every", s.checkpoint_every, "must be >= 0"),
        (s.optimizer in OPTIMIZERS, "--optimizer", s.optimizer, f"must be one of {OPTIMIZERS}"),
        (s.lr_scheduler in SCHEDULERS, "--lr-scheduler", s.lr_scheduler, f"must be one of {SCHEDULERS}"),
        (s.precision in PRECISIONS, "--precision", s.precision, f"must be one of {PRECISIONS}"),
        (s.checkpoint_save in CHECKPOINT_SAVES, "--checkpoint-save", s.checkpoint_save,
         f"must be one of {CHECKPOINT_SAVES}"),
        (s.attention in ATTENTION_CHOICES, "--attention", s.attention, f"must be one of {ATTENTION_CHOICES}"),
    ]
    for ok, flag, value, why in checks:
        if not ok:
            raise GsilError(f"{flag}={value!r}: {why}")
    if s.tracking:
        from gsil.training.tracking import parse_trackers, validate_tracking

        validate_tracking(parse_trackers(s.tracking), s.tracking_dir, s.tracking_project)


@dataclass(frozen=True)
class BatchLayout:
    global_batch_size: int
    per_device_batch_size: int
    accumulation_steps: int
    num_processes: int


def batch_layout(global_batch_size: int, per_device_batch_size: int, num_processes: int) -> BatchLayout:
    """Split the global batch over processes and accumulation steps; it must divide exactly.

    per_device_batch_size 0 means the whole per-process share in one micro-batch (no accumulation).
    """
    if global_batch_size % num_processes:
        raise GsilError(f"--global-batch-size={global_batch_size} is not divisible by the {num_processes} processes")
    share = global_batch_size // num_processes
    per_device = per_device_batch_size or share
    if share % per_device:
        raise GsilError(
            f"--global-batch-size={global_batch_size} over {num_processes} process(es) gives {share} examples each, "
            f"not divisible by --per-device-batch-size={per_device}"
        )
    return BatchLayout(global_batch_size, per_device, share // per_device, num_processes)
