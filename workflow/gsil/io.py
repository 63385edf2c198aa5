"""Whole-or-nothing file writes and the run-info record kept beside every model and result.

Every stage writes through these helpers, so an interrupted stage never leaves a half-written output that a
rerun would mistake for a finished one (docs/design.md#resumability):

- `atomic_path` hands out a hidden temporary sibling (`.<name>.<random>.tmp`), flushes it to disk when the block
  ends and only then renames it onto the target. A write that fails half way (disk full, I/O error, an
  exception, Ctrl-C) removes the temporary and leaves the target as it was: absent, or the previous whole output.
  An existing folder is swapped with the new one in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`) and
  deleted afterwards, so at every instant the target is the old folder or the new one, never a mix. Where the
  filesystem cannot swap (NFS, non-Linux), the old folder is renamed aside (`.<name>.<random>.old.tmp`), the new
  one renamed in, and the old one deleted last; a failed rename puts the old one back, and only a hard kill in
  the instant between the two renames leaves the target absent (the old folder kept aside), never half.
- `append_jsonl` appends whole lines: a failed append is cut back off, and a line torn by a kill during an
  earlier append is dropped before the next one, so a growing log always reads as JSON Lines.

A hard kill (SIGKILL, power loss) can leave a hidden `.<name>.*.tmp` sibling behind; no reader or rule ever takes
one for an output, and it may be deleted at any time.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("gsil.io")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; on success sync it and rename it onto `path`, on error remove it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        # mkstemp/mkdtemp create 0600/0700; outputs are shared artifacts, so give them the mode open()/mkdir() would.
        tmp.chmod((0o777 if is_dir else 0o666) & ~_umask())
        yield tmp
        _sync_tree(tmp)                      # a full disk or an I/O error surfaces here, before the rename
        _publish(tmp, target)
    except BaseException:
        _remove(tmp)
        raise
    _sync_dir(target.parent)


def _publish(tmp: Path, target: Path) -> None:
    """Rename `tmp` onto `target`; an existing folder is swapped out atomically (or, where the filesystem cannot
    swap, renamed aside and put back if the new one cannot go in) and deleted once the new one is in."""
    if not tmp.is_dir() or not os.path.lexists(target):
        os.replace(tmp, target)
        return
    if _exchange(tmp, target):           # target is now the new folder, tmp the old one
        try:
            _remove(tmp)
        except OSError as err:
            log.warning("could not delete the replaced %s (%s): %s", target, tmp, err)
        return
    aside = target.with_name(f".{target.name}.{secrets.token_hex(4)}.old.tmp")
    try:
        os.rename(target, aside)
    except FileNotFoundError:            # removed meanwhile (another writer of the same cache): nothing to keep
        aside = None
    try:
        os.replace(tmp, target)
    except BaseException:
        if aside is not None:
            try:
                os.rename(aside, target)     # put the old output back
            except OSError as err:
                log.error("could not restore %s from %s: %s", target, aside, err)
        raise
    if aside is not None:
        try:
            _remove(aside)
        except OSError as err:               # the new output is in place; the old one is only garbage now
            log.warning("could not delete the replaced %s (%s): %s", target, aside, err)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@functools.lru_cache(maxsize=None)
def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):     # a C library without renameat2 (old glibc, musl)
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; False where the system or filesystem cannot."""
    func = _renameat2()
    if func is None:
        return False
    if func(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM, errno.EXDEV):
        return False                     # unsupported here: the caller falls back to two renames
    raise OSError(err, os.strerror(err), str(b))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync(path: str | os.PathLike, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_tree(path: Path) -> None:
    """fsync a written file, or every file of a written folder (errors propagate: the data is not on disk)."""
    if not path.is_dir():
        _fsync(path)
        return
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            if not os.path.islink(full):
                _fsync(full)
        _sync_dir(Path(root))


def _sync_dir(path: Path) -> None:
    """fsync a folder so a rename in it is durable; best effort (not every filesystem allows it)."""
    try:
        _fsync(path, directory=True)
    except OSError:
        pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write rows as JSON lines, whole or not at all; returns the row count."""
    count = 0
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
    return count


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one row as one whole line (for logs such as metrics.jsonl that grow while a run is alive).

    The line is serialised first, then written with unbuffered writes; if the write fails part way (disk full)
    the file is cut back to where it was, so it never ends in half a line. A torn last line left by a process
    killed during an earlier append is dropped (with a warning) before the new row goes in.
    """
    data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        start = _drop_torn_tail(fd, path)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                if written <= 0:             # pragma: no cover - a regular file never accepts 0 bytes silently
                    raise OSError(errno.EIO, "write accepted no bytes", str(path))
                view = view[written:]
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)


def _drop_torn_tail(fd: int, path: str | os.PathLike) -> int:
    """Cut a last line that has no newline (a torn append) off the file open at `fd`; return the file size."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    end, block = size, 1 << 16
    keep = 0
    while end > 0:
        start = max(0, end - block)
        chunk = os.pread(fd, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            keep = start + newline + 1
            break
        end = start
    log.warning("%s: dropping a torn last line (%d bytes) left by an interrupted append", path, size - keep)
    os.ftruncate(fd, keep)
    return keep


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[str, Any]]:
    """Yield (`file:line`, parsed object) for each non-blank line; a bad line raises GsilError naming its place.

    For files whose rows have no record kind (metrics logs, question lists); typed records go through
    `gsil.records.read_records`, which is stricter.
    """
    from gsil.logutil import GsilError

    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as err:
                raise GsilError(f"{where}: not valid JSON ({err})") from None


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
