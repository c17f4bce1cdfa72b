"""Graph fusions of the ONNX converter on small graphs, against onnxruntime: a residual Add
goes into the 1x1 conv before it only when nothing else reads the conv's output and the other
operand already exists when the conv runs; a squeeze-and-excite block becomes one op only
when nothing else reads its inner values; a scalar factor goes into the dense op its product
reaches through reshapes, and stays a Mul where its product is read elsewhere."""
import importlib.util

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the onnx package converts ONNX graphs (pip install onnx)")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import edgert  # noqa: E402
from edgert.convert.onnx_graph import convert_onnx  # noqa: E402

HAS_NUMBA = importlib.util.find_spec("numba") is not None
BACKENDS = ["ref", pytest.param("jit", marks=pytest.mark.skipif(not HAS_NUMBA, reason="numba not installed"))]
SHAPE = [1, 8, 6, 7]


def _save(path, name: str, nodes: list, outputs: dict, inits: dict) -> str:
    """Write an opset-13 graph of these nodes on input x f32[SHAPE] with outputs {name: shape}
    and initializers {name: array} (stored as float32)."""
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info(k, TensorProto.FLOAT, s) for k, s in outputs.items()],
                              [numpy_helper.from_array(np.asarray(a, np.float32), k) for k, a in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return str(path)


def _convert(tmp_path, src: str, backend: str):
    """(src converted and loaded on `backend`, src's onnxruntime session)."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the reference (pip install '.[oracle]')")
    convert_onnx(src, str(tmp_path / "m.edge"), progress=False)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return edgert.load(str(tmp_path / "m.edge"), backend=backend), sess


def _assert_matches(m, sess):
    """Every output of m equals onnxruntime's on three random inputs."""
    names = [o.name for o in sess.get_outputs()]
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)
        got = m.run({"x": x})
        for name, want in zip(names, sess.run(None, {"x": x})):
            np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-5)


def _residual_graph(path):
    """y1 = conv_a(x) + x (fusable); y2 = conv_b(y1) + y1 with conv_b's output also read by a
    Relu (not fusable); y3 = conv_c(y2) + relu(y2), the Relu placed after conv_c (not
    fusable); z = y3 + relu(conv_b(y1))."""
    rng = np.random.default_rng(3)
    inits = {k: (rng.standard_normal((8, 8, 1, 1)) / 3).astype(np.float32) for k in ("wa", "wb", "wc")}
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"]), helper.make_node("Add", ["a", "x"], ["y1"]),
             helper.make_node("Conv", ["y1", "wb"], ["b"]), helper.make_node("Add", ["b", "y1"], ["y2"]),
             helper.make_node("Relu", ["b"], ["rb"]),
             helper.make_node("Conv", ["y2", "wc"], ["c"]), helper.make_node("Relu", ["y2"], ["r"]),
             helper.make_node("Add", ["c", "r"], ["y3"]), helper.make_node("Add", ["y3", "rb"], ["z"])]
    return _save(path, "residual", nodes, {"z": SHAPE}, inits)


@pytest.mark.parametrize("backend", BACKENDS)
def test_residual_add_fuses_only_where_it_may(tmp_path, backend):
    m, sess = _convert(tmp_path, _residual_graph(tmp_path / "r.onnx"), backend)
    ops = m.program["ops"]
    assert [len(op["in"]) for op in ops if op["op"] == "conv"] == [2, 1, 1]
    assert sum(op["op"] == "binary" for op in ops) == 3
    _assert_matches(m, sess)


def _excite_graph(path, pool):
    """Two squeeze-and-excite blocks on x [1, 8, 6, 7]: y = x * hardsigmoid(conv(relu(conv(pool(x))))),
    the mean taken by `pool` (GlobalAveragePool or ReduceMean over H, W); then the same on y
    with its scale s2 also added to the output (not fusable: s2 has a second reader)."""
    rng = np.random.default_rng(5)
    inits = {"w1": rng.standard_normal((4, 8, 1, 1)), "b1": rng.standard_normal(4),
             "w2": rng.standard_normal((8, 4, 1, 1)), "b2": rng.standard_normal(8),
             "w3": rng.standard_normal((4, 8, 1, 1)), "w4": rng.standard_normal((8, 4, 1, 1))}
    mean = ([helper.make_node("GlobalAveragePool", ["x"], ["p"])] if pool == "global"
            else [helper.make_node("ReduceMean", ["x"], ["p"], axes=[3, 2], keepdims=1)])
    nodes = mean + [helper.make_node("Conv", ["p", "w1", "b1"], ["h"]), helper.make_node("Relu", ["h"], ["hr"]),
                    helper.make_node("Conv", ["hr", "w2", "b2"], ["s"]), helper.make_node("HardSigmoid", ["s"], ["sh"]),
                    helper.make_node("Mul", ["sh", "x"], ["y"]),
                    helper.make_node("GlobalAveragePool", ["y"], ["p2"]), helper.make_node("Conv", ["p2", "w3"], ["h2"]),
                    helper.make_node("Relu", ["h2"], ["h2r"]), helper.make_node("Conv", ["h2r", "w4"], ["s2"]),
                    helper.make_node("Mul", ["y", "s2"], ["y2"]), helper.make_node("Add", ["y2", "s2"], ["z"])]
    return _save(path, "excite", nodes, {"z": SHAPE}, inits)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pool", ["global", "reduce"])
def test_squeeze_excite_fuses_only_where_it_may(tmp_path, backend, pool):
    m, sess = _convert(tmp_path, _excite_graph(tmp_path / "e.onnx", pool), backend)
    assert [op["op"] for op in m.program["ops"]] == ["squeeze_excite", "global_pool", "conv", "conv", "binary",
                                                     "binary"]
    _assert_matches(m, sess)


def _head_graph(path, head):
    """A classifier head on x [1, 8, 6, 7]: f = flatten(0.8 * relu(conv(pool(x)))), then z =
    f @ W + b by `head` (Gemm or MatMul and Add): the scalar folds into W. A second branch,
    g = 0.5 * relu(conv(pool(x))), is also an output, so its Mul stays."""
    rng = np.random.default_rng(7)
    inits = {"w": rng.standard_normal((16, 8, 1, 1)), "B": rng.standard_normal((16, 5)), "bias": rng.standard_normal(5),
             "k": np.array([0.8]), "h": np.array(0.5)}
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Conv", ["p", "w"], ["c"]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Mul", ["k", "r"], ["s"]),
             helper.make_node("Flatten", ["s"], ["f"]), helper.make_node("Mul", ["r", "h"], ["g"])]
    nodes += ([helper.make_node("Gemm", ["f", "B", "bias"], ["z"])] if head == "gemm" else
              [helper.make_node("MatMul", ["f", "B"], ["m"]), helper.make_node("Add", ["m", "bias"], ["z"])])
    return _save(path, "head", nodes, {"z": [1, 5], "g": [1, 16, 1, 1]}, inits)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head", ["gemm", "matmul"])
def test_scalar_factor_folds_into_dense(tmp_path, backend, head):
    m, sess = _convert(tmp_path, _head_graph(tmp_path / "h.onnx", head), backend)
    assert [op["op"] for op in m.program["ops"]] == ["global_pool", "conv", "reshape", "const", "binary", "dense"]
    _assert_matches(m, sess)
