"""The parameter count of a GGUF file, read from its header alone.

`gguf.GGUFReader` maps every metadata array (the 49k-token vocabulary, the merges) into numpy views, about 4.5 s for
SmolLM2-135M; the preflight's disk estimate needs only the tensor shapes, so it walks the header (format: the GGUF
specification in ggml's docs/gguf.md, versions 2 and 3: little-endian, 64-bit counts) and skips the values.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

MAGIC = b"GGUF"
# Byte sizes of the fixed-size metadata value types, by type id; 8 is a string, 9 an array.
_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


class GGUFHeaderError(ValueError):
    pass


def _read(handle: BinaryIO, fmt: str) -> int:
    size = struct.calcsize(fmt)
    raw = handle.read(size)
    if len(raw) != size:
        raise GGUFHeaderError(f"{handle.name}: the header ends early (at byte {handle.tell()})")
    return struct.unpack(fmt, raw)[0]


def _skip_string(handle: BinaryIO) -> None:
    handle.seek(_read(handle, "<Q"), 1)


def _skip_value(handle: BinaryIO, value_type: int) -> None:
    if value_type in _SCALAR_BYTES:
        handle.seek(_SCALAR_BYTES[value_type], 1)
    elif value_type == _STRING:
        _skip_string(handle)
    elif value_type == _ARRAY:
        element_type, count = _read(handle, "<I"), _read(handle, "<Q")
        if element_type in _SCALAR_BYTES:
            handle.seek(_SCALAR_BYTES[element_type] * count, 1)
        else:
            for _ in range(count):
                _skip_value(handle, element_type)
    else:
        raise GGUFHeaderError(f"{handle.name}: unknown metadata value type {value_type} at byte {handle.tell()}")


def parameter_count(path: Path) -> int:
    """The number of weights of every tensor the file stores (a tied output layer is stored, and counted, once)."""
    with open(path, "rb") as handle:
        if handle.read(4) != MAGIC:
            raise GGUFHeaderError(f"{path}: not a GGUF file (no {MAGIC!r} magic)")
        version = _read(handle, "<I")
        if version not in (2, 3):
            raise GGUFHeaderError(f"{path}: GGUF version {version}; versions 2 and 3 are read")
        tensors, metadata = _read(handle, "<Q"), _read(handle, "<Q")
        for _ in range(metadata):
            _skip_string(handle)
            _skip_value(handle, _read(handle, "<I"))
        total = 0
        for _ in range(tensors):
            _skip_string(handle)
            elements = 1
            for _ in range(_read(handle, "<I")):
                elements *= _read(handle, "<Q")
            handle.seek(4 + 8, 1)  # the tensor's type and data offset
            total += elements
        return total
