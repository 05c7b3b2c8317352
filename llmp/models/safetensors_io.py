"""Read safetensors files one tensor at a time, without torch.

A safetensors file is an 8-byte little-endian header length, a JSON header
(`{name: {dtype, shape, data_offsets}}`) and the raw data. Tensors are memory-mapped, so a
converter holds one tensor (plus its converted copy) at a time whatever the model's size.
bfloat16 has no numpy dtype: its bits are widened to float32 (exact).
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmp.errors import ModelError

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lies: its file, dtype name (safetensors'), shape and byte range."""
    name: str
    path: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offset in the file
    end: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def raw(self) -> np.ndarray:
        """The tensor as stored (bf16 as uint16 bits), memory-mapped (read-only)."""
        dt = _DTYPES[self.dtype]
        if self.end == self.start:
            return np.zeros(self.shape, dtype=dt)
        mm = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.start,
                       shape=(self.end - self.start,))
        return mm.view(dt).reshape(self.shape)

    def float32(self) -> np.ndarray:
        """The tensor as float32 (a new array)."""
        a = self.raw()
        if self.dtype == "BF16":
            return (a.astype(np.uint32) << 16).view(np.float32)
        return a.astype(np.float32)


def read_header(path: Path) -> dict[str, TensorRef]:
    """The tensors of one safetensors file by name."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as e:
        raise ModelError(f"{path}: not a safetensors file ({e})") from None
    base = 8 + n
    out: dict[str, TensorRef] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = meta.get("dtype")
        if dtype not in _DTYPES:
            raise ModelError(f"{path}: tensor {name} has dtype {dtype}, which llmp cannot read "
                             "(supported: " + ", ".join(_DTYPES) + ")")
        start, end = meta["data_offsets"]
        out[name] = TensorRef(name, path, dtype, tuple(int(d) for d in meta["shape"]),
                              base + int(start), base + int(end))
    return out


def read_folder(folder: Path, pattern: str = "*.safetensors") -> dict[str, TensorRef]:
    """Every tensor of the safetensors files in a folder (sharded models included)."""
    files = sorted(folder.glob(pattern))
    if not files:
        raise ModelError(f"{folder}: no {pattern} files (only safetensors weights are supported; "
                         "PyTorch .bin checkpoints are not)")
    out: dict[str, TensorRef] = {}
    for p in files:
        out.update(read_header(p))
    return out
