"""`gsil with-gpus --count N -- <command ...>`: run a command on N GPUs that no other job on this node holds.

Snakemake's local executor hands out a `gpu` count but sets no CUDA_VISIBLE_DEVICES, so jobs started together
would all land on GPU 0 (and vLLM's memory reservation makes the second one fail). This picks the lowest N free
devices (waiting while other jobs hold them), locks them (gsil.gpu_slots), sets CUDA_VISIBLE_DEVICES and replaces
itself with the command: same pid, and the locks are released when the command's process ends, however it ends.
"""

from __future__ import annotations

import argparse
import os

from gsil.logutil import GsilError, setup_logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, required=True, help="GPUs the command needs")
    parser.add_argument("--devices", default=None,
                        help="devices to choose from, e.g. 0,1,2,3 (default: the CUDA_VISIBLE_DEVICES already set, "
                             "else every GPU nvidia-smi lists)")
    parser.add_argument("--lock-dir", default=None,
                        help="folder of the per-device lock files shared by the node's jobs (default: "
                             "$GSIL_GPU_LOCK_DIR, else gsil-gpu-locks-<uid> in the temp dir; under SLURM a "
                             "slurm-<job id> folder inside it)")
    parser.add_argument("--wait-s", type=float, default=None,
                        help="give up after waiting this many seconds for free GPUs (default: wait for ever)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command and its arguments")


def run(args: argparse.Namespace) -> int:
    from gsil import gpu_slots

    log = setup_logging("with_gpus")
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise GsilError("no command to run: gsil with-gpus --count N -- <command ...>")
    devices, source = gpu_slots.device_list(args.devices, os.environ)
    gpu_slots.check_count(args.count, devices, source)
    directory = gpu_slots.lock_dir(args.lock_dir, os.environ)
    held = gpu_slots.wait_for_devices(devices, args.count, directory, wait_s=args.wait_s, log=log.info)
    for fd in held.values():
        os.set_inheritable(fd, True)  # the command inherits the locks: they last as long as its process
    if source != "CUDA_VISIBLE_DEVICES":
        # nvidia-smi numbers GPUs by PCI bus; CUDA's default order (fastest first) may differ on mixed nodes.
        os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(held)
    log.info("holding GPU(s) %s: %d of the %d listed by %s (%s) for: %s", ",".join(held), len(held), len(devices),
             source, ",".join(devices), " ".join(command))
    try:
        os.execvp(command[0], command)
    except OSError as err:
        raise GsilError(f"cannot run {command[0]!r}: {err}") from None
    return 0  # not reached: execvp replaces this process
