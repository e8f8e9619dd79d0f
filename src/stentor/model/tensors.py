"""Read safetensors files as NumPy arrays mapped from disk: no torch, no copy, checked offsets.

The format is an 8-byte little-endian header length, a JSON header (name -> dtype, shape,
data_offsets) and the raw tensor bytes. Mapping instead of reading means a model starts
without copying its weights; bfloat16 tensors come back as their uint16 bit patterns.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from pathlib import Path

import numpy as np

from stentor.errors import StentorError

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
_MAX_HEADER = 100 << 20


def map_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(name -> read-only array mapped from `path`, the dtype names as written) for one safetensors file."""
    path = Path(path)

    def bad(why: str) -> StentorError:
        return StentorError(f"{path} is not a valid safetensors file ({why}); save or download the model again")

    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < 8:
                raise bad("shorter than its 8-byte header length")
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > min(_MAX_HEADER, size - 8):
                raise bad(f"header of {length} bytes")
            try:
                header = json.loads(handle.read(length))
            except ValueError:
                raise bad("header is not JSON") from None
            data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size > 8 + length else b""
    except OSError as exc:
        raise StentorError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not isinstance(header, dict):
        raise bad("header is not an object")
    arrays, kinds = {}, {}
    start = 8 + length
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            kind, shape, (begin, end) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise bad(f"entry {name!r} lacks dtype/shape/data_offsets") from None
        dtype = _DTYPES.get(kind)
        if dtype is None:
            raise bad(f"tensor {name!r} has unsupported dtype {kind}")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if min(shape, default=0) < 0 or not 0 <= begin <= end or start + end > size or end - begin != count * np.dtype(dtype).itemsize:
            raise bad(f"tensor {name!r} has offsets {begin}..{end} that do not fit its shape {shape} or the file")
        arrays[name] = np.frombuffer(data, dtype=dtype, count=count, offset=start + begin).reshape(shape)
        kinds[name] = kind
    return arrays, kinds


def map_model_tensors(model_dir: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every tensor of a model directory: `model.safetensors`, or the shards its index names."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError):
            raise StentorError(f"{index} is not a valid safetensors index; save or download the model again") from None
        if any(Path(f).name != f for f in files):
            raise StentorError(f"{index} names files outside the model directory")
    else:
        files = ["model.safetensors"]
    arrays: dict[str, np.ndarray] = {}
    kinds: dict[str, str] = {}
    for name in files:
        if not (model_dir / name).is_file():
            raise StentorError(f"{model_dir} has no {name}; stentor loads safetensors weights only")
        part, part_kinds = map_safetensors(model_dir / name)
        arrays.update(part)
        kinds.update(part_kinds)
    return arrays, kinds
