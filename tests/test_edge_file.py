"""The .edge reader and writer: round trips, and every kind of damage gives a clear EdgeError."""
import os
import struct

import numpy as np
import pytest

from edgert.errors import EdgeError
from edgert.format import ALIGN, EdgeFile, write_edge
from edgert.kernels import formats


def _tensors(rng):
    w = rng.standard_normal((5, 64)).astype(np.float32)
    q = formats.quantize(rng.standard_normal((3, 96)).astype(np.float32), "q4_1")
    return [("norm", "f32", [7], lambda: np.arange(7, dtype=np.float32)),
            ("w16", "f16", [5, 64], lambda: w.astype(np.float16)),
            ("wq", "q4_1", [3, 96], lambda: q)], w, q


@pytest.fixture
def edge_path(tmp_path):
    tensors, w, q = _tensors(np.random.default_rng(0))
    path = tmp_path / "m.edge"
    write_edge(path, {"kind": "test", "note": "héllo"}, tensors)
    return path, w, q


def test_round_trip_zero_copy(edge_path):
    path, w, q = edge_path
    e = EdgeFile(path)
    assert e.header["kind"] == "test" and e.header["note"] == "héllo"
    np.testing.assert_array_equal(e.tensor("norm"), np.arange(7, dtype=np.float32))
    np.testing.assert_array_equal(e.tensor("w16"), w.astype(np.float16))
    parts = e.tensor("wq")
    for k in ("d", "m", "qs"):
        np.testing.assert_array_equal(parts[k], q[k])
        assert isinstance(parts[k].base, np.ndarray) or parts[k].base is not None  # a view, not a copy
    assert all(t["offset"] % ALIGN == 0 for t in e.header["tensors"].values())
    assert e.shape("wq") == [3, 96] and e.dtype("wq") == "q4_1"


def test_refuses_to_overwrite_without_force(edge_path):
    path, _, _ = edge_path
    before = path.read_bytes()
    with pytest.raises(EdgeError, match="--force"):
        write_edge(path, {}, [])
    assert path.read_bytes() == before
    write_edge(path, {"kind": "again"}, [], force=True)
    assert EdgeFile(path).header["kind"] == "again"


def test_failed_write_leaves_nothing(tmp_path):
    def boom():
        raise RuntimeError("producer failed")
    with pytest.raises(RuntimeError):
        write_edge(tmp_path / "x.edge", {}, [("a", "f32", [4], boom)])
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[: len(b) // 2], "truncated"),
    (lambda b: b[:-1], "truncated"),
    (lambda b: b + b"\0", "truncated or corrupt"),
    (lambda b: b"GGUF" + b[4:], "not an .edge file"),
    (lambda b: b[:4] + struct.pack("<I", 99) + b[8:], "version 99"),
    (lambda b: b[:30] + bytes([b[30] ^ 0x20]) + b[31:], "checksum"),
    (lambda b: b[:8] + struct.pack("<Q", 1 << 40) + b[16:], "header length"),
    (lambda b: b[:10], "not an .edge file"),
    (lambda b: b"", "not an .edge file"),
])
def test_damaged_files_are_refused(edge_path, damage, message):
    path, _, _ = edge_path
    bad = path.with_name("bad.edge")
    bad.write_bytes(damage(path.read_bytes()))
    with pytest.raises(EdgeError, match=message):
        EdgeFile(bad)


def test_tensor_outside_file_is_refused(tmp_path):
    import json
    import zlib

    from edgert.format import PREAMBLE, MAGIC, VERSION, align
    header = {"tensors": {"a": {"dtype": "f32", "shape": [1000], "offset": 0}}, "data_size": 64}
    raw = json.dumps(header).encode()
    blob = PREAMBLE.pack(MAGIC, VERSION, len(raw), zlib.crc32(raw), 0) + raw
    blob += b"\0" * (align(len(blob)) - len(blob)) + b"\0" * 64
    p = tmp_path / "evil.edge"
    p.write_bytes(blob)
    with pytest.raises(EdgeError, match="outside the file"):
        EdgeFile(p)


def test_missing_file():
    with pytest.raises(EdgeError, match="cannot open"):
        EdgeFile("/nonexistent/model.edge")
