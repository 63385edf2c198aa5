"""The machine's matmul peak, measured in the same run as the training throughput it is compared with.

Achieved training FLOP/s counts the matmul work a step must do, forward 2 and backward 4 FLOPs per weight per row:
6 x body linear weights x positions run, plus 6 x head weights x scored tokens (the output head only sees the
response tokens). Attention's quadratic term is small at ~200 tokens and left out, so the figure is a slight
under-estimate. The cruder 6 x all parameters x positions, which credits the head on every position (and the
embedding lookup as a matmul), is reported beside it for comparison with other tools' figures.

The peak is the best sustained rate the bench finds, so that the fraction of peak is not flattered by a peak read
low on a machine whose matmul throughput swings between windows. Each configuration (dtype x thread count x
shape x operand layout) is warmed up, then timed over several windows of at least `window_s` seconds each (and at
least one product); its rate is the maximum over the windows, its spread min/median/max. The peak of a dtype is
the highest of those maxima over every configuration, reported with the configuration that gave it, and also per
thread count. Shapes: squares (512, 1024, 2048 by default) in both layouts, a @ b and a @ b.T (the layout of
`torch.nn.functional.linear`, which some CPU kernels run much faster), and the model's own forward GEMMs
(activations x weight.T, rows = the step's positions or scored tokens). A configuration whose single product
would take longer than `max_product_s` is skipped and listed as such (bf16 emulated on CPUs without native bf16
can be 100x slower than the native rate). Whether the CPU has native bf16 (flags avx512_bf16 / amx_bf16) is
reported beside the figures: without it the bf16 peak is an emulation figure.
"""

from __future__ import annotations

import time
from typing import Iterable, Sequence

from gsil.bench.report import format_table, summarise
from gsil.cpu import NATIVE_BF16_FLAGS, bf16_support, read_cpuinfo

DEFAULT_SQUARE_SIZES = (512, 1024, 2048)
LAYOUTS = ("a@b", "a@b.T")
DTYPES = ("bf16", "fp32")
# ------------------------------------------------------------------------------------------------ pure parts


def matmul_flops(m: int, k: int, n: int) -> int:
    """FLOPs of one (m x k) @ (k x n) product: a multiply and an add per term, 2·m·k·n."""
    return 2 * m * k * n


def window_rate(products: int, flops_per_product: float, seconds: float) -> float:
    """FLOP/s of one timed window that ran `products` products in `seconds`."""
    if seconds <= 0:
        raise ValueError(f"a window must last a positive time, got {seconds}")
    return products * flops_per_product / seconds


def window_stats(rates: Sequence[float]) -> dict:
    """Spread of one configuration's window rates; its sustained rate is the best window (`max`)."""
    stats = summarise(list(rates))
    return {key: stats[key] for key in ("min", "median", "max", "n", "samples")}


def predicted_product_seconds(flops_per_product: float, known_rates: Iterable[float]) -> float | None:
    """Seconds one product should take at the best rate already seen for the same dtype, threads and layout
    (an optimistic guess, so a configuration is only skipped untried when even that guess is too slow)."""
    rates = [rate for rate in known_rates if rate > 0]
    return flops_per_product / max(rates) if rates else None


def model_gemm_shapes(shape: dict, *, positions: int, scored_tokens: int) -> list[tuple[str, int, int, int]]:
    """(label, m, k, n) of the forward GEMMs of a Llama-shaped model: m rows of activations (k wide) times a
    weight of n outputs, run as activations @ weight.T. Attention's q/o, k/v, the MLP's gate/up and down run on
    every position; the output head on the scored tokens only."""
    hidden, inter = shape["hidden_size"], shape["intermediate_size"]
    kv = hidden // shape["num_attention_heads"] * shape["num_key_value_heads"]
    rows, scored = max(1, int(positions)), max(1, int(scored_tokens))
    return [("model q/o proj", rows, hidden, hidden), ("model k/v proj", rows, hidden, kv),
            ("model mlp gate/up", rows, hidden, inter), ("model mlp down", rows, inter, hidden),
            ("model head", scored, hidden, shape["vocab_size"])]


def choose_peak(records: Sequence[dict]) -> dict[str, dict]:
    """Per dtype: the configuration whose best window is fastest, and the same per thread count.

    Each record: {"dtype", "threads", "label", "m", "k", "n", "layout", "windows": window_stats(...)}; records
    without "windows" (skipped configurations) are ignored. Ties keep the first record."""
    peaks: dict[str, dict] = {}
    for record in records:
        if not record.get("windows"):
            continue
        rate = record["windows"]["max"]
        entry = peaks.setdefault(record["dtype"], {"flops_per_s": float("-inf"), "by_threads": {}})
        if rate > entry["flops_per_s"]:
            entry.update(flops_per_s=rate, config=_config(record), windows=record["windows"])
        per_thread = entry["by_threads"].get(record["threads"])
        if per_thread is None or rate > per_thread["flops_per_s"]:
            entry["by_threads"][record["threads"]] = {"flops_per_s": rate, "config": _config(record),
                                                      "windows": record["windows"]}
    return peaks


def _config(record: dict) -> dict:
    return {key: record[key] for key in ("dtype", "threads", "label", "m", "k", "n", "layout")}


def describe_config(config: dict) -> str:
    threads = f"{config['threads']} thread{'s' if config['threads'] != 1 else ''}"
    return f"{threads}, {config['label']} {config['m']}x{config['k']}x{config['n']} {config['layout']}"


def fraction(achieved: float, peak: float) -> float:
    if peak <= 0:
        raise ValueError(f"a peak must be positive, got {peak}")
    return achieved / peak


# ------------------------------------------------------------------------------------------------ timing


def time_matmul(m: int, k: int, n: int, dtype: str, *, layout: str = "a@b", windows: int = 5,
                window_s: float = 0.2, warmup_s: float = 0.2, max_product_s: float = 1.0,
                predicted_s: float | None = None) -> dict:
    """Window rates of (m x k) @ (k x n) products in `dtype` at the current torch thread count.

    Returns {"windows": window_stats} or {"skipped": reason} when one product takes longer than max_product_s
    (predicted from a faster configuration, or measured on the first call)."""
    import torch

    if predicted_s is not None and predicted_s > max_product_s:
        return {"skipped": f"one product would take >= {predicted_s:.3g} s (limit {max_product_s:g} s)"}
    torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=generator).to(torch_dtype)
    if layout == "a@b":
        b = torch.randn(k, n, generator=generator).to(torch_dtype)
    elif layout == "a@b.T":
        b = torch.randn(n, k, generator=generator).to(torch_dtype).t()
    else:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    out = torch.empty(m, n, dtype=torch_dtype)
    flops = matmul_flops(m, k, n)
    start = time.perf_counter()
    torch.mm(a, b, out=out)  # the first call pays for kernel selection
    first_s = time.perf_counter() - start
    if first_s > max_product_s:
        return {"skipped": f"one product took {first_s:.3g} s (limit {max_product_s:g} s)"}
    start = time.perf_counter()
    while time.perf_counter() - start < warmup_s:
        torch.mm(a, b, out=out)
    rates = []
    for _ in range(windows):
        products = 0
        start = time.perf_counter()
        while True:
            torch.mm(a, b, out=out)
            products += 1
            elapsed = time.perf_counter() - start
            if elapsed >= window_s:
                break
        rates.append(window_rate(products, flops, elapsed))
    return {"windows": window_stats(rates)}


def peak_configurations(*, sizes: Sequence[int], model_shapes: Sequence[tuple[str, int, int, int]] = ()
                        ) -> list[tuple[str, int, int, int, str]]:
    """(label, m, k, n, layout) to time, cheapest first: each square in both layouts, the model's GEMMs in the
    linear layer's layout (activations @ weight.T)."""
    configs = [(f"square {s}", s, s, s, layout) for s in sizes for layout in LAYOUTS]
    configs += [(label, m, k, n, "a@b.T") for label, m, k, n in model_shapes]
    return sorted(configs, key=lambda c: matmul_flops(c[1], c[2], c[3]))


def measure_peaks(*, threads: Sequence[int], sizes: Sequence[int] = DEFAULT_SQUARE_SIZES,
                  model_shapes: Sequence[tuple[str, int, int, int]] = (), dtypes: Sequence[str] = DTYPES,
                  windows: int = 5, window_s: float = 0.2, warmup_s: float = 0.2,
                  max_product_s: float = 1.0) -> dict:
    """Time every configuration at each thread count; returns the records, the per-dtype peaks and the CPU facts."""
    import torch

    configs = peak_configurations(sizes=sizes, model_shapes=model_shapes)
    previous_threads = torch.get_num_threads()
    records: list[dict] = []
    try:
        for dtype in dtypes:
            for count in sorted(set(threads)):
                torch.set_num_threads(count)
                seen: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
                for label, m, k, n, layout in configs:
                    guess = predicted_product_seconds(matmul_flops(m, k, n), seen[layout])
                    timed = time_matmul(m, k, n, dtype, layout=layout, windows=windows, window_s=window_s,
                                        warmup_s=warmup_s, max_product_s=max_product_s, predicted_s=guess)
                    if "windows" in timed:
                        seen[layout].append(timed["windows"]["max"])
                    records.append({"dtype": dtype, "threads": count, "label": label, "m": m, "k": k, "n": n,
                                    "layout": layout, **timed})
    finally:
        torch.set_num_threads(previous_threads)
    peaks = choose_peak(records)
    missing = [dtype for dtype in dtypes if dtype not in peaks]
    if missing:
        raise RuntimeError(f"no matmul configuration of {missing} ran within {max_product_s} s per product")
    cpu = bf16_support(read_cpuinfo())
    cpu["torch_cpu_capability"] = _torch_cpu_capability()
    return {"peaks": peaks, "records": records, "cpu": cpu,
            "settings": {"threads": sorted(set(threads)), "square_sizes": list(sizes), "windows": windows,
                         "window_s": window_s, "warmup_s": warmup_s, "max_product_s": max_product_s}}


def _torch_cpu_capability() -> str | None:
    import torch

    try:
        return torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        return None


def peak_table(records: Sequence[dict], peaks: dict[str, dict]) -> str:
    """One row per timed configuration (window min/median/max in GFLOP/s, '*' on each dtype's peak), then one
    line per skipped configuration."""
    rows, skipped = [], []
    for record in records:
        config = _config(record)
        shape = f"{record['m']}x{record['k']}x{record['n']}"
        if record.get("windows"):
            w = record["windows"]
            mark = "*" if peaks.get(record["dtype"], {}).get("config") == config else ""
            rows.append([record["dtype"], record["threads"], record["label"], shape, record["layout"], w["n"],
                         w["min"] / 1e9, w["median"] / 1e9, w["max"] / 1e9, mark])
        else:
            skipped.append(f"skipped: {record['dtype']} {describe_config(config)}: {record['skipped']}")
    table = format_table(["dtype", "threads", "config", "m x k x n", "layout", "windows", "GFLOP/s min",
                          "median", "max", "peak"], rows)
    return "\n".join([table, *skipped])


def bf16_note(cpu: dict) -> str:
    capability = cpu.get("torch_cpu_capability") or "unknown"
    if cpu.get("native_bf16") is None:
        return f"CPU bf16: unknown (no /proc/cpuinfo); torch CPU capability {capability}"
    flags = ", ".join(f"{flag} {'yes' if cpu.get(flag) else 'no'}" for flag in NATIVE_BF16_FLAGS)
    if cpu["native_bf16"]:
        return f"CPU bf16: native ({flags}); torch CPU capability {capability}"
    return (f"CPU bf16: EMULATED ({flags}); torch CPU capability {capability}: the bf16 peak and fraction are "
            f"emulation figures")


# ------------------------------------------------------------------------------------------------ training side


def training_flops_per_s(parameters: int, tokens_per_s: float) -> float:
    """The 6·N·T estimate: every parameter, every position."""
    return 6.0 * parameters * tokens_per_s


def training_step_flops(*, body_linear_parameters: int, head_parameters: int, positions: float,
                        scored_tokens: float) -> float:
    """Matmul FLOPs of one forward + backward: the body on every position, the head on the scored ones."""
    return 6.0 * (body_linear_parameters * positions + head_parameters * scored_tokens)
