"""`gsil bench {train,generate,decode,flops,eval,demo,all}`: speed against peer tools, printed and written as JSON.

Not part of the test run. Needs the `bench` extra (`bash workflow/bootstrap.sh bench`) for the TRL side.
Results: results/benchmarks/<name>.json (figures, settings, machine and package versions).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gsil.bench.train_step import CONTENDERS
from gsil.logutil import GsilError, setup_logging

WHICH = ("train", "generate", "decode", "flops", "eval", "demo")


def add_arguments(parser) -> None:
    parser.add_argument("which", choices=(*WHICH, "all"), help="which benchmark; 'all' runs every one in turn")
    parser.add_argument("--output-dir", default="results/benchmarks", help="where the JSON results go")
    parser.add_argument("--repeats", type=int, default=3, help="repeated runs per contender (median and spread)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, all cores)")
    parser.add_argument("--pairs", type=int, default=4, help="train: pairs per optimizer step")
    parser.add_argument("--steps", type=int, default=6, help="train: optimizer steps per run (first is warm-up)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help="train: comma-separated subset of %(default)s")
    parser.add_argument("--fixtures", default="results/benchmarks/fixtures",
                        help="generate: where the demo model and prompts are materialised if missing")
    parser.add_argument("--prompts", type=int, default=32, help="generate, decode: prompts per pass")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="generate, decode: new tokens per prompt at most")
    parser.add_argument("--model", default=None,
                        help="decode: model folder (default: the demo base model fixture; a trained model such as "
                             "results/demo/models/sft answers like the models the demo evaluates)")
    parser.add_argument("--batch-size", type=int, default=64, help="decode: prompts per batch")
    parser.add_argument("--peak-sizes", default="512,1024,2048",
                        help="flops: square matmul sizes timed for the peak (besides the model's own GEMMs)")
    parser.add_argument("--peak-windows", type=int, default=5, help="flops: timed windows per matmul configuration")
    parser.add_argument("--peak-window-s", type=float, default=0.2,
                        help="flops: seconds per timed window (and of warm-up) at least")
    parser.add_argument("--peak-max-product-s", type=float, default=1.0,
                        help="flops: skip a matmul configuration whose single product takes longer")
    parser.add_argument("--eval-limit", type=int, default=None,
                        help="eval: arith problems scored (default: all the fixture data holds)")
    parser.add_argument("--eval-mc-limit", type=int, default=None,
                        help="eval: arith_mc questions scored (default: all the fixture data holds)")
    parser.add_argument("--demo-repeats", type=int, default=1,
                        help="demo: whole-workflow runs of the fixed sizes in config/bench-demo.yaml (each ~20 min)")
    parser.add_argument("--cores", type=int, default=2, help="demo: snakemake --cores")


def run(args) -> int:
    log = setup_logging("bench")
    from gsil.bench.report import write_result

    selected = WHICH if args.which == "all" else (args.which,)
    summary: dict[str, dict] = {}
    for name in selected:
        log.info("benchmark %s", name)
        result = BENCHMARKS[name](args)
        path = write_result(name, result, args.output_dir)
        summary[name] = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                         and any(word in k for word in ("ratio", "speedup", "fraction"))}
        log.info("wrote %s", path)
    print("\n== ratios ==")
    for name, ratios in summary.items():
        for key, value in ratios.items():
            print(f"{name:9s} {key}: {value:.2f}")
    return 0


def _train(args) -> dict:
    from gsil.bench import train_step

    contenders = tuple(name.strip() for name in args.contenders.split(",") if name.strip())
    unknown = sorted(set(contenders) - set(train_step.CONTENDERS))
    if unknown or not contenders:
        raise GsilError(f"--contenders: unknown {unknown}; choose from {', '.join(train_step.CONTENDERS)}")
    return train_step.run(pairs=args.pairs, repeats=args.repeats, steps=args.steps, threads=args.threads,
                          contenders=contenders)


def _flops(args) -> dict:
    import torch

    from gsil.bench import flops, train_step

    job_threads = args.threads or torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    ours = train_step.run(pairs=args.pairs, repeats=args.repeats, steps=args.steps, threads=args.threads,
                          contenders=("gsil",))
    # The step's forward and backward; the reference pass (a separate stage, run once per round) costs a further
    # forward (a third of the step's matmul work) and is reported both ways.
    tokens = ours["gsil_tokens_per_step"]
    total_s = ours["gsil_s_per_step"]["median"]
    step_s = total_s - ours["gsil_reference_s_per_step"]
    work = flops.training_step_flops(body_linear_parameters=ours["body_linear_parameters"],
                                     head_parameters=ours["head_parameters"], positions=tokens,
                                     scored_tokens=ours["gsil_scored_tokens_per_step"])
    step_flops = work / step_s
    with_reference_flops = work * 4 / 3 / total_s
    six_nt = flops.training_flops_per_s(ours["parameters"], tokens / step_s)
    # The peak after the training runs, so the model's own GEMMs are timed at the step's row counts.
    model_shapes = flops.model_gemm_shapes(train_step.DEMO_SHAPE, positions=round(tokens),
                                           scored_tokens=round(ours["gsil_scored_tokens_per_step"]))
    sizes = tuple(int(size) for size in args.peak_sizes.split(",") if size.strip())
    measured = flops.measure_peaks(threads=(1, job_threads), sizes=sizes, model_shapes=model_shapes,
                                   windows=args.peak_windows, window_s=args.peak_window_s,
                                   warmup_s=args.peak_window_s, max_product_s=args.peak_max_product_s)
    peaks = measured["peaks"]
    bf16_peak, fp32_peak = peaks["bf16"]["flops_per_s"], peaks["fp32"]["flops_per_s"]
    result = {
        "matmul_peak_flops_per_s": {"bf16": bf16_peak, "fp32": fp32_peak},
        "matmul_peak": peaks,
        "matmul_windows": measured["records"],
        "cpu_bf16": measured["cpu"],
        "training_tokens_per_s": tokens / step_s,
        "training_flops_per_step": work,
        "training_flops_per_s": step_flops,
        "training_with_reference_flops_per_s": with_reference_flops,
        "training_6nt_flops_per_s": six_nt,
        "fraction_of_bf16_peak": flops.fraction(step_flops, bf16_peak),
        "fraction_of_bf16_peak_with_reference": flops.fraction(with_reference_flops, bf16_peak),
        "fraction_of_bf16_peak_6nt": flops.fraction(six_nt, bf16_peak),
        "fraction_of_fp32_peak": flops.fraction(step_flops, fp32_peak),
        "settings": {"pairs_per_step": args.pairs, "steps": args.steps, "threads": args.threads or None,
                     "job_threads": job_threads, "parameters": ours["parameters"],
                     "body_linear_parameters": ours["body_linear_parameters"],
                     "head_parameters": ours["head_parameters"], "tokens_per_step": tokens,
                     "scored_tokens_per_step": ours["gsil_scored_tokens_per_step"], "layout": ours["gsil_layout"],
                     "attention": ours["gsil_attention"], "peak": measured["settings"]},
    }
    at_job_threads = peaks["bf16"]["by_threads"].get(job_threads)
    if at_job_threads:  # absent only when every bf16 configuration at that thread count was skipped
        result["fraction_of_bf16_peak_at_job_threads"] = flops.fraction(step_flops, at_job_threads["flops_per_s"])
    print(flops.peak_table(measured["records"], peaks))
    print(flops.bf16_note(measured["cpu"]))
    print(f"matmul peak = best window of >= {args.peak_window_s:g} s over every configuration above:")
    for dtype in ("bf16", "fp32"):
        peak = peaks[dtype]
        per_thread = ", ".join(f"{count} thread{'s' if count != 1 else ''} {entry['flops_per_s'] / 1e9:.1f}"
                               for count, entry in sorted(peak["by_threads"].items()))
        w = peak["windows"]
        print(f"  {dtype}: {peak['flops_per_s'] / 1e9:.1f} GFLOP/s ({flops.describe_config(peak['config'])}; its "
              f"windows min/median/max {w['min'] / 1e9:.1f}/{w['median'] / 1e9:.1f}/{w['max'] / 1e9:.1f}); "
              f"per thread count: {per_thread}")
    shares = [f"{100 * result['fraction_of_bf16_peak']:.0f}% of the bf16 peak"]
    if at_job_threads:
        shares.append(f"{100 * result['fraction_of_bf16_peak_at_job_threads']:.0f}% of the {job_threads}-thread "
                      f"bf16 peak")
    shares.append(f"{100 * result['fraction_of_fp32_peak']:.0f}% of the fp32 peak")
    print(f"training step: {tokens / step_s:.0f} positions/s, {work / 1e9:.0f} GFLOP per step = "
          f"{step_flops / 1e9:.1f} GFLOP/s ({', '.join(shares)}); with the reference pass: "
          f"{with_reference_flops / 1e9:.1f} GFLOP/s ({100 * result['fraction_of_bf16_peak_with_reference']:.0f}%); "
          f"6·N·T estimate: {six_nt / 1e9:.1f} GFLOP/s ({100 * result['fraction_of_bf16_peak_6nt']:.0f}%)")
    return result


def _generate(args) -> dict:
    from gsil.bench import generation

    model_dir, prompts = _demo_fixtures(Path(args.fixtures))
    return generation.run(str(model_dir), str(prompts), limit=args.prompts, repeats=args.repeats,
                          max_new_tokens=args.max_new_tokens)


def _decode(args) -> dict:
    from gsil.bench import decoding

    model_dir, prompts = _demo_fixtures(Path(args.fixtures))
    # One thread unless --threads says otherwise: the evaluate_model jobs' setting.
    return decoding.run(args.model or str(model_dir), str(prompts.parent / "eval" / "arith_test.jsonl"),
                        limit=args.prompts, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                        repeats=args.repeats, threads=args.threads or 1)


def _eval(args) -> dict:
    from gsil.bench import evaluation

    model_dir, prompts = _demo_fixtures(Path(args.fixtures))
    # One thread, as the workflow's evaluate_model jobs run (resources: threads 1), unless --threads says otherwise.
    return evaluation.run(str(model_dir), str(prompts.parent), arith_limit=args.eval_limit,
                          mc_limit=args.eval_mc_limit, threads=args.threads or 1, repeats=args.repeats)


def _demo(args) -> dict:
    from gsil.bench import demo

    return demo.run(cores=args.cores, repeats=args.demo_repeats)


def _demo_fixtures(folder: Path) -> tuple[Path, Path]:
    """The demo base model and self-play prompts, made once with the suite's own stages."""
    model_dir, data_dir = folder / "base", folder / "data"
    gsil = [sys.executable, "-m", "gsil"]
    try:
        if not (model_dir / "config.json").exists():
            subprocess.run([*gsil, "prepare-model", "--source", "gguf", "--output", str(model_dir)], check=True)
        if not (data_dir / "selfplay.jsonl").exists():
            subprocess.run([*gsil, "prepare-data", "--profile", "demo", "--output", str(data_dir)], check=True)
    except subprocess.CalledProcessError as err:
        raise GsilError(f"could not build the benchmark fixtures in {folder}: {err}") from err
    return model_dir, data_dir / "selfplay.jsonl"


BENCHMARKS = {"train": _train, "generate": _generate, "decode": _decode, "flops": _flops, "eval": _eval,
              "demo": _demo}
