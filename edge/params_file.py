"""A package's ``params.safetensors``, read straight into runtime tensors.

Each tensor's bytes are read from the file into the memory of the runtime tensor that will hold
it, so loading costs no more memory than the weights themselves: no whole-file numpy copy next to
the device's, and no memory map whose touched pages stay resident while the file is open.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

_DTYPES = {"F32": "float32", "F16": "float16", "U8": "uint8", "I8": "int8", "I32": "int32"}


class ParamsFileError(ValueError):
    """The file is not a safetensors file this runtime can read, or lacks a tensor."""


def _header(f) -> tuple[dict, int]:
    (size,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


def load_params(path: str | Path, names: list[str], rt) -> list:
    """Runtime tensors of ``names``, in order (``rt``: :class:`pdlink.common.tvm_runtime.Runtime`). Raises
    ParamsFileError for a missing name, an unknown dtype, or a tensor whose byte range does not match its shape."""
    with open(path, "rb") as f:
        header, data_start = _header(f)
        missing = [n for n in names if n not in header]
        if missing:
            raise ParamsFileError(f"params file lacks {missing[:3]}")
        return [_read_tensor(f, data_start, header[n], n, rt) for n in names]


def _read_tensor(f, data_start: int, info: dict, name: str, rt):
    dtype = _DTYPES.get(info["dtype"])
    if dtype is None:
        raise ParamsFileError(f"tensor {name} has unsupported dtype {info['dtype']}")
    begin, end = info["data_offsets"]
    shape = tuple(info["shape"])
    tensor = rt.empty(shape, dtype)
    view = np.from_dlpack(tensor).reshape(-1).view(np.uint8)
    if view.size != end - begin:
        raise ParamsFileError(f"tensor {name}: {end - begin} bytes in the file, {view.size} expected")
    f.seek(data_start + begin)
    if f.readinto(memoryview(view)) != view.size:
        raise ParamsFileError(f"tensor {name} is cut short (truncated file)")
    return tensor
