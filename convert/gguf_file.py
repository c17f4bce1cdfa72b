"""Reading GGUF files safely: a bounds-checked pre-scan, then the `gguf` package's reader.

gguf.GGUFReader trusts the length fields in the file, so a hostile or truncated file could
make it loop or allocate without bound. check_gguf() walks the key/value section first and
checks every count and length against the bytes that remain; only then is the reader used.
"""
from __future__ import annotations

import os
import struct

from edgert.errors import EdgeError

# GGUF value types: fixed sizes of the scalar ones; 8 = string, 9 = array
_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


def is_gguf(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def check_gguf(path: str) -> None:
    """Raise EdgeError unless the header and key/value section of `path` are well formed."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24 or head[:4] != b"GGUF":
            raise EdgeError(f"{path} is not a GGUF file")
        version, n_tensors, n_kv = struct.unpack("<IQQ", head[4:])
        if version not in (2, 3):
            raise EdgeError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
        if n_tensors > size // 24 or n_kv > size // 12:
            raise EdgeError(f"{path} is corrupt: {n_tensors} tensors / {n_kv} keys cannot fit in {size} bytes")
        buf = _Cursor(f, size, path)
        buf.pos = 24
        for _ in range(n_kv):
            buf.string()
            buf.value(buf.u32())
        for _ in range(n_tensors):
            buf.string()
            n_dims = buf.u32()
            if n_dims > 8:
                raise EdgeError(f"{path} is corrupt: a tensor with {n_dims} dimensions")
            buf.skip(8 * n_dims + 4 + 8)


class _Cursor:
    def __init__(self, f, size, path):
        self.f, self.size, self.path, self.pos = f, size, path, 0

    def _need(self, n):
        if n < 0 or self.pos + n > self.size:
            raise EdgeError(f"{self.path} is truncated or corrupt: a length field points past the end of the file")

    def read(self, n):
        self._need(n)
        self.f.seek(self.pos)
        self.pos += n
        return self.f.read(n)

    def skip(self, n):
        self._need(n)
        self.pos += n

    def u32(self):
        return struct.unpack("<I", self.read(4))[0]

    def u64(self):
        return struct.unpack("<Q", self.read(8))[0]

    def string(self):
        self.skip(self.u64())

    def value(self, vtype):
        if vtype in _SCALAR:
            self.skip(_SCALAR[vtype])
        elif vtype == _STRING:
            self.string()
        elif vtype == _ARRAY:
            etype, count = self.u32(), self.u64()
            if etype in _SCALAR:
                self.skip(_SCALAR[etype] * count)
            elif etype == _STRING:
                self._need(8 * count)
                for _ in range(count):
                    self.string()
            else:
                raise EdgeError(f"{self.path} is corrupt: array of value type {etype}")
        else:
            raise EdgeError(f"{self.path} is corrupt: unknown value type {vtype}")


def open_gguf(path: str):
    """Return (gguf.GGUFReader, metadata dict {key: python value}) for a checked file."""
    import gguf

    check_gguf(path)
    try:
        reader = gguf.GGUFReader(path)
        meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
        for t in reader.tensors:
            if t.data_offset + t.n_bytes > os.path.getsize(path):
                raise EdgeError(f"{path} is truncated: tensor {t.name} lies past the end of the file")
    except EdgeError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, struct.error, OverflowError, UnicodeDecodeError) as e:
        raise EdgeError(f"{path} is not a readable GGUF file: {e}") from None
    return reader, meta
