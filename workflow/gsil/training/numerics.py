"""The numerics of a forward pass: which engine runs it, in which dtype the weights compute, under which autocast.

The reference log-probs of a pairwise method must be computed with the numerics the policy trains with, or Δ does
not start at ~0 but at the rounding gap between the two (for a 7B model in bf16 this gap is larger than many of the
first steps' updates). The training precision alone does not fix the numerics: under DeepSpeed the engine casts the
weights to bf16 and runs without autocast, under FSDP2 the mixed-precision policy casts them to bf16 and accelerate
autocasts as well, and on one device or under DDP fp32 weights run under bf16 autocast. So both sides record a
`Numerics` (in the reference's `.meta.json` and the model's `training_config.json`) and `gsil align` refuses a
reference whose numerics differ from the policy's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

ENGINES = ("single", "ddp", "deepspeed", "fsdp")


@dataclass(frozen=True)
class Numerics:
    engine: str  # one of ENGINES: how the forward is run (informational: it does not change values by itself)
    weights_dtype: str  # "float32" | "bfloat16": the dtype the weights have when the matmuls read them
    autocast_dtype: str | None  # "bfloat16" or None (no autocast)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def values_key(self) -> tuple[str, str | None]:
        """What changes the computed values: two runs with equal keys give equal log-probs up to reduction order."""
        return self.weights_dtype, self.autocast_dtype

    def describe(self) -> str:
        autocast = f"{self.autocast_dtype} autocast" if self.autocast_dtype else "no autocast"
        return f"{self.weights_dtype} weights, {autocast} ({self.engine})"

    def torch_dtype(self):
        import torch

        return {"float32": torch.float32, "bfloat16": torch.bfloat16}[self.weights_dtype]


def expected_numerics(precision: str, engine: str) -> Numerics:
    """The numerics a training run with `precision` ("bf16" | "fp32") gets from accelerate under `engine`."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")
    if precision == "fp32":
        return Numerics(engine, "float32", None)
    if precision != "bf16":
        raise ValueError(f"unknown precision {precision!r}")
    if engine == "deepspeed":
        # DeepSpeed's bf16 mode keeps fp32 master copies in the optimizer and runs the module in bf16; accelerate
        # turns its own autocast off under DeepSpeed (Accelerator.native_amp is False there).
        return Numerics(engine, "bfloat16", None)
    if engine == "fsdp":
        # FSDP2's MixedPrecisionPolicy casts the fp32 shards to bf16 for compute, and accelerate autocasts too.
        return Numerics(engine, "bfloat16", "bfloat16")
    return Numerics(engine, "float32", "bfloat16")


def engine_from_distributed_type(distributed_type) -> str:
    """accelerate's DistributedType (or its string value) -> one of ENGINES."""
    name = str(getattr(distributed_type, "value", distributed_type)).upper()
    if name == "NO":
        return "single"
    if name == "DEEPSPEED":
        return "deepspeed"
    if name == "FSDP":
        return "fsdp"
    if name.startswith("MULTI_"):
        return "ddp"
    raise ValueError(f"unsupported accelerate distributed type {name!r}")


def observed_numerics(accelerator, model) -> Numerics:
    """The numerics of a prepared training run, read off the accelerator and the prepared model."""
    import torch

    engine = engine_from_distributed_type(accelerator.distributed_type)
    autocast = "bfloat16" if accelerator.native_amp and accelerator.mixed_precision == "bf16" else None
    weights = None
    if engine == "fsdp":
        plugin = getattr(accelerator.state, "fsdp_plugin", None)
        policy = getattr(plugin, "mixed_precision_policy", None)
        param_dtype = getattr(policy, "param_dtype", None)
        if param_dtype is not None:
            weights = _dtype_name(param_dtype)
    if weights is None:
        dtypes = {p.dtype for p in accelerator.unwrap_model(model).parameters() if p.is_floating_point()}
        weights = _dtype_name(torch.bfloat16 if torch.bfloat16 in dtypes else torch.float32)
    return Numerics(engine, weights, autocast)


def numerics_from_meta(meta: dict) -> Numerics | None:
    """A reference `.meta.json`'s numerics; files written before they were recorded give what their precision meant
    then (the single-process default: fp32 weights, bf16 autocast for "bf16")."""
    recorded = meta.get("numerics")
    if isinstance(recorded, dict):
        return Numerics(recorded.get("engine", "single"), recorded["weights_dtype"], recorded.get("autocast_dtype"))
    precision = meta.get("precision")
    if precision in ("bf16", "fp32"):
        return expected_numerics(precision, "single")
    return None


# |mean gap| above this many nats per sequence at the first step, and above three standard errors (so that a
# consistent offset is flagged, not bf16 noise whose mean is near 0), means the reference does not describe the
# policy's starting weights. At β = 0.1 it is a reward of 0.05 (gsil check-gpu's tolerance).
START_GAP_TOLERANCE = 0.5
START_GAPS = ("warn", "fail", "off")


def start_gap(policy, reference) -> dict:
    """Mean, standard error and largest absolute value of policy − reference log-probs (nats per sequence) over
    the sequences of the first step, which the policy scores before any update: Δ's starting point."""
    gaps = [float(p) - float(r) for p, r in zip(policy, reference, strict=True)]
    if not gaps:
        raise ValueError("no sequences to measure the start gap on")
    n = len(gaps)
    mean = sum(gaps) / n
    se = (sum((g - mean) ** 2 for g in gaps) / (n - 1) / n) ** 0.5 if n > 1 else 0.0
    return {"mean": mean, "se": se, "max_abs": max(abs(g) for g in gaps), "n": n}


def is_offset(gap: dict, tolerance: float = START_GAP_TOLERANCE) -> bool:
    """A start gap that is an offset, not rounding: beyond `tolerance` and beyond three standard errors."""
    return abs(gap["mean"]) > tolerance and abs(gap["mean"]) > 3 * gap["se"]


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def training_load_dtype(accelerator, settings):
    """The dtype a training stage loads its model in: bf16 under DeepSpeed bf16 (the engine runs the module in bf16
    and keeps its own fp32 masters, so a float32 load would only double the host memory), float32 otherwise (the
    master weights of single-device, DDP and FSDP runs)."""
    import torch

    engine = engine_from_distributed_type(accelerator.distributed_type)
    if engine == "deepspeed":
        return expected_numerics(settings.precision, engine).torch_dtype()
    return torch.float32
