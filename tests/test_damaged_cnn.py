"""A converted CNN whose weights or attributes were damaged (or crafted) gets a clear error on
both backends, never a kernel reading outside its arrays: the Numba kernels index memory with
the block layout's idx and ptr and trust a conv's attributes, so the binder checks them."""
import copy
import importlib.util

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the onnx package converts ONNX graphs (pip install onnx)")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import edgert  # noqa: E402
from edgert.convert.onnx_graph import convert_onnx  # noqa: E402
from edgert.errors import EdgeError  # noqa: E402
from edgert.format import EdgeFile, write_edge  # noqa: E402

HAS_NUMBA = importlib.util.find_spec("numba") is not None
BACKENDS = ["ref", pytest.param("jit", marks=pytest.mark.skipif(not HAS_NUMBA, reason="numba not installed"))]
SHAPE = [1, 3, 9, 9]


@pytest.fixture(scope="module", params=[None, 0], ids=["apart", "fused"])
def edge_file(request, tmp_path_factory):
    return _convert(tmp_path_factory.mktemp("damaged"), request.param)


def _convert(d, fuse_min_bytes):
    """A 3x3 stride-2 conv (im2col), a 1x1 expand, a depthwise 3x3, a 1x1 projection and a
    squeeze-and-excite block, converted into d with the expand and depthwise conv apart
    (fuse_min_bytes None) or fused (gemm_dw, 0)."""
    rng = np.random.default_rng(0)
    inits = {"w0": rng.standard_normal((8, 3, 3, 3)), "w1": rng.standard_normal((16, 8, 1, 1)),
             "w2": rng.standard_normal((16, 1, 3, 3)), "w3": rng.standard_normal((8, 16, 1, 1)),
             "w4": rng.standard_normal((4, 8, 1, 1)), "w5": rng.standard_normal((8, 4, 1, 1))}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["b"]), helper.make_node("Conv", ["b", "w1"], ["c"]),
             helper.make_node("Conv", ["c", "w2"], ["d"], group=16, pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["d", "w3"], ["e"]), helper.make_node("GlobalAveragePool", ["e"], ["p"]),
             helper.make_node("Conv", ["p", "w4"], ["q"]), helper.make_node("Relu", ["q"], ["r"]),
             helper.make_node("Conv", ["r", "w5"], ["s"]), helper.make_node("HardSigmoid", ["s"], ["t"]),
             helper.make_node("Mul", ["e", "t"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 5, 5])],
                              [numpy_helper.from_array(a.astype(np.float32), k) for k, a in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(d / "g.onnx"))
    convert_onnx(str(d / "g.onnx"), str(d / "g.edge"), progress=False, fuse_min_bytes=fuse_min_bytes)
    return str(d / "g.edge")


def _rewrite(src, dst, header_fn=None, tensor_fn=None):
    """Copy the .edge file src to dst (a valid file: checksum and table recomputed) after
    header_fn(header) and tensor_fn(name, array) -> array changed it."""
    e = EdgeFile(src)
    header = copy.deepcopy({k: v for k, v in e.header.items() if k not in ("tensors", "data_size")})
    if header_fn:
        header_fn(header)
    tensors = []
    for name, t in e.header["tensors"].items():
        arr = np.array(e.tensor(name))
        arr = tensor_fn(name, arr) if tensor_fn else arr
        tensors.append((name, t["dtype"], t["shape"], lambda arr=arr: arr))
    write_edge(dst, header, tensors)
    return dst


def _set_tensor(role, index, value):
    """Damage the first op with a weight of this role: its element `index` set to value (or to
    value(array))."""
    def header_and_tensor(src, dst):
        op = next(op for op in EdgeFile(src).header["program"]["ops"] if role in op["w"])

        def change(name, arr):
            if name == op["w"][role]:
                arr.reshape(-1)[index] = value(arr) if callable(value) else value
            return arr
        return _rewrite(src, dst, tensor_fn=change)
    return header_and_tensor


def _set_attr(key, value):
    def change(header):
        next(op for op in header["program"]["ops"] if op["op"] == "conv")["attrs"][key] = value
    return lambda src, dst: _rewrite(src, dst, header_fn=change)


DAMAGES = {
    "column index too large": (_set_tensor("idx", 0, 1 << 28), "column index outside"),
    "negative column index": (_set_tensor("idx", -1, -5), "column index outside"),
    "block offset past the end": (_set_tensor("ptr", -1, 1 << 28), "block offsets"),
    "negative block offset": (_set_tensor("ptr", 0, -(1 << 20)), "block offsets"),
    "block offsets out of order": (_set_tensor("ptr", 0, lambda ptr: ptr[-1]), "block offsets"),
    "squeeze-excite column index": (_set_tensor("idx2", 0, 4), "column index outside"),
    "squeeze-excite block offsets": (_set_tensor("ptr2", -1, -1), "block offsets"),
    "negative pads": (_set_attr("pads", [-40, -40, 0, 0]), "do not fit"),
    "zero stride": (_set_attr("strides", [0, 0]), "do not fit"),
    "stride that misfits the output": (_set_attr("strides", [1, 1]), "do not fit"),
    "huge dilation": (_set_attr("dilations", [1 << 20, 1]), "do not fit"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_cnn_gets_a_clear_error(edge_file, tmp_path, damage, backend):
    make, message = DAMAGES[damage]
    bad = make(edge_file, str(tmp_path / "bad.edge"))
    m = edgert.load(bad, backend=backend)
    with pytest.raises(EdgeError, match=f"corrupt .*{message}"):
        m.run({"x": np.ones(SHAPE, np.float32)})


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_conv_with_a_column_stride_above_2(tmp_path, backend):
    """The fused 1x1 + depthwise kernel takes column strides 1 and 2 (the converter fuses no
    other): a file whose gemm_dw op has stride 3, its output shape changed to fit, is refused
    when bound on either backend."""
    fused = []

    def change(header):
        prog = header["program"]
        op = next(op for op in prog["ops"] if op["op"] == "conv" and op["attrs"]["kind"] == "gemm_dw")
        op["attrs"]["strides"] = [1, 3]
        prog["values"][op["out"][0]][3] = 2  # (5 + 2 - 3) // 3 + 1
        fused.append(op["out"][0])
    bad = _rewrite(_convert(tmp_path, 0), str(tmp_path / "bad.edge"), header_fn=change)
    with pytest.raises(EdgeError, match=f"corrupt program: conv '{fused[0]}' .*do not fit"):
        edgert.load(bad, backend=backend).run({"x": np.ones(SHAPE, np.float32)})


@pytest.mark.parametrize("backend", BACKENDS)
def test_undamaged_copy_runs(edge_file, tmp_path, backend):
    """The rewrite itself keeps a file valid: a copy with nothing changed runs as the original."""
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    want = edgert.load(edge_file, backend=backend).run({"x": x})
    got = edgert.load(_rewrite(edge_file, str(tmp_path / "same.edge")), backend=backend).run({"x": x})
    np.testing.assert_array_equal(got["y"], want["y"])
