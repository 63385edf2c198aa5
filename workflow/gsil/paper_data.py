"""The paper profile's data: the Hub datasets of GSIL, SPIN and DPO, converted into this suite's records.

* GSIL demonstrations: `HuggingFaceH4/ultrafeedback_binarized`, split `train_prefs`; prompt = the `prompt` column,
  demonstration = the assistant turn of `chosen` (`chosen[1]["content"]`), as in the official GSIL code
  (gsil/generate.py @ bf269e0). -> `demonstration` records.
* SPIN demonstrations: `UCLA-AGI/SPIN_iter0`, split `train` (SPIN's 50k UltraChat-200k subset); prompt =
  `real[0]["content"]`, demonstration = `real[1]["content"]`, as in SPIN's spin/generate.py. The dataset's own
  `generated` column (zephyr's iteration-0 answers) is not used: the workflow generates with its own model.
  -> `demonstration` records.
* DPO preferences: `ultrafeedback_binarized` `train_prefs`; chosen / rejected = the assistant turns of `chosen` and
  `rejected`. -> `preference` records.

Revisions. The GSIL and SPIN code load these datasets without a revision. The Hub was not reachable where this
module was written, so no commit sha could be looked up; the defaults below are the branch "main", and every load
resolves the branch to the commit sha it actually read and records it in the data manifest (`resolved_sha`, with
`resolved_by`): from the Hub (`HfApi.dataset_info`) when it answers, else from the datasets cache the rows were
read from (offline, `datasets` reads its processed cache, <org>___<name>/<config>/<version>/<commit sha>/). Pass
`--ultrafeedback-revision SHA` / `--spin-revision SHA` to pin a rerun to that recorded sha.

A `source` that is a local path (.jsonl, .json or .parquet, in the Hub dataset's column shape) is read instead of
the Hub; the tests use that. Structurally malformed rows fail with the file/row and field. Rows whose demonstration
(or chosen/rejected answer) is empty are deliberately skipped, counted, logged and reported in the manifest.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Callable

from gsil.logutil import GsilError

log = logging.getLogger(__name__)

ULTRAFEEDBACK_REPO = "HuggingFaceH4/ultrafeedback_binarized"
ULTRAFEEDBACK_SPLIT = "train_prefs"
ULTRAFEEDBACK_REVISION = "main"  # unpinned by the papers' code; the resolved sha goes into the manifest

SPIN_REPO = "UCLA-AGI/SPIN_iter0"
SPIN_SPLIT = "train"
SPIN_REVISION = "main"  # as above

_LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_SHA = re.compile(r"^[0-9a-f]{40}$")


class PaperDataError(GsilError):
    pass


def _is_local(source: str) -> bool:
    return Path(source).suffix in _LOCAL_BUILDERS or Path(source).exists()


def _resolve_hub_sha(repo: str, revision: str) -> str | None:
    """The commit sha that `revision` names on the Hub, or None if the Hub cannot say (offline)."""
    if _SHA.match(revision):
        return revision
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(repo, revision=revision).sha
    except Exception as err:  # offline, gated, renamed: the data may still load from the cache
        log.warning("could not ask the Hub which commit %s@%s is: %s", repo, revision, err)
        return None


def _cached_sha(dataset) -> str | None:
    """The commit sha of the datasets-cache folder the rows were read from, if its name is one.

    `datasets` prepares a Hub dataset into <cache>/<org>___<name>/<config>/<version>/<commit sha>/ and, offline,
    reads the newest such folder whatever `revision` says; so this is the commit the rows really came from.
    """
    for entry in getattr(dataset, "cache_files", None) or []:
        folder = Path(entry.get("filename", "")).parent.name
        if _SHA.match(folder):
            return folder
    return None


def _resolve_sha(repo: str, revision: str, dataset) -> tuple[str | None, str | None]:
    """(commit sha, how it was found) of the rows read for `repo`@`revision`."""
    if _SHA.match(revision):
        cached = _cached_sha(dataset)
        if cached is not None and cached != revision:
            log.warning("%s: pinned to %s, but the rows came from the cached commit %s", repo, revision, cached)
        return revision, "pinned"
    sha = _resolve_hub_sha(repo, revision)
    if sha is not None:
        return sha, "hub"
    sha = _cached_sha(dataset)
    if sha is not None:
        log.info("%s@%s: read from the datasets cache of commit %s", repo, revision, sha)
        return sha, "datasets cache"
    log.warning("could not resolve %s@%s to a commit sha", repo, revision)
    return None, None


def load_source_rows(source: str, *, revision: str, split: str, limit: int | None = None):
    """Rows of a Hub dataset split (at `revision`) or of a local file in the same shape; and where they came from."""
    import datasets

    if _is_local(source):
        path = Path(source)
        if not path.is_file():
            raise PaperDataError(f"local data file {path} does not exist")
        builder = _LOCAL_BUILDERS.get(path.suffix)
        if builder is None:
            raise PaperDataError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl, .json or .parquet")
        from gsil.records import file_sha256

        dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
        info: dict[str, Any] = {"source": "local", "path": str(path), "sha256": file_sha256(path)}
        where = str(path)
    else:
        if not _SHA.match(revision):
            log.warning("%s is loaded at %r, a branch, not a commit sha: the resolved sha is recorded", source, revision)
        try:
            dataset = datasets.load_dataset(source, split=split, revision=revision)
        except Exception as err:
            raise PaperDataError(
                f"could not load {source}@{revision} split {split!r} from the Hugging Face Hub: {err}. The paper "
                "profile needs the Hub (or a local copy passed as a .jsonl/.json/.parquet path)."
            ) from err
        resolved_sha, resolved_by = _resolve_sha(source, revision, dataset)
        info = {
            "source": "hub", "repo": source, "split": split, "revision": revision,
            "resolved_sha": resolved_sha, "resolved_by": resolved_by, "fingerprint": dataset._fingerprint,
        }
        where = f"{source}@{revision}:{split}"
    rows_total = len(dataset)
    if limit is not None:
        dataset = dataset.select(range(min(limit, rows_total)))
    info.update({"rows_in_source": rows_total, "rows_read": len(dataset), "limit": limit})
    return dataset, info, where


def _turn(messages: Any, index: int, role: str, field: str, where: str) -> str:
    if not isinstance(messages, list):
        raise PaperDataError(f"{where}: field '{field}': expected a list of chat messages, got {type(messages).__name__}")
    if len(messages) <= index:
        raise PaperDataError(f"{where}: field '{field}': needs at least {index + 1} messages, has {len(messages)}")
    message = messages[index]
    if not isinstance(message, dict) or message.get("role") != role or not isinstance(message.get("content"), str):
        raise PaperDataError(
            f"{where}: field '{field}': message {index} should be a {role!r} turn with string content, got {message!r:.120}"
        )
    return message["content"]


def _prompt(row: dict, where: str) -> str:
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise PaperDataError(f"{where}: field 'prompt': expected a non-empty string, got {prompt!r:.80}")
    return prompt


def ultrafeedback_demonstration(row: dict, index: int, where: str) -> dict | None:
    response = _turn(row.get("chosen"), 1, "assistant", "chosen", where)
    if not response.strip():
        return None
    return {"id": f"uf-{index:06d}", "prompt": _prompt(row, where), "response": response,
            "prompt_id": row.get("prompt_id")}


def ultrafeedback_preference(row: dict, index: int, where: str) -> dict | None:
    chosen = _turn(row.get("chosen"), 1, "assistant", "chosen", where)
    rejected = _turn(row.get("rejected"), 1, "assistant", "rejected", where)
    if not chosen.strip() or not rejected.strip():
        return None
    return {"id": f"uf-{index:06d}", "prompt": _prompt(row, where), "chosen": chosen, "rejected": rejected,
            "prompt_id": row.get("prompt_id"), "score_chosen": row.get("score_chosen"),
            "score_rejected": row.get("score_rejected")}


def spin_demonstration(row: dict, index: int, where: str) -> dict | None:
    prompt = _turn(row.get("real"), 0, "user", "real", where)
    if not prompt.strip():
        raise PaperDataError(f"{where}: field 'real': the user turn is empty")
    response = _turn(row.get("real"), 1, "assistant", "real", where)
    if not response.strip():
        return None
    return {"id": f"spin-{index:06d}", "prompt": prompt, "response": response}


def _convert(source: str, *, revision: str, split: str, limit: int | None,
             convert: Callable[[dict, int, str], dict | None], what: str) -> tuple[list[dict], dict]:
    from tqdm.auto import tqdm

    dataset, info, where = load_source_rows(source, revision=revision, split=split, limit=limit)
    records, skipped = [], 0
    for index, row in enumerate(tqdm(dataset, desc=what, total=len(dataset), mininterval=5)):
        record = convert(row, index, f"{where} row {index}")
        if record is None:
            skipped += 1
        else:
            records.append(record)
    if skipped:
        log.warning("%s: skipped %d of %d rows with an empty response", what, skipped, len(dataset))
    info.update({"records": len(records), "skipped_empty_response": skipped})
    return records, info


def load_ultrafeedback_demonstrations(source: str = ULTRAFEEDBACK_REPO, *, revision: str = ULTRAFEEDBACK_REVISION,
                                      split: str = ULTRAFEEDBACK_SPLIT, limit: int | None = None):
    """GSIL's demonstrations as `demonstration` records, and the source record for the manifest."""
    return _convert(source, revision=revision, split=split, limit=limit, convert=ultrafeedback_demonstration,
                    what="UltraFeedback demonstrations")


def load_ultrafeedback_preferences(source: str = ULTRAFEEDBACK_REPO, *, revision: str = ULTRAFEEDBACK_REVISION,
                                   split: str = ULTRAFEEDBACK_SPLIT, limit: int | None = None):
    """DPO's preference pairs as `preference` records, and the source record for the manifest."""
    return _convert(source, revision=revision, split=split, limit=limit, convert=ultrafeedback_preference,
                    what="UltraFeedback preferences")


def load_spin_demonstrations(source: str = SPIN_REPO, *, revision: str = SPIN_REVISION, split: str = SPIN_SPLIT,
                             limit: int | None = None):
    """SPIN's iteration-0 demonstrations as `demonstration` records, and the source record for the manifest."""
    return _convert(source, revision=revision, split=split, limit=limit, convert=spin_demonstration,
                    what="SPIN_iter0 demonstrations")
