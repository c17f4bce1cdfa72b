"""The .edge file: a fixed preamble, a JSON header, then 64-byte aligned tensor data.

Byte layout (all integers little-endian; docs/FORMAT.md describes it in full):

    0   4  magic  b"EDGE"
    4   4  uint32 format version (VERSION)
    8   8  uint64 JSON header length H
   16   4  uint32 CRC-32 of the JSON header bytes
   20   4  reserved, zero
   24   H  JSON header, UTF-8
   ...     zero padding to the next multiple of 64: the data section starts there
           every tensor at header["tensors"][name]["offset"] bytes into the data section,
           a multiple of 64; a quantized tensor's parts follow each other, each 64-aligned

Reading maps the file once (np.memmap, read-only) and hands out zero-copy views.
Writing goes to a temporary file beside the target and renames it at the end, so no
half-written .edge is ever left behind.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
import zlib

import numpy as np

from .errors import EdgeError

MAGIC = b"EDGE"
VERSION = 1
PREAMBLE = struct.Struct("<4sIQII")  # magic, version, header length, header crc32, reserved
ALIGN = 64
MAX_HEADER = 1 << 30

FLOAT_DTYPES = {"f32": np.float32, "f16": np.float16, "i32": np.int32, "i64": np.int64}


def align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def tensor_parts(dtype: str, shape) -> list[tuple[str, np.dtype, tuple, int]]:
    """Parts of one stored tensor: [(part name, numpy dtype, shape, offset within the tensor)].

    Float and integer tensors have a single part named "data"; quantized tensors (q4_0, q4_1,
    q8_0) have the parts of edgert.kernels.formats.part_specs, each 64-byte aligned.
    """
    shape = tuple(int(s) for s in shape)
    if dtype in FLOAT_DTYPES:
        return [("data", np.dtype(FLOAT_DTYPES[dtype]), shape, 0)]
    from .kernels import formats

    if dtype not in formats.FORMATS:
        raise EdgeError(f"unknown tensor dtype {dtype!r}; this edgert reads "
                        f"{', '.join([*FLOAT_DTYPES, *formats.FORMATS])}")
    if len(shape) != 2 or shape[1] % formats.BLOCK:
        raise EdgeError(f"quantized tensor of shape {list(shape)}: needs [rows, cols] with cols a multiple of {formats.BLOCK}")
    parts, off = [], 0
    for name, dt, pshape in formats.part_specs(dtype, *shape):
        parts.append((name, np.dtype(dt), tuple(pshape), off))
        off = align(off + int(np.prod(pshape)) * np.dtype(dt).itemsize)
    return parts


def tensor_nbytes(dtype: str, shape) -> int:
    name, dt, pshape, off = tensor_parts(dtype, shape)[-1]
    return off + int(np.prod(pshape)) * dt.itemsize


class EdgeFile:
    """A read-only, memory-mapped .edge file.

    header: the parsed JSON header (dict). tensor(name) returns a float array, or for a
    quantized tensor a dict of part arrays ({"d", "m", "qs"}), all zero-copy views.
    """

    def __init__(self, path: str):
        self.path = str(path)
        try:
            size = os.path.getsize(self.path)
        except OSError as e:
            raise EdgeError(f"cannot open {self.path}: {e.strerror or e}") from None
        if size < PREAMBLE.size:
            raise EdgeError(f"{self.path} is not an .edge file (only {size} bytes)")
        with open(self.path, "rb") as f:
            magic, version, hlen, crc, _ = PREAMBLE.unpack(f.read(PREAMBLE.size))
            if magic != MAGIC:
                raise EdgeError(f"{self.path} is not an .edge file (bad magic {magic!r}); "
                                "convert a model with `edgert convert`")
            if version != VERSION:
                raise EdgeError(f"{self.path} has .edge format version {version}; this edgert reads version {VERSION}")
            if hlen > min(MAX_HEADER, size - PREAMBLE.size):
                raise EdgeError(f"{self.path} is truncated or corrupt: header length {hlen} exceeds the file")
            raw = f.read(hlen)
        if zlib.crc32(raw) != crc:
            raise EdgeError(f"{self.path} is corrupt: header checksum mismatch")
        try:
            self.header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise EdgeError(f"{self.path} is corrupt: header is not valid JSON ({e})") from None
        if not isinstance(self.header, dict) or not isinstance(self.header.get("tensors"), dict):
            raise EdgeError(f"{self.path} is corrupt: header has no tensor table")
        self.data_start = align(PREAMBLE.size + hlen)
        data_size = self.header.get("data_size")
        if not isinstance(data_size, int) or self.data_start + data_size != size:
            raise EdgeError(f"{self.path} is truncated or corrupt: expected {self.data_start + (data_size or 0)} "
                            f"bytes, file has {size}")
        self._check_tensors(data_size)
        self._map = np.memmap(self.path, dtype=np.uint8, mode="r") if data_size else np.zeros(0, np.uint8)
        self.size = size

    def _check_tensors(self, data_size: int) -> None:
        for name, t in self.header["tensors"].items():
            try:
                off, dtype, shape = t["offset"], t["dtype"], t["shape"]
                ok = (isinstance(off, int) and off >= 0 and off % ALIGN == 0 and isinstance(shape, list)
                      and all(isinstance(s, int) and s >= 0 for s in shape))
            except (KeyError, TypeError):
                ok = False
            if not ok:
                raise EdgeError(f"{self.path} is corrupt: bad entry for tensor {name!r}")
            if off + tensor_nbytes(dtype, shape) > data_size:
                raise EdgeError(f"{self.path} is corrupt: tensor {name!r} lies outside the file")

    def __contains__(self, name: str) -> bool:
        return name in self.header["tensors"]

    def tensor(self, name: str):
        """Zero-copy view(s) of tensor `name`: ndarray, or {part: ndarray} for quantized tensors."""
        try:
            t = self.header["tensors"][name]
        except KeyError:
            raise EdgeError(f"{self.path}: no tensor named {name!r}") from None
        base = self.data_start + t["offset"]
        views = {}
        for part, dt, shape, off in tensor_parts(t["dtype"], t["shape"]):
            n = int(np.prod(shape)) * dt.itemsize
            views[part] = self._map[base + off: base + off + n].view(dt).reshape(shape)
        return views["data"] if t["dtype"] in FLOAT_DTYPES else views

    def dtype(self, name: str) -> str:
        return self.header["tensors"][name]["dtype"]

    def shape(self, name: str) -> list[int]:
        return list(self.header["tensors"][name]["shape"])


def write_edge(path: str, header: dict, tensors: list, force: bool = False, progress=None) -> int:
    """Write an .edge file atomically; returns its size in bytes.

    header: JSON-serialisable dict without "tensors"/"data_size" (filled in here).
    tensors: [(name, dtype, shape, produce)] where produce() returns the tensor's data: an
    ndarray for float dtypes, {part: ndarray} for quantized ones. Producers run one at a time,
    in order, so a large model never has to be in memory whole.
    progress: optional callable(name) called after each tensor is written.
    """
    path = str(path)
    if os.path.exists(path) and not force:
        raise EdgeError(f"{path} exists; pass --force to overwrite it")
    table, off = {}, 0
    for name, dtype, shape, _ in tensors:
        if name in table:
            raise ValueError(f"duplicate tensor {name!r}")
        table[name] = {"dtype": dtype, "shape": [int(s) for s in shape], "offset": off}
        off = align(off + tensor_nbytes(dtype, shape))
    header = dict(header, tensors=table, data_size=off)
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    preamble = PREAMBLE.pack(MAGIC, VERSION, len(raw), zlib.crc32(raw), 0)

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".edge-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(preamble + raw)
            f.write(b"\0" * (align(len(preamble) + len(raw)) - len(preamble) - len(raw)))
            data_start = f.tell()
            for name, dtype, shape, produce in tensors:
                _write_tensor(f, data_start + table[name]["offset"], name, dtype, shape, produce())
                if progress:
                    progress(name)
            f.truncate(data_start + off)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return data_start + off


def _write_tensor(f, start: int, name: str, dtype: str, shape, data) -> None:
    parts = tensor_parts(dtype, shape)
    if dtype in FLOAT_DTYPES:
        data = {"data": data}
    for part, dt, pshape, off in parts:
        arr = np.asarray(data[part])
        if arr.shape != pshape:
            raise ValueError(f"tensor {name!r} part {part}: shape {arr.shape}, expected {pshape}")
        f.seek(start + off)
        f.write(np.ascontiguousarray(arr, dtype=dt).tobytes())
