"""`gsil with-gpus`: the device list from each source, the choice of free devices, waiting, and real jobs sharing
a (pretend) two-GPU node through the lock files: distinct devices, a third job waiting, a killed job's devices freed.
No GPU is needed: the command only sets CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from gsil import gpu_slots
from gsil.logutil import GsilError

# ------------------------------------------------------------------------------------------------ device list


@pytest.mark.parametrize("text, devices", [
    ("0,1,2", ["0", "1", "2"]),
    (" 3, 5 ", ["3", "5"]),
    ("0\n1\n", ["0", "1"]),  # nvidia-smi --query-gpu=index --format=csv,noheader
    ("GPU-8f1c,GPU-77aa", ["GPU-8f1c", "GPU-77aa"]),
    ("", []),
    ("NoDevFiles", []),  # SLURM's value for a job without GPUs
])
def test_parse_devices(text, devices):
    assert gpu_slots.parse_devices(text) == devices


def test_parse_devices_refuses_a_device_named_twice():
    with pytest.raises(GsilError, match="more than once"):
        gpu_slots.parse_devices("0,1,0")


def no_query():
    raise AssertionError("nvidia-smi must not be asked when the list is given")


def test_devices_flag_comes_first():
    assert gpu_slots.device_list("2,3", {"CUDA_VISIBLE_DEVICES": "0"}, no_query) == (["2", "3"], "--devices")


def test_cuda_visible_devices_already_set_is_the_list_to_choose_from():
    # A SLURM allocation (or a user) restricted the job to these devices: choose among them only.
    assert gpu_slots.device_list(None, {"CUDA_VISIBLE_DEVICES": "4,6"}, no_query) == (["4", "6"],
                                                                                    "CUDA_VISIBLE_DEVICES")


def test_nvidia_smi_is_the_last_source():
    assert gpu_slots.device_list(None, {}, lambda: ["0", "1"]) == (["0", "1"], "nvidia-smi")


def test_no_source_is_a_clear_error():
    with pytest.raises(GsilError, match="--devices"):
        gpu_slots.device_list(None, {}, lambda: None)


def test_nvidia_smi_output_is_parsed(monkeypatch):
    monkeypatch.setattr(gpu_slots.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    asked = []

    def run(command, **kwargs):
        asked.append(command)
        return SimpleNamespace(returncode=0, stdout="0\n1\n2\n3\n", stderr="")

    assert gpu_slots.nvidia_smi_devices(run) == ["0", "1", "2", "3"]
    assert asked == [["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"]]


def test_nvidia_smi_missing_or_failing(monkeypatch):
    monkeypatch.setattr(gpu_slots.shutil, "which", lambda name: None)
    assert gpu_slots.nvidia_smi_devices(no_query) is None
    monkeypatch.setattr(gpu_slots.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    failed = SimpleNamespace(returncode=9, stdout="", stderr="NVIDIA-SMI has failed: driver not loaded")
    with pytest.raises(GsilError, match="driver not loaded"):
        gpu_slots.nvidia_smi_devices(lambda command, **kwargs: failed)


@pytest.mark.parametrize("count, devices, message", [
    (3, ["0", "1"], "needs 3 GPU"),
    (1, [], "needs 1 GPU"),
    (0, ["0"], "must be >= 1"),
])
def test_impossible_counts_fail_at_once(count, devices, message):
    with pytest.raises(GsilError, match=message):
        gpu_slots.check_count(count, devices, "--devices")


def test_lock_dir_sources(tmp_path):
    assert gpu_slots.lock_dir(str(tmp_path), {"GSIL_GPU_LOCK_DIR": "/elsewhere"}) == tmp_path
    assert gpu_slots.lock_dir(None, {"GSIL_GPU_LOCK_DIR": str(tmp_path)}) == tmp_path
    default = gpu_slots.lock_dir(None, {})
    assert default.name == f"gsil-gpu-locks-{os.getuid()}"
    # SLURM renumbers each job's devices from 0: jobs must not share locks.
    assert gpu_slots.lock_dir(str(tmp_path), {"SLURM_JOB_ID": "4242"}) == tmp_path / "slurm-4242"


# ------------------------------------------------------------------------------------------------ choice


def test_take_lowest_takes_the_lowest_free_devices_in_order():
    busy = {"0", "2"}
    asked = []

    def take(device):
        asked.append(device)
        return None if device in busy else int(device) + 100

    held, found_busy = gpu_slots.take_lowest(["0", "1", "2", "3", "4", "5"], 2, take, no_query)
    assert held == {"1": 101, "3": 103}
    assert found_busy == ["0", "2"]
    assert asked == ["0", "1", "2", "3"]  # stops once it has enough


def test_take_lowest_is_all_or_nothing():
    given_back = []
    held, busy = gpu_slots.take_lowest(["0", "1", "2"], 2, lambda d: None if d != "1" else 7, given_back.append)
    assert (held, busy) == ({}, ["0", "2"])
    assert given_back == [7]  # a job short of GPUs does not sit on the ones it found


def test_acquire_locks_files_that_other_openers_then_see_busy(tmp_path):
    held, busy = gpu_slots.acquire(["0", "1", "2"], 2, tmp_path)
    assert list(held) == ["0", "1"] and busy == []
    assert gpu_slots.holder(gpu_slots.lock_path(tmp_path, "0")) == str(os.getpid())
    # flock conflicts between open file descriptions, even in one process: a second job sees 0 and 1 busy.
    again, busy = gpu_slots.acquire(["0", "1", "2"], 1, tmp_path)
    assert list(again) == ["2"] and busy == ["0", "1"]
    assert gpu_slots.acquire(["0", "1", "2"], 1, tmp_path) == ({}, ["0", "1", "2"])
    for fd in [*held.values(), *again.values()]:
        os.close(fd)
    third, _ = gpu_slots.acquire(["0", "1", "2"], 3, tmp_path)
    assert list(third) == ["0", "1", "2"]
    for fd in third.values():
        os.close(fd)


def test_lock_file_names_are_safe_for_uuids(tmp_path):
    assert gpu_slots.lock_path(tmp_path, "MIG-GPU-1/2/0").name == "gpu-MIG-GPU-1_2_0.lock"


# ------------------------------------------------------------------------------------------------ waiting


def test_waits_until_a_device_is_released_and_says_so_once(tmp_path):
    other, _ = gpu_slots.acquire(["0", "1"], 2, tmp_path)
    said, sleeps = [], []

    def sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) == 3:
            os.close(other.pop("1"))  # the other job ends

    held = gpu_slots.wait_for_devices(["0", "1"], 1, tmp_path, log=said.append, sleep=sleep)
    assert list(held) == ["1"] and len(sleeps) == 3
    assert len(said) == 1 and "held by other jobs: 0 (pid" in said[0] and "1 (pid" in said[0]
    for fd in [*held.values(), *other.values()]:
        os.close(fd)


def test_gives_up_after_wait_s(tmp_path):
    other, _ = gpu_slots.acquire(["0"], 1, tmp_path)
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds

    with pytest.raises(GsilError, match="gave up after 2 s"):
        gpu_slots.wait_for_devices(["0"], 1, tmp_path, wait_s=2, log=lambda m: None, sleep=sleep,
                                   clock=lambda: now[0])
    assert now[0] == pytest.approx(2.0)
    os.close(other["0"])


# ------------------------------------------------------------------------------------------------ real jobs

# The job: says which devices it got, then runs until its release file appears (or for at most a minute).
JOB = ("import os, pathlib, sys, time; devices = os.environ['CUDA_VISIBLE_DEVICES']; print(devices, flush=True); "
       "release = pathlib.Path(sys.argv[1]) / ('release-' + devices); deadline = time.time() + 60\n"
       "while not release.exists() and time.time() < deadline: time.sleep(0.05)")


def start_job(tmp_path: Path, name: str, *flags: str) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / f"{name}.out"
    command = [sys.executable, "-m", "gsil", "with-gpus", "--count", "1", "--devices", "0,1",
               "--lock-dir", str(tmp_path / "locks"), *flags, "--", sys.executable, "-c", JOB, str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    with open(out, "w") as stdout, open(tmp_path / f"{name}.err", "w") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env)
    return process, out


def device_of(out: Path, timeout: float = 30.0) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = out.read_text().strip()
        if text:
            return text
        time.sleep(0.05)
    raise AssertionError(f"{out.name}: no device after {timeout} s")


def wait_for_text(path: Path, text: str, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while text not in path.read_text():
        assert time.time() < deadline, f"{path.name}: no {text!r} after {timeout} s:\n{path.read_text()}"
        time.sleep(0.05)


@pytest.fixture
def jobs():
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_three_jobs_on_two_gpus_get_their_own_and_the_third_waits(tmp_path, jobs):
    first, first_out = start_job(tmp_path, "first")
    jobs.append(first)
    second, second_out = start_job(tmp_path, "second")
    jobs.append(second)
    devices = {device_of(first_out), device_of(second_out)}
    assert devices == {"0", "1"}
    wait_for_text(tmp_path / "first.err", f"holding GPU(s) {first_out.read_text().strip()}: 1 of the 2 listed by "
                                          f"--devices (0,1) for: ")

    third, third_out = start_job(tmp_path, "third")
    jobs.append(third)
    wait_for_text(tmp_path / "third.err", "waiting for 1 of GPUs 0,1")
    time.sleep(1.0)
    assert third_out.read_text() == "" and third.poll() is None

    (tmp_path / f"release-{first_out.read_text().strip()}").touch()  # the first job ends
    assert first.wait(timeout=30) == 0
    assert device_of(third_out) == first_out.read_text().strip()
    for name in ("0", "1"):
        (tmp_path / f"release-{name}").touch()
    assert second.wait(timeout=30) == 0 and third.wait(timeout=30) == 0


def test_a_killed_job_frees_its_gpu(tmp_path, jobs):
    holder, holder_out = start_job(tmp_path, "holder", "--devices", "1")
    jobs.append(holder)
    assert device_of(holder_out) == "1"
    # The command replaced `gsil with-gpus` (same pid) and holds the lock itself.
    assert gpu_slots.holder(gpu_slots.lock_path(tmp_path / "locks", "1")) == str(holder.pid)

    waiter, waiter_out = start_job(tmp_path, "waiter", "--devices", "1")
    jobs.append(waiter)
    wait_for_text(tmp_path / "waiter.err", f"1 (pid {holder.pid})")
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert device_of(waiter_out) == "1"
    (tmp_path / "release-1").touch()
    assert waiter.wait(timeout=30) == 0


def test_wait_s_gives_up_with_a_clear_error(tmp_path, jobs):
    holder, holder_out = start_job(tmp_path, "holder", "--devices", "0")
    jobs.append(holder)
    assert device_of(holder_out) == "0"
    waiter, _ = start_job(tmp_path, "waiter", "--devices", "0", "--wait-s", "0.5")
    jobs.append(waiter)
    assert waiter.wait(timeout=30) == 1
    err = (tmp_path / "waiter.err").read_text()
    assert "gave up after 0.5 s" in err and f"0 (pid {holder.pid})" in err and "Traceback" not in err


def test_more_gpus_than_the_node_has_fails_at_once(tmp_path):
    done = subprocess.run([sys.executable, "-m", "gsil", "with-gpus", "--count", "3", "--devices", "0,1",
                           "--lock-dir", str(tmp_path), "--", "true"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "needs 3 GPU(s) but only 2 exist (--devices: 0,1)" in done.stderr
