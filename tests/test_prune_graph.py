"""Pruning every GEMM-shaped weight of a small ONNX classifier (a 3x3 stride-2 stem through
im2col, a grouped 3x3 conv, a 1x1 conv, a Gemm or MatMul head on one row): each is stored in
the block layout with the requested group sparsity, the kernels (both backends) agree, and a
graph pruned inside the ONNX file matches onnxruntime; depthwise convs and dense ops on
several rows stay dense."""
import importlib.util

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the onnx package converts ONNX graphs (pip install onnx)")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import edgert  # noqa: E402
from edgert.convert.onnx_graph import convert_onnx  # noqa: E402
from edgert.convert.prune import (GROUP, dense_from_blocks, group_mask, group_sparsity, obs_scale,  # noqa: E402
                                  prune_groups, reconstruct)

HAS_NUMBA = importlib.util.find_spec("numba") is not None
BACKENDS = ["ref", pytest.param("jit", marks=pytest.mark.skipif(not HAS_NUMBA, reason="numba not installed"))]
CLASSES = 10


def _graph(path, head="gemm", prune=0.0, rows=1):
    """A small CNN as ONNX: stem conv 3->16 (3x3, stride 2) + Relu, depthwise 3x3, grouped conv
    16->16 (3x3, 2 groups), 1x1 conv 16->24, global average pool, flatten, head 24 -> CLASSES
    (Gemm with transB, or MatMul + Add). rows > 1 repeats the pooled row before the head (a dense op
    on several rows). prune > 0 group-prunes every conv and head weight but the depthwise one in
    the file itself. Returns the path."""
    rng = np.random.default_rng(7)

    def w(*shape):
        return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)

    def pruned(a):
        return prune_groups(a.reshape(a.shape[0], -1), prune).reshape(a.shape) if prune else a
    inits = {"stem_w": pruned(w(16, 3, 3, 3)), "stem_b": w(16), "dw_w": w(16, 1, 3, 3), "g_w": pruned(w(16, 8, 3, 3)),
             "pw_w": pruned(w(24, 16, 1, 1)), "pw_b": w(24)}
    head_w = pruned(w(CLASSES, 24))  # [N, K]: output rows in groups, as the kernel takes them
    nodes = [helper.make_node("Conv", ["x", "stem_w", "stem_b"], ["s"], kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["s"], ["s1"]),
             helper.make_node("Conv", ["s1", "dw_w"], ["d"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=16),
             helper.make_node("Conv", ["d", "g_w"], ["g"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=2),
             helper.make_node("Conv", ["g", "pw_w", "pw_b"], ["p"], kernel_shape=[1, 1]),
             helper.make_node("GlobalAveragePool", ["p"], ["gp"]),
             helper.make_node("Flatten", ["gp"], ["f"])]
    feat = "f"
    if rows > 1:
        nodes.append(helper.make_node("Concat", ["f"] * rows, ["ft"], axis=0))
        feat = "ft"
    if head == "gemm":
        inits["head_w"], inits["head_b"] = head_w, w(CLASSES)
        nodes.append(helper.make_node("Gemm", [feat, "head_w", "head_b"], ["y"], transB=1))
    else:
        inits["head_w"], inits["head_b"] = np.ascontiguousarray(head_w.T), w(CLASSES)
        nodes += [helper.make_node("MatMul", [feat, "head_w"], ["m"]), helper.make_node("Add", ["m", "head_b"], ["y"])]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 20, 23])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, CLASSES])],
                              [numpy_helper.from_array(a, k) for k, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return str(path)


def _input(seed=0):
    return np.random.default_rng(seed).standard_normal((1, 3, 20, 23)).astype(np.float32)


def _block_weights(m):
    """{op kind: [dense weight [rows, K] of each group]} rebuilt from every block-layout op."""
    out = {}
    shape = {**{k: v["shape"] for k, v in m.program["inputs"].items()}, **m.program["values"]}
    for op in m.program["ops"]:
        if "vals" not in op["w"]:
            continue
        vals, idx, ptr = (np.asarray(m.interp.weights.edge.tensor(op["w"][k])) for k in ("vals", "idx", "ptr"))
        xs, ys = shape[op["in"][0]], shape[op["out"][0]]
        if op["op"] == "dense":
            kind, groups, k, rows = "dense", 1, xs[-1], ys[-1]
        else:
            a = op["attrs"]
            kind, groups = f"conv:{a['kind']}:{a['group']}", a["group"]
            k, rows = xs[1] // groups * a["kernel"][0] * a["kernel"][1], ys[1] // groups
        n = len(ptr) // groups
        out[kind] = []
        for g in range(groups):
            p = ptr[g * n:(g + 1) * n]
            out[kind].append(dense_from_blocks(vals.reshape(-1, GROUP)[p[0]:p[-1]], idx[p[0]:p[-1]], p - p[0], k, rows))
    return out


@pytest.mark.parametrize("head", ["gemm", "matmul"])
def test_prune_reaches_every_gemm_shaped_weight(tmp_path, head):
    src = _graph(tmp_path / "m.onnx", head)
    summary = convert_onnx(src, str(tmp_path / "p.edge"), prune=0.5, progress=False)
    assert summary["pruned_layers"] == 4  # stem, grouped conv, 1x1 conv, head
    assert summary["ops"]["conv:depthwise"] == 1 and summary["ops"]["dense"] == 1
    m = edgert.load(str(tmp_path / "p.edge"))
    weights = _block_weights(m)
    assert set(weights) == {"conv:im2col:1", "conv:im2col:2", "conv:gemm:1", "dense"}
    for kind, parts in weights.items():
        sp = np.mean([group_sparsity(p) for p in parts])
        assert sp == pytest.approx(0.5, abs=0.06), (kind, sp)
    dw = next(op for op in m.program["ops"] if op["op"] == "conv" and op["attrs"]["kind"] == "depthwise")
    assert "weight" in dw["w"]


@pytest.mark.parametrize("head", ["gemm", "matmul"])
def test_pruned_graph_runs_alike_on_both_backends(tmp_path, head):
    """The pruned stem, grouped conv and head through the Numba kernels and their NumPy twins."""
    if not HAS_NUMBA:
        pytest.skip("numba not installed")
    src = _graph(tmp_path / "m.onnx", head)
    convert_onnx(src, str(tmp_path / "p.edge"), prune=0.3, progress=False)
    x = _input()
    ys = [edgert.load(str(tmp_path / "p.edge"), backend=b).run({"x": x})["y"] for b in ("ref", "jit")]
    np.testing.assert_allclose(ys[1], ys[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head,rows", [("gemm", 1), ("matmul", 1), ("gemm", 3)])
def test_already_sparse_graph_matches_onnxruntime(tmp_path, backend, head, rows):
    """Weights group-pruned inside the ONNX file: the converter stores only the non-zero groups
    (a one-row head too) and the result still matches onnxruntime; a head on several rows keeps
    its dense weight."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the reference (pip install '.[oracle]')")
    src = _graph(tmp_path / "m.onnx", head, prune=0.6, rows=rows)
    summary = convert_onnx(src, str(tmp_path / "s.edge"), progress=False)
    assert summary["pruned_layers"] == 0
    m = edgert.load(str(tmp_path / "s.edge"), backend=backend)
    dense = next(op for op in m.program["ops"] if op["op"] == "dense")
    assert ("vals" in dense["w"]) == (rows == 1)
    assert summary["gemm_group_sparsity"] == pytest.approx(0.6, abs=0.06)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    for seed in range(3):
        x = _input(seed)
        ref = sess.run(None, {"x": x})[0]
        np.testing.assert_allclose(m.run({"x": x})["y"], ref, rtol=1e-4, atol=1e-5)


def _layer_inputs(rng, mix, n):
    """n inputs f64[K, n] of one distribution: correlated channels with non-zero means (as after
    a ReLU), the ones row appended last ([K + 1, n])."""
    x = np.maximum(mix @ rng.standard_normal((mix.shape[1], n)) + 0.5, 0)
    return np.vstack([x, np.ones((1, n))])


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_reconstruction_lowers_the_held_out_error(sparsity):
    """A random layer pruned by group_mask: refitting the kept weights and the bias on
    calibration inputs (reconstruct) cuts the output error on other inputs of the same
    distribution well below that of the merely masked weights, at the same group sparsity."""
    rng = np.random.default_rng(3)
    k, rows = 48, 18  # rows not a multiple of GROUP: a zero-padded last block
    mix = rng.standard_normal((k, 12)) / 3 + np.eye(k, 12)  # channels share a few factors
    w, b = rng.standard_normal((rows, k)).astype(np.float32), rng.standard_normal(rows).astype(np.float32)
    calib, held = _layer_inputs(rng, mix, 600), _layer_inputs(rng, mix, 600)
    h = calib @ calib.T
    keep = group_mask(w, sparsity, obs_scale(h))
    masked = w * np.repeat(keep, GROUP, axis=0)[:rows]
    w2, b2 = reconstruct(w, b, keep, h)
    assert group_sparsity(w2) == group_sparsity(masked) == pytest.approx(sparsity, abs=0.01)
    assert not np.any(w2[masked == 0])

    def err(wp, bp):
        return np.linalg.norm(np.hstack([wp, bp[:, None]]) @ held - np.hstack([w, b[:, None]]) @ held)
    assert err(w2, b2) < 0.6 * err(masked, b)


def test_reconstruction_towards_the_dense_inputs_corrects_upstream_error():
    """When this layer's inputs already differ from the dense network's (upstream layers
    pruned), the cross Gram matrix g refits the layer to the dense output W x_dense + b: on held-
    out inputs it beats refitting to W x (g omitted) at the same mask."""
    rng = np.random.default_rng(4)
    k, rows = 40, 16
    mix = rng.standard_normal((k, 10)) / 3 + np.eye(k, 10)
    w, b = rng.standard_normal((rows, k)).astype(np.float32), rng.standard_normal(rows).astype(np.float32)
    drift = np.eye(k + 1)
    drift[:k] += 0.1 * rng.standard_normal((k, k + 1))  # the upstream error: a linear distortion
    calib, held = _layer_inputs(rng, mix, 500), _layer_inputs(rng, mix, 500)
    h = (drift @ calib) @ (drift @ calib).T
    keep = group_mask(w, 0.5, obs_scale(h))

    def err(wp, bp):
        return np.linalg.norm(np.hstack([wp, bp[:, None]]) @ drift @ held - np.hstack([w, b[:, None]]) @ held)
    assert err(*reconstruct(w, b, keep, h, (drift @ calib) @ calib.T)) < 0.7 * err(*reconstruct(w, b, keep, h))
