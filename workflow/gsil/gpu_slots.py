"""Which GPUs of a node a job may use when several jobs share the node without a scheduler (`gsil with-gpus`).

Snakemake's local executor counts a `gpu` resource but does not say which devices are whose, so every job would
start on GPU 0. Each job instead holds an exclusive `flock` on one lock file per device it uses. The lock belongs
to an open file descriptor, so it lives exactly as long as the job's process (the descriptors survive `exec`) and
the kernel drops it when the process ends, killed or not: there is no stale state to clean up.

Device names are kept as strings: CUDA_VISIBLE_DEVICES may hold indices or UUIDs, and a job's subset is written
back in the same spelling.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from gsil.logutil import GsilError

NVIDIA_SMI = ("nvidia-smi", "--query-gpu=index", "--format=csv,noheader")
# What SLURM writes into CUDA_VISIBLE_DEVICES for a job without GPUs.
NO_DEVICES = "NoDevFiles"
POLL_S = 0.5


def parse_devices(text: str) -> list[str]:
    """Device names from a comma- or line-separated list ("0,1", nvidia-smi's one index a line); blanks dropped."""
    devices = [part.strip() for part in re.split(r"[,\n]", text) if part.strip()]
    if devices == [NO_DEVICES]:
        return []
    duplicates = sorted({d for d in devices if devices.count(d) > 1})
    if duplicates:
        raise GsilError(f"device list {text.strip()!r} names {', '.join(duplicates)} more than once")
    return devices


def nvidia_smi_devices(run: Callable = subprocess.run) -> list[str] | None:
    """The node's GPU indices from nvidia-smi (no torch import: a job waits for its slot in well under a second);
    None when nvidia-smi is not installed."""
    if shutil.which(NVIDIA_SMI[0]) is None:
        return None
    try:
        done = run(list(NVIDIA_SMI), capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise GsilError(f"`{' '.join(NVIDIA_SMI)}` failed: {err}") from None
    if done.returncode != 0:
        raise GsilError(f"`{' '.join(NVIDIA_SMI)}` failed ({done.returncode}): {(done.stderr or done.stdout).strip()}")
    return parse_devices(done.stdout)


def device_list(devices: str | None, environ: Mapping[str, str],
                query: Callable[[], list[str] | None] = nvidia_smi_devices) -> tuple[list[str], str]:
    """The devices a job may choose from and where the list came from: --devices, else the CUDA_VISIBLE_DEVICES
    already set (a SLURM allocation sets it: choose among the allocated ones), else nvidia-smi."""
    if devices is not None:
        return parse_devices(devices), "--devices"
    if "CUDA_VISIBLE_DEVICES" in environ:
        return parse_devices(environ["CUDA_VISIBLE_DEVICES"]), "CUDA_VISIBLE_DEVICES"
    found = query()
    if found is None:
        raise GsilError("no GPU list: pass --devices 0,1,..., set CUDA_VISIBLE_DEVICES, or install nvidia-smi")
    return found, "nvidia-smi"


def check_count(count: int, devices: Sequence[str], source: str) -> None:
    """Refuse at once what waiting cannot fix: no GPU asked for, or more than the node has."""
    if count < 1:
        raise GsilError(f"--count={count}: must be >= 1 (a CPU job needs no GPU slot)")
    if count > len(devices):
        listed = ",".join(devices) or "none"
        raise GsilError(f"needs {count} GPU(s) but only {len(devices)} exist ({source}: {listed})")


def lock_dir(flag: str | None, environ: Mapping[str, str]) -> Path:
    """--lock-dir, else $GSIL_GPU_LOCK_DIR, else a per-user folder in the temp dir. Under SLURM (SLURM_JOB_ID set)
    a `slurm-<job id>` folder inside it: SLURM renumbers each job's devices from 0, so "GPU 0" of two jobs on one
    node are different GPUs and must not share a lock."""
    base = flag or environ.get("GSIL_GPU_LOCK_DIR") or Path(tempfile.gettempdir()) / f"gsil-gpu-locks-{os.getuid()}"
    job = environ.get("SLURM_JOB_ID")
    return Path(base) / f"slurm-{job}" if job else Path(base)


def lock_path(directory: Path, device: str) -> Path:
    return directory / f"gpu-{re.sub(r'[^A-Za-z0-9._-]', '_', device)}.lock"


def try_lock(path: Path) -> int | None:
    """An open descriptor holding the exclusive lock of `path` (the holder's pid written in it), or None when
    another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def holder(path: Path) -> str:
    """The pid written by the lock's holder, for the waiting message ('?' when unreadable)."""
    try:
        return path.read_text().strip() or "?"
    except OSError:
        return "?"


def take_lowest(devices: Sequence[str], count: int, take: Callable[[str], int | None],
                give_back: Callable[[int], None]) -> tuple[dict[str, int], list[str]]:
    """Take the first `count` devices, in list order, that `take` can take: the lowest free indices, so the choice
    is deterministic. All or nothing: on a shortfall what was taken is given back, so a job waiting for many GPUs
    never sits on some of them. Returns ({device: handle}, the devices found busy)."""
    held: dict[str, int] = {}
    busy: list[str] = []
    for device in devices:
        handle = take(device)
        if handle is None:
            busy.append(device)
            continue
        held[device] = handle
        if len(held) == count:
            return held, busy
    for handle in held.values():
        give_back(handle)
    return {}, busy


def acquire(devices: Sequence[str], count: int, directory: Path) -> tuple[dict[str, int], list[str]]:
    """One attempt at locking `count` of `devices` in `directory` (see take_lowest)."""
    directory.mkdir(parents=True, exist_ok=True)
    return take_lowest(devices, count, lambda device: try_lock(lock_path(directory, device)), os.close)


def wait_for_devices(devices: Sequence[str], count: int, directory: Path, *, wait_s: float | None = None,
                     poll_s: float = POLL_S, log: Callable[[str], None] = print,
                     sleep: Callable[[float], None] = time.sleep,
                     clock: Callable[[], float] = time.monotonic) -> dict[str, int]:
    """Lock `count` free devices, polling while other jobs hold too many of them; says once that it waits and
    for whom. `wait_s` None waits for ever; past it a GsilError."""
    started = clock()
    said = False
    while True:
        held, busy = acquire(devices, count, directory)
        if held:
            return held
        holders = ", ".join(f"{d} (pid {holder(lock_path(directory, d))})" for d in busy)
        if not said:
            log(f"waiting for {count} of GPUs {','.join(devices)}: held by other jobs: {holders} (locks in "
                f"{directory})")
            said = True
        if wait_s is not None and clock() - started >= wait_s:
            raise GsilError(f"gave up after {wait_s:g} s waiting for {count} free GPU(s) of {','.join(devices)}; "
                            f"held by other jobs: {holders} (locks in {directory})")
        sleep(poll_s)
