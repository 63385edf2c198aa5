"""`gsil prepare-data`: build every data file the trainers and evaluators read, for one profile.

demo  (offline): the synthetic arithmetic task of `gsil.arithmetic`, written in the layout of CONTRACT.md
      ("Demo data layout"): sft.jsonl, selfplay.jsonl, preferences.jsonl, eval/arith_test.jsonl,
      eval/arith_fewshot.jsonl (unless --fewshot-size 0), eval/arith_val.jsonl (only with --validation-size N > 0),
      eval/arith_mc.jsonl, manifest.json.
paper (needs the Hub, or local copies via --*-source): selfplay.jsonl (GSIL's demonstrations: UltraFeedback
      train_prefs prompts + chosen answers), spin_selfplay.jsonl (SPIN_iter0's UltraChat demonstrations),
      preferences.jsonl (UltraFeedback train_prefs chosen/rejected for DPO), manifest.json.

Every file is validated by `gsil.records` as it is written; the manifest records counts, settings, the data
sources (revisions resolved to commit shas where the Hub answers) and the overlap checks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gsil.io import write_json
from gsil.logutil import GsilError, setup_logging
from gsil.runinfo import write_run_info

DEMO_FILES = {
    # output name -> (relative path, record kind)
    "sft": ("sft.jsonl", "demonstration"),
    "selfplay": ("selfplay.jsonl", "demonstration"),
    "preferences": ("preferences.jsonl", "preference"),
    "arith_test": ("eval/arith_test.jsonl", "eval_generation"),
    "arith_fewshot": ("eval/arith_fewshot.jsonl", "eval_generation"),
    "arith_val": ("eval/arith_val.jsonl", "eval_generation"),
    "arith_mc": ("eval/arith_mc.jsonl", "eval_choice"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from gsil import arithmetic, paper_data

    sizes, cfg = arithmetic.Sizes(), arithmetic.Config()
    parser.add_argument("--profile", choices=("demo", "paper"), default="demo")
    parser.add_argument("--output", required=True, help="data folder (results/<run>/data)")
    parser.add_argument("--seed", type=int, default=0)
    demo = parser.add_argument_group("demo profile: split sizes and generator settings")
    demo.add_argument("--sft-size", type=int, default=sizes.sft, help="SFT demonstrations")
    demo.add_argument("--selfplay-size", type=int, default=sizes.selfplay,
                      help="self-play demonstrations (disjoint from the SFT ones)")
    demo.add_argument("--preference-size", type=int, default=sizes.preference,
                      help="DPO pairs, built on the first N self-play problems")
    demo.add_argument("--test-size", type=int, default=sizes.test, help="held-out test problems")
    demo.add_argument("--fewshot-size", type=int, default=sizes.fewshot, help="few-shot example problems")
    demo.add_argument("--validation-size", type=int, default=sizes.validation,
                      help="held-out validation problems (eval/arith_val.jsonl; 0 writes no file)")
    demo.add_argument("--mc-wrong", type=int, default=sizes.mc_wrong, help="wrong choices per multiple-choice item")
    demo.add_argument("--min-number", type=int, default=cfg.min_number)
    demo.add_argument("--max-number", type=int, default=cfg.max_number)
    demo.add_argument("--max-factor", type=int, default=cfg.max_factor, help="largest multiplier or divisor")
    demo.add_argument("--max-result", type=int, default=cfg.max_result, help="largest intermediate result")
    demo.add_argument("--max-steps", type=int, default=cfg.max_steps, choices=(1, 2, 3))
    paper = parser.add_argument_group("paper profile: Hub datasets (a local .jsonl/.json/.parquet path also works)")
    paper.add_argument("--ultrafeedback-source", default=paper_data.ULTRAFEEDBACK_REPO)
    paper.add_argument("--ultrafeedback-revision", default=paper_data.ULTRAFEEDBACK_REVISION)
    paper.add_argument("--spin-source", default=paper_data.SPIN_REPO)
    paper.add_argument("--spin-revision", default=paper_data.SPIN_REVISION)
    paper.add_argument("--limit", type=int, default=None, help="keep only the first N rows of each source (smoke runs)")


def run(args: argparse.Namespace) -> int:
    log = setup_logging("prepare-data")
    output = Path(args.output)
    settings = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    if args.profile == "demo":
        manifest = _demo(args, output, log)
    else:
        manifest = _paper(args, output, log)
    manifest["settings"] = settings
    write_json(output / "manifest.json", manifest)
    write_run_info(output, settings)
    log.info("data ready in %s: %s", output, ", ".join(f"{k} {v}" for k, v in manifest["counts"].items()))
    return 0


def _demo(args, output: Path, log) -> dict:
    from gsil import arithmetic
    from gsil.records import file_sha256, write_records

    cfg = arithmetic.Config(
        min_number=args.min_number, max_number=args.max_number, max_factor=args.max_factor,
        max_result=args.max_result, max_steps=args.max_steps,
    )
    sizes = arithmetic.Sizes(
        test=args.test_size, fewshot=args.fewshot_size, selfplay=args.selfplay_size, sft=args.sft_size,
        preference=args.preference_size, mc_wrong=args.mc_wrong, validation=args.validation_size,
    )
    records = arithmetic.build_demo_records(args.seed, cfg, sizes)
    overlaps = arithmetic.overlap_report(records)
    shared = {f"{a}/{b}": n for a, others in overlaps.items() for b, n in others.items() if n}
    if shared:  # cannot happen by construction; checked so that a regression fails loudly, not silently
        raise GsilError(f"held-out problems leak into other files: {shared}")
    files, counts, hashes = {}, {}, {}
    for name in ("arith_fewshot", "arith_val"):  # optional files: size 0 writes none, and leaves no stale one
        stale = output / DEMO_FILES[name][0]
        if not records.get(name) and stale.exists():
            log.info("removing %s from an earlier run (its size is now 0)", stale)
            stale.unlink()
    for name, rows in records.items():
        if name in ("arith_fewshot", "arith_val") and not rows:
            continue
        relative, kind = DEMO_FILES[name]
        counts[name] = write_records(output / relative, rows, kind)
        files[name] = relative
        hashes[relative] = file_sha256(output / relative)
    templates = {
        name: sorted({row["template"] for row in rows}) for name, rows in records.items() if rows
    }
    slip_counts: dict[str, int] = {}
    for row in records["preferences"]:
        slip_counts[row["slip"]] = slip_counts.get(row["slip"], 0) + 1
    log.info("rejected responses by slip kind: %s", slip_counts)
    return {
        "profile": "demo",
        "seed": args.seed,
        "generator": {**cfg.__dict__, "templates": arithmetic.templates_for(cfg)},
        "sizes": sizes.__dict__,
        "files": files,
        "counts": counts,
        "sha256": hashes,
        "templates_by_file": templates,
        "preference_slips": slip_counts,
        "overlap_checks": overlaps,
    }


def _paper(args, output: Path, log) -> dict:
    from gsil import paper_data
    from gsil.records import file_sha256, write_records

    gsil_demos, uf_info = paper_data.load_ultrafeedback_demonstrations(
        args.ultrafeedback_source, revision=args.ultrafeedback_revision, limit=args.limit
    )
    preferences, pref_info = paper_data.load_ultrafeedback_preferences(
        args.ultrafeedback_source, revision=args.ultrafeedback_revision, limit=args.limit
    )
    spin_demos, spin_info = paper_data.load_spin_demonstrations(
        args.spin_source, revision=args.spin_revision, limit=args.limit
    )
    outputs = {
        "selfplay": ("selfplay.jsonl", "demonstration", gsil_demos),
        "spin_selfplay": ("spin_selfplay.jsonl", "demonstration", spin_demos),
        "preferences": ("preferences.jsonl", "preference", preferences),
    }
    counts, files, hashes = {}, {}, {}
    for name, (relative, kind, rows) in outputs.items():
        counts[name] = write_records(output / relative, rows, kind)
        files[name] = relative
        hashes[relative] = file_sha256(output / relative)
    return {
        "profile": "paper",
        "files": files,
        "counts": counts,
        "sha256": hashes,
        "sources": {"selfplay": uf_info, "preferences": pref_info, "spin_selfplay": spin_info},
    }
