"""The contract between `gsil reference-logps` and `gsil align`: a reference file scores exactly the training pairs.

The sidecar `<reference>.meta.json` records the sha256 of the pair file, the tokenization settings and the ids; align
checks all of them before it loads a model, so a stale or foreign reference file fails in seconds, not after hours.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path

from gsil.logutil import GsilError
from gsil.tokenization import IGNORE_INDEX

META_SUFFIX = ".meta.json"


def meta_path_for(reference_path: str | Path) -> Path:
    path = Path(reference_path)
    return path.with_name(path.name[: -len(".jsonl")] + META_SUFFIX if path.name.endswith(".jsonl")
                          else path.name + META_SUFFIX)


def ids_digest(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode("utf-8")).hexdigest()


def check_reference_meta(meta: dict, *, reference_path: str | Path, pairs_path: str | Path, pairs_sha256: str,
                         kind: str, tokenization: dict, ids: Sequence[str]) -> None:
    """Raise GsilError naming the first disagreement between a reference file's metadata and the training set."""
    where = meta_path_for(reference_path)
    if meta.get("pairs_sha256") != pairs_sha256:
        raise GsilError(f"{where}: scored a pair file with sha256 {meta.get('pairs_sha256')}, but {pairs_path} has "
                        f"sha256 {pairs_sha256}; recompute the reference log-probs (gsil reference-logps)")
    if meta.get("kind") != kind:
        raise GsilError(f"{where}: kind {meta.get('kind')!r} differs from --kind {kind!r}")
    recorded = meta.get("tokenization", {})
    for key, value in tokenization.items():
        if recorded.get(key) != value:
            raise GsilError(f"{where}: tokenization setting {key}={recorded.get(key)!r} differs from this run's "
                            f"{key}={value!r}; the reference must score the same tokens")
    if meta.get("ids_sha256") != ids_digest(ids):
        raise GsilError(f"{where}: the ids it scored differ from the ids of {pairs_path}")


def attach_reference(examples: Sequence, rows: Sequence[dict], *, reference_path: str | Path) -> None:
    """Copy each reference row's log-probs onto its example, checking that the token counts agree."""
    by_id = {row["id"]: row for row in rows}
    for ex in examples:
        row = by_id.get(ex.id)
        if row is None:
            raise GsilError(f"{reference_path}: no reference row for pair id {ex.id!r}")
        for side, encoded in (("positive", ex.positive), ("negative", ex.negative)):
            tokens = sum(1 for t in encoded.labels if t != IGNORE_INDEX)
            if int(row[f"{side}_tokens"]) != tokens:
                raise GsilError(f"{reference_path}: pair {ex.id!r} {side} response has {row[f'{side}_tokens']} "
                                f"scored tokens in the reference but {tokens} here; tokenizer or settings differ")
            value = float(row[side])
            if not math.isfinite(value):
                raise GsilError(f"{reference_path}: pair {ex.id!r} has a non-finite {side} log-prob {value}")
        ex.reference_positive = float(row["positive"])
        ex.reference_negative = float(row["negative"])
