"""Whole-or-nothing outputs under faults: a write that fails half way (disk full) or a process killed mid-write
leaves no file or folder a rerun would take as finished, and never destroys the previous whole output.

Three ways to make a write fail half way, from the Python level down to the kernel:

- `disk_full_after(n)`: files opened for writing (builtins.open / io.open, hence Path.write_text, json, and the
  Python-written parts of transformers' save_pretrained) accept n more characters, write them, then raise ENOSPC;
- `half_written_safetensors`: transformers' safetensors writer writes half of the weights file, then ENOSPC;
- `file_size_limit(n)`: RLIMIT_FSIZE, so the kernel refuses every byte past offset n of any file (EFBIG), whatever
  wrote it (the Rust safetensors and tokenizers writers included) - a real short write, then an error.

Checked for result JSONs (write_json, `gsil evaluate`), JSON Lines (write_jsonl, write_records, append_jsonl),
model folders (build_random_model, training.loop.save_final_model) and atomic_path itself, fault by fault.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gsil import io as gio
from gsil.io import append_jsonl, atomic_path, iter_jsonl, read_json, write_json, write_jsonl
from gsil.records import read_records, write_records
from helpers import TINY_MODEL

WORKFLOW = Path(__file__).resolve().parents[1] / "workflow"


# ------------------------------------------------------------------------------------------------ fault injectors


def enospc(path=None) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", None if path is None else str(path))


def raise_(exc: BaseException):
    raise exc


class _FillingFile:
    """A writable file that takes `budget[0]` more characters (or bytes), then writes part and raises ENOSPC."""

    def __init__(self, handle, budget: list[int]):
        self._handle, self._budget = handle, budget

    def write(self, data):
        room = self._budget[0]
        if len(data) <= room:
            self._budget[0] -= len(data)
            return self._handle.write(data)
        self._handle.write(data[:room])
        self._handle.flush()              # the partial data really reaches the file
        self._budget[0] = 0
        raise enospc(getattr(self._handle, "name", None))

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __iter__(self):
        return iter(self._handle)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


def _inside(file, root: Path) -> bool:
    if isinstance(file, int):
        return False
    try:
        return Path(os.fsdecode(file)).resolve().is_relative_to(root.resolve())
    except (TypeError, ValueError, OSError):
        return False


@pytest.fixture
def disk_full_after(monkeypatch, tmp_path):
    """`disk_full_after(n)`: from now on, files opened for writing under tmp_path take n more characters in all."""
    real_open = builtins.open

    def arm(budget: int):
        remaining = [budget]

        def filling_open(file, mode="r", *args, **kwargs):
            handle = real_open(file, mode, *args, **kwargs)
            if any(flag in mode for flag in "wax+") and _inside(file, tmp_path):
                return _FillingFile(handle, remaining)
            return handle

        monkeypatch.setattr(builtins, "open", filling_open)
        monkeypatch.setattr(io, "open", filling_open)     # pathlib.Path.open / write_text call io.open
        return remaining

    return arm                                            # monkeypatch puts open() back after the test


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """The kernel refuses writes past byte `nbytes` of any file (EFBIG; SIGXFSZ ignored) inside the block."""
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if hard != resource.RLIM_INFINITY and hard < nbytes:
        pytest.skip("the hard file-size limit is below the test's limit")
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def tree(path: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `path` (or of the file itself)."""
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def leftovers(target: Path) -> list[str]:
    """Siblings of `target` that an atomic write of it may have made (its temporaries)."""
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))


def assert_no_leftovers(target: Path) -> None:
    assert leftovers(target) == [], f"temporary siblings left next to {target.name}"


def assert_leftovers_are_hidden_temporaries(target: Path) -> None:
    for name in leftovers(target):
        assert name.startswith(".") and name.endswith(".tmp"), name
    visible = [p.name for p in target.parent.iterdir() if not p.name.startswith(".") and p != target]
    assert not [n for n in visible if n.startswith(target.name)], visible


# ------------------------------------------------------------------------------------------------ result JSONs


RESULT = {"benchmark": "arith", "value": 0.5, "details": {"rows": list(range(400))}}


@pytest.mark.parametrize("old", [False, True], ids=["fresh", "over-an-old-result"])
def test_write_json_disk_full_half_way(tmp_path, disk_full_after, old):
    target = tmp_path / "eval" / "arith.json"
    if old:
        write_json(target, {"old": True})
        before = target.read_bytes()
    size = len(json.dumps(RESULT, indent=2, sort_keys=True)) + 1
    disk_full_after(size // 2)
    with pytest.raises(OSError) as err:
        write_json(target, RESULT)
    assert err.value.errno == errno.ENOSPC
    if old:
        assert target.read_bytes() == before and read_json(target) == {"old": True}
    else:
        assert not target.exists()
    assert_no_leftovers(target)


def test_gsil_evaluate_result_json_disk_full(tmp_path, disk_full_after):
    """A skipped judged benchmark needs no model load: the result JSON is the only write, and it fails."""
    from gsil.evaluation import evaluate_model

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    output = tmp_path / "eval" / "mtbench.json"
    first = evaluate_model(model, "mtbench", output)
    before = output.read_bytes()
    disk_full_after(len(before) // 2)
    with pytest.raises(OSError, match="No space left"):
        evaluate_model(model, "mtbench", output)
    assert output.read_bytes() == before and read_json(output)["skipped"] == first["skipped"]
    assert_no_leftovers(output)
    assert sorted(p.name for p in output.parent.iterdir()) == ["mtbench.json"]   # no work folders either


def test_a_failed_flush_to_disk_is_a_failed_write(tmp_path, monkeypatch):
    """Where the full disk only shows at fsync (delayed allocation, network filesystems), nothing is renamed in."""
    target = tmp_path / "r.json"
    write_json(target, {"old": True})

    def failing_fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(gio.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        write_json(target, RESULT)
    with pytest.raises(OSError, match="Input/output error"):
        write_jsonl(tmp_path / "rows.jsonl", [{"id": "1"}])
    monkeypatch.undo()
    assert read_json(target) == {"old": True} and not (tmp_path / "rows.jsonl").exists()
    assert_no_leftovers(target)
    assert_no_leftovers(tmp_path / "rows.jsonl")


# ------------------------------------------------------------------------------------------------ JSON Lines


def demonstrations(n: int) -> list[dict]:
    return [{"id": f"d{i}", "prompt": f"What is {i} + {i}?", "response": f"{2 * i} #### {2 * i}"} for i in range(n)]


@pytest.mark.parametrize("writer", ["write_jsonl", "write_records"])
@pytest.mark.parametrize("old", [False, True], ids=["fresh", "over-an-old-file"])
def test_json_lines_disk_full_half_way(tmp_path, disk_full_after, writer, old):
    target = tmp_path / "data" / "sft.jsonl"
    rows = demonstrations(200)
    if old:
        write_records(target, demonstrations(3), "demonstration")
        before = target.read_bytes()
    total = sum(len(json.dumps(r, ensure_ascii=False)) + 1 for r in rows)
    disk_full_after(total // 2)
    with pytest.raises(OSError) as err:
        if writer == "write_jsonl":
            write_jsonl(target, rows)
        else:
            write_records(target, rows, "demonstration")
    assert err.value.errno == errno.ENOSPC
    if old:
        assert target.read_bytes() == before and len(read_records(target, "demonstration")) == 3
    else:
        assert not target.exists()
    assert_no_leftovers(target)


def test_json_lines_kernel_short_write(tmp_path):
    """The kernel takes the first 1000 bytes, then refuses (EFBIG): a real short write, then an error."""
    target = tmp_path / "generations.jsonl"
    with file_size_limit(1000):
        with pytest.raises(OSError) as err:
            write_jsonl(target, demonstrations(200))
    assert err.value.errno == errno.EFBIG
    assert not target.exists()
    assert_no_leftovers(target)


def test_rows_failing_half_way_write_nothing(tmp_path):
    def rows():
        yield from demonstrations(5)
        raise RuntimeError("generation crashed")

    with pytest.raises(RuntimeError):
        write_jsonl(tmp_path / "g.jsonl", rows())
    assert not (tmp_path / "g.jsonl").exists()
    assert_no_leftovers(tmp_path / "g.jsonl")


# ------------------------------------------------------------------------------------------------ append_jsonl


def _metrics(step: int) -> dict:
    return {"step": step, "loss": 0.5 / step, "note": "x" * 300}


def _read_all(path: Path) -> list[dict]:
    return [row for _, row in iter_jsonl(path)]


def test_append_failing_half_way_leaves_whole_lines(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    for step in (1, 2):
        append_jsonl(path, _metrics(step))
    before = path.read_bytes()
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise enospc(path)

    monkeypatch.setattr(gio.os, "write", half_then_full)
    with pytest.raises(OSError, match="No space left"):
        append_jsonl(path, _metrics(3))
    monkeypatch.undo()
    assert path.read_bytes() == before
    append_jsonl(path, _metrics(3))                 # the next append (space freed) goes on a clean line
    assert [r["step"] for r in _read_all(path)] == [1, 2, 3]


def test_append_short_writes_are_completed(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    real_write = os.write
    monkeypatch.setattr(gio.os, "write", lambda fd, data: real_write(fd, bytes(data[:7])))   # 7 bytes a call
    for step in (1, 2, 3):
        append_jsonl(path, _metrics(step))
    monkeypatch.undo()
    assert [r["step"] for r in _read_all(path)] == [1, 2, 3]


def test_append_kernel_short_write(tmp_path):
    """The kernel accepts part of the line and then refuses: the part is cut back off."""
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, _metrics(1))
    before = path.read_bytes()
    with file_size_limit(len(before) + 100):
        with pytest.raises(OSError) as err:
            append_jsonl(path, _metrics(2))
    assert err.value.errno == errno.EFBIG
    assert path.read_bytes() == before
    append_jsonl(path, _metrics(2))
    assert [r["step"] for r in _read_all(path)] == [1, 2]


def test_append_after_a_kill_mid_line_drops_the_torn_line(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, _metrics(1))
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"step": 2, "loss": 0.2')        # what a process killed mid-append can leave
    append_jsonl(path, _metrics(2))
    assert [r["step"] for r in _read_all(path)] == [1, 2]
    assert "torn last line" in caplog.text
    only_torn = tmp_path / "cache.jsonl"
    only_torn.write_text('{"key": "a", "ver')
    append_jsonl(only_torn, {"key": "b"})
    assert _read_all(only_torn) == [{"key": "b"}]


def test_append_unserialisable_row_touches_nothing(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, _metrics(1))
    before = path.read_bytes()
    with pytest.raises(TypeError):
        append_jsonl(path, {"step": 2, "bad": object()})
    assert path.read_bytes() == before


# ------------------------------------------------------------------------------------------------ atomic folders


OLD = {"config.json": '{"v": "old"}', "weights.bin": "o" * 5000, "sub/extra.txt": "old only"}
NEW = {"config.json": '{"v": "new"}', "weights.bin": "n" * 7000}


def _fill(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def _contents(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(params=["exchange", "two-renames"])
def swap_mode(request, monkeypatch):
    """Run with the atomic swap (renameat2) where the system has it, and with the two-rename fallback."""
    if request.param == "exchange":
        if gio._renameat2() is None:
            pytest.skip("no renameat2 here")
    else:
        monkeypatch.setattr(gio, "_exchange", lambda a, b: False)
    return request.param


def _fail_once(monkeypatch, name, when):
    """Make gio.os.<name> raise ENOSPC on the call for which `when(args)` is true (once)."""
    real = getattr(os, name)
    state = {"fired": False}

    def wrapper(*args, **kwargs):
        if not state["fired"] and when(*args):
            state["fired"] = True
            raise enospc(args[-1])
        return real(*args, **kwargs)

    monkeypatch.setattr(gio.os, name, wrapper)


# the steps of replacing a folder, in each mode; a fault can hit any of them
FAULTS = {"exchange": ["writing", "syncing", "swap", "deleting-old"],
          "two-renames": ["writing", "syncing", "moving-old-aside", "renaming-new-in", "renaming-new-in-and-restoring",
                          "deleting-old"]}


@pytest.mark.parametrize("swap_mode, fault", [(m, f) for m, faults in FAULTS.items() for f in faults],
                         indirect=["swap_mode"])
def test_folder_replace_fault_at_each_point(tmp_path, monkeypatch, swap_mode, fault):
    target = tmp_path / "model"
    with atomic_path(target, is_dir=True) as tmp:
        _fill(tmp, OLD)
    hidden_ok = False
    if fault == "syncing":
        monkeypatch.setattr(gio.os, "fsync", lambda fd: raise_(enospc()))
    elif fault == "swap":
        monkeypatch.setattr(gio, "_exchange", lambda a, b: raise_(enospc(b)))
    elif fault in ("moving-old-aside", "renaming-new-in", "renaming-new-in-and-restoring"):
        if fault == "moving-old-aside":
            _fail_once(monkeypatch, "rename", lambda src, dst: Path(src) == target)
        else:
            _fail_once(monkeypatch, "replace", lambda src, dst: Path(dst) == target)
            if fault == "renaming-new-in-and-restoring":
                _fail_once(monkeypatch, "rename", lambda src, dst: Path(dst) == target)
                hidden_ok = True
    elif fault == "deleting-old":
        def partial_rmtree(path, *args, **kwargs):
            next(p for p in Path(path).rglob("*") if p.is_file()).unlink()     # gets part of the way
            raise enospc(path)

        monkeypatch.setattr(gio.shutil, "rmtree", partial_rmtree)
        hidden_ok = True

    if fault == "deleting-old":
        with atomic_path(target, is_dir=True) as tmp:       # the new folder is in: no error to report
            _fill(tmp, NEW)
        assert _contents(target) == NEW
    else:
        with pytest.raises(OSError, match="No space left"):
            with atomic_path(target, is_dir=True) as tmp:
                _fill(tmp, NEW)
                if fault == "writing":
                    raise enospc(tmp / "weights.bin")
        monkeypatch.undo()
        if fault == "renaming-new-in-and-restoring":
            # two faults in a row: the target is empty, the old folder whole under a hidden temporary name
            assert not target.exists()
            (aside,) = [tmp_path / n for n in leftovers(target) if n.endswith(".old.tmp")]
            assert _contents(aside) == OLD
        else:
            assert _contents(target) == OLD
    if hidden_ok:
        assert_leftovers_are_hidden_temporaries(target)
    else:
        assert_no_leftovers(target)


def test_folder_over_a_file_and_a_fresh_folder(tmp_path, swap_mode):
    target = tmp_path / "out"
    target.write_text("a file where the folder goes")
    with atomic_path(target, is_dir=True) as tmp:
        _fill(tmp, NEW)
    assert _contents(target) == NEW
    assert_no_leftovers(target)
    assert oct(target.stat().st_mode & 0o777) == oct(0o777 & ~gio._umask())


KILL_CHILD = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, sys.argv[1])
    from pathlib import Path
    from gsil import io

    target, point, mode = Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    if mode == "two-renames":
        io._exchange = lambda a, b: False

    def die_after(module, name):
        real = getattr(module, name)
        def wrapper(*args, **kwargs):
            result = real(*args, **kwargs)
            os._exit(9)
        setattr(module, name, wrapper)

    if point == "after-swap":
        die_after(io, "_exchange")
    elif point == "after-moving-old-aside":
        die_after(io.os, "rename")
    elif point == "after-renaming-new-in":
        die_after(io.os, "replace")
    elif point == "while-deleting-old":
        real_rmtree = io.shutil.rmtree
        def dying_rmtree(path, *args, **kwargs):
            next(p for p in Path(path).rglob("*") if p.is_file()).unlink()
            os._exit(9)
        io.shutil.rmtree = dying_rmtree
    with io.atomic_path(target, is_dir=True) as tmp:
        (tmp / "config.json").write_text('{"v": "new"}')
        (tmp / "weights.bin").write_text("n" * 3500)
        if point == "while-writing":
            os._exit(9)
        (tmp / "weights.bin").write_text("n" * 7000)
    sys.exit(0)
""")


KILL_POINTS = {"exchange": ("while-writing", "after-swap", "while-deleting-old"),
               "two-renames": ("while-writing", "after-moving-old-aside", "after-renaming-new-in",
                               "while-deleting-old")}


@pytest.mark.parametrize("swap_mode, point", [(m, p) for m, points in KILL_POINTS.items() for p in points],
                         indirect=["swap_mode"])
def test_folder_replace_killed_at_each_point(tmp_path, swap_mode, point):
    """A hard kill (no clean-up runs): the target is the old folder or the new one, whole - or, only in the two-rename
    fallback between its renames, absent with the old one kept aside. Never a mix."""
    target = tmp_path / "model"
    with atomic_path(target, is_dir=True) as tmp:
        _fill(tmp, OLD)
    done = subprocess.run([sys.executable, "-c", KILL_CHILD, str(WORKFLOW), str(target), point, swap_mode],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 9, done.stderr
    if point == "while-writing":
        assert _contents(target) == OLD
    elif point == "after-moving-old-aside":
        assert not target.exists()
        (aside,) = [tmp_path / n for n in leftovers(target) if n.endswith(".old.tmp")]
        assert _contents(aside) == OLD
    else:
        assert _contents(target) == NEW
    assert_leftovers_are_hidden_temporaries(target)


# ------------------------------------------------------------------------------------------------ model folders


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    pytest.importorskip("torch")
    from gsil.modeling import load_model, load_tokenizer

    return tiny_model_dir, load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)


MODEL_FAULTS = ["config-json-enospc", "weights-half-written-enospc", "kernel-refuses-past-1MB"]


@pytest.fixture
def model_fault(request, monkeypatch, disk_full_after):
    """(a context in which a model-folder write fails half way, the error expected); `monkeypatch.undo()` disarms."""
    kind = request.param

    @contextlib.contextmanager
    def armed():
        if kind == "config-json-enospc":               # config.json, the first file written, gets 200 characters
            disk_full_after(200)
            yield
        elif kind == "weights-half-written-enospc":
            import transformers.modeling_utils as modeling_utils

            real = modeling_utils.safe_save_file

            def half_written(tensors, filename, *args, **kwargs):
                real(tensors, filename, *args, **kwargs)
                with open(filename, "r+b") as handle:
                    handle.truncate(os.path.getsize(filename) // 2)
                raise enospc(filename)

            monkeypatch.setattr(modeling_utils, "safe_save_file", half_written)
            yield
        else:                                         # the weights (6 MB) cross the limit in the Rust writer
            with file_size_limit(1 << 20):
                yield

    return armed, (Exception if kind == "kernel-refuses-past-1MB" else OSError)


def _attempt(fault, write) -> BaseException:
    armed, expected = fault
    with pytest.raises(expected) as err:
        with armed():
            write()
    return err.value


@pytest.mark.parametrize("model_fault", MODEL_FAULTS, indirect=True)
def test_build_random_model_disk_full(tmp_path, monkeypatch, tiny, model_fault):
    from gsil.modeling import build_random_model

    tokenizer_from = tiny[0]
    target = tmp_path / "models" / "base"
    _attempt(model_fault, lambda: build_random_model(target, seed=1, tokenizer_from=tokenizer_from, **TINY_MODEL))
    monkeypatch.undo()
    assert not target.exists()
    assert_no_leftovers(target)

    build_random_model(target, seed=1, tokenizer_from=tokenizer_from, **TINY_MODEL)     # a whole old model
    before = tree(target)
    assert "model.safetensors" in before and "config.json" in before
    _attempt(model_fault, lambda: build_random_model(target, seed=2, tokenizer_from=tokenizer_from, **TINY_MODEL))
    monkeypatch.undo()
    assert tree(target) == before
    assert_no_leftovers(target)


class FakeAccelerator:
    """The part of accelerate.Accelerator that save_final_model uses, for one process."""

    is_main_process = True
    num_processes = 1

    def wait_for_everyone(self):
        pass

    def unwrap_model(self, model):
        return model

    def get_state_dict(self, model):
        return model.state_dict()


@pytest.mark.parametrize("model_fault", MODEL_FAULTS, indirect=True)
def test_save_final_model_disk_full(tmp_path, monkeypatch, tiny, model_fault):
    from gsil.training.loop import save_final_model

    _, model, tokenizer = tiny
    target = tmp_path / "train" / "gsil"

    def save(tag):
        save_final_model(FakeAccelerator(), model, tokenizer, target, {"run": tag}, {"run": tag}, lora=False)

    _attempt(model_fault, lambda: save("first"))
    monkeypatch.undo()
    assert not target.exists()
    assert_no_leftovers(target)

    save("old")
    before = tree(target)
    assert {"model.safetensors", "config.json", "training_config.json", "run_info.json"} <= set(before)
    _attempt(model_fault, lambda: save("new"))
    monkeypatch.undo()
    assert tree(target) == before and read_json(target / "training_config.json") == {"run": "old"}
    assert_no_leftovers(target)
