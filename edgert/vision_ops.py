"""Binders for the ops of converted ONNX graphs (kind "cnn"), registered into
edgert.interpreter.OPS when that module loads. Values are float32 arrays in the graph's own
layout (NCHW); see convert/onnx_graph.py for how ONNX nodes map to these ops and
docs/CNN.md for their attributes and weight layouts.
"""
from __future__ import annotations

import numpy as np

from . import interpreter
from .errors import EdgeError
from .kernels.ref.conv import GROUP, apply_act
from .kernels.ref.pool import pool


def _blocks(it, op, k: int, rows: int, group: int = 1, suffix: str = ""):
    """op's block-layout weight for `group` groups of `rows` output rows over k input columns
    each: (vals f32[nnz, GROUP], idx i32[nnz], ptr i32[group * (nb + 1)], bias f32[>= group * nb
    * GROUP]), nb = ceil(rows / GROUP). Checked here because the Numba kernels index memory with
    idx and ptr unchecked: a model file is data, and a damaged or hostile one must get an error,
    not make a kernel read outside its arrays. suffix: of the four roles' names in op["w"]."""
    w = op["w"]
    vals, bias = it.weights.get(w["vals" + suffix]), it.weights.get(w["bias" + suffix])
    idx, ptr = (it.weights.edge.tensor(w[role + suffix]) for role in ("idx", "ptr"))
    nb = -(-rows // GROUP)
    if not all(isinstance(a, np.ndarray) for a in (vals, bias, idx, ptr)) or idx.dtype != np.int32 \
            or ptr.dtype != np.int32 or idx.ndim != 1 or ptr.ndim != 1:
        bad = "its block layout is not float32 vals and bias with int32 vectors idx and ptr"
    elif vals.size != GROUP * idx.size:
        bad = f"{vals.size} weights for {idx.size} columns of {GROUP}"
    elif ptr.size != group * (nb + 1) or bias.size < group * nb * GROUP:
        bad = f"{ptr.size} block offsets and {bias.size} biases for {group} x {nb} blocks"
    elif idx.size and (idx.min() < 0 or idx.max() >= k):
        bad = f"a column index outside [0, {k})"
    elif ptr.min() < 0 or ptr.max() > idx.size or (np.diff(ptr.reshape(group, nb + 1), axis=1) < 0).any():
        bad = "its block offsets are out of order or point outside its columns"
    else:
        return vals.reshape(-1, GROUP), np.ascontiguousarray(idx), np.ascontiguousarray(ptr), bias.reshape(-1)
    raise EdgeError(f"corrupt model: op {op['op']} -> {op['out'][0]!r}: {bad}")


def _check_conv_shape(op, x, out):
    """A conv's attributes must fit its input and output shapes: the kernels trust them."""
    a = op["attrs"]
    (kh, kw), (sh, sw), (dh, dw), pads, group = a["kernel"], a["strides"], a["dilations"], a["pads"], a["group"]
    ok = min(kh, kw, sh, sw, dh, dw, group) >= 1 and len(pads) == 4 and min(pads) >= 0 and x.ndim == out.ndim == 4
    if ok:
        (n, c, h, w), (n_out, cout) = x.shape, out.shape[:2]
        oh = (h + pads[0] + pads[2] - (kh - 1) * dh - 1) // sh + 1
        ow = (w + pads[1] + pads[3] - (kw - 1) * dw - 1) // sw + 1
        groups = {"gemm": group == 1 and (kh, kw, sh, sw, *pads) == (1, 1, 1, 1, 0, 0, 0, 0),
                  "depthwise": group == c == cout, "gemm_dw": group == cout and sw <= 2,
                  "im2col": c % group == 0 and cout % group == 0}
        ok = n_out == n and out.shape[2:] == (oh, ow) and groups.get(a["kind"], False)
    if not ok:
        raise EdgeError(f"corrupt program: conv {op['out'][0]!r} ({a.get('kind')}) has attributes that do not fit "
                        f"its input {x.shape} and output {out.shape}: {a}")


def _bind_conv(it, op, st):
    """conv: kind depthwise (weight f32[C, kh*kw], bias f32[C]), gemm / im2col (block layout
    vals, idx, ptr, bias with `group` groups; a gemm may take a second input, a residual added
    after the activation) or gemm_dw (both, see _bind_gemm_dw); one image of the batch at a
    time."""
    K, a = it.K, op["attrs"]
    x, out = st.env[op["in"][0]], st.env[op["out"][0]]
    n, c = x.shape[:2]
    cout, oh, ow = out.shape[1:]
    act = np.array(a["act"], np.float32)
    kh, kw = a["kernel"]
    sh, sw = a["strides"]
    pt, pl = a["pads"][:2]
    dh, dw = a["dilations"]
    _check_conv_shape(op, x, out)
    w = op["w"]
    if a["kind"] == "gemm_dw":
        return _bind_gemm_dw(it, op, st, x, out)
    if a["kind"] == "depthwise":
        weight, bias = it.weights.get(w["weight"]), it.weights.get(w["bias"])

        def run():
            for i in range(n):
                K.depthwise_conv(x[i], weight, bias, kh, kw, sh, sw, pt, pl, dh, dw, act, out[i])
        return run
    group = a["group"]
    cg, cin = cout // group, c // group
    vals, idx, ptr, bias = _blocks(it, op, cin * (kh * kw if a["kind"] == "im2col" else 1), cg, group)
    nb = -(-cg // GROUP)
    parts = [(ptr[g * (nb + 1):(g + 1) * (nb + 1)], bias[g * nb * GROUP:(g + 1) * nb * GROUP]) for g in range(group)]
    out2 = out.reshape(n, cout, oh * ow)
    if a["kind"] == "gemm":
        x2 = x.reshape(n, c, -1)
        res2 = [None] * n
        if len(op["in"]) > 1:
            res = st.env[op["in"][1]]
            if res.shape != out.shape:
                raise EdgeError(f"corrupt program: conv {op['out'][0]!r} adds a residual of shape {res.shape} "
                                f"to an output of shape {out.shape}")
            res2 = res.reshape(n, cout, -1)

        def run():
            for i in range(n):
                K.conv_gemm(x2[i], vals, idx, ptr, bias, act, out2[i], res2[i])
        return run

    def run():
        for i in range(n):
            for g, (p, b) in enumerate(parts):
                K.conv_direct(x[i, g * cin:(g + 1) * cin], kh, kw, sh, sw, pt, pl, dh, dw, vals, idx, p, b, act,
                              out[i, g * cg:(g + 1) * cg])
    return run


def _bind_gemm_dw(it, op, st, x, out):
    """conv kind gemm_dw: a 1x1 conv (block layout vals, idx, ptr, bias; activation
    `expand_act`) and the depthwise conv on its output (dw_weight f32[C, kh*kw], dw_bias f32[C];
    kernel, strides, pads, dilations, act), as one kernel that never holds the whole expanded
    map. All such ops of a step share one work space (the largest any of them needs)."""
    K, a, w = it.K, op["attrs"], op["w"]
    n, c, h, wd = x.shape
    cout, oh = out.shape[1:3]
    vals, idx, ptr, bias = _blocks(it, op, c, cout)
    dw_w, dw_b = it.weights.get(w["dw_weight"]), it.weights.get(w["dw_bias"])
    act, dact = np.array(a["expand_act"], np.float32), np.array(a["act"], np.float32)
    (kh, kw), (sh, sw), (pt, pl), (dh, dw) = a["kernel"], a["strides"], a["pads"][:2], a["dilations"]
    shape = K.gemm_dw_scratch(cout, h, wd, oh, kh, sh, dh)
    size = int(np.prod(shape))
    shared = st.act_scratch.setdefault("conv_gemm_dw", [np.empty(0, np.float32)])
    if shared[0].size < size:
        shared[0] = np.empty(size, np.float32)

    def run():
        scratch = shared[0][:size].reshape(shape)
        for i in range(n):
            K.conv_gemm_dw(x[i], vals, idx, ptr, bias, act, dw_w, dw_b, kh, kw, sh, sw, pt, pl, dh, dw, dact, scratch,
                           out[i])
    return run


def _bind_squeeze_excite(it, op, st):
    """squeeze_excite: out = x * act2(W2 @ act1(W1 @ mean of x over its pixels + bias) + bias2)
    per channel; W1 [mid, C] (vals, idx, ptr, bias) and W2 [C, mid] (vals2, idx2, ptr2, bias2)
    in the block layout; attrs act, act2, mid. One image of the batch at a time."""
    x, out = st.env[op["in"][0]], st.env[op["out"][0]]
    if x.ndim < 2 or out.shape != x.shape:
        raise EdgeError(f"corrupt program: squeeze_excite {op['out'][0]!r} maps {x.shape} to {out.shape}")
    n, c = x.shape[:2]
    a, mid = op["attrs"], op["attrs"]["mid"]
    w1 = _blocks(it, op, c, mid)
    w2 = _blocks(it, op, mid, c, suffix="2")
    act1, act2 = np.array(a["act"], np.float32), np.array(a["act2"], np.float32)
    x2, out2 = x.reshape(n, c, -1), out.reshape(n, c, -1)

    def run():
        for i in range(n):
            it.K.squeeze_excite(x2[i], *w1, act1, *w2, act2, out2[i])
    return run


def _bind_dense(it, op, st):
    """dense: out [..., N] = x [..., K] @ weight f32[K, N] + bias (a row [N], else broadcast
    afterwards, e.g. Gemm's [M, N] C). On one row (M = 1) the converter stores weight.T [N, K]
    in the block layout instead (vals, idx, ptr, bias f32[nb*GROUP]): conv_gemm on one pixel."""
    x, out = st.env[op["in"][0]], st.env[op["out"][0]]
    if "vals" in op["w"]:
        vals, idx, ptr, bias = _blocks(it, op, x.size, out.size)
        x1, o1 = x.reshape(-1, 1), out.reshape(-1, 1)
        act = np.array([1, 0, -np.inf, np.inf, 0], np.float32)
        return lambda: it.K.conv_gemm(x1, vals, idx, ptr, bias, act, o1)
    w = it.weights.get(op["w"]["weight"])
    k, n = w.shape
    bias = it.weights.get(op["w"]["bias"]) if "bias" in op["w"] else np.zeros(n, np.float32)
    row = bias.reshape(n) if bias.size == n else np.zeros(n, np.float32)
    x2, o2 = x.reshape(-1, k), out.reshape(-1, n)
    if bias.size == n:
        return lambda: it.K.dense(x2, w, row, o2)

    def run():
        it.K.dense(x2, w, row, o2)
        np.add(out, bias, out=out)
    return run


def _bind_matmul(it, op, st):
    a, b = (st.env[v] for v in op["in"])
    out = st.env[op["out"][0]]
    if a.ndim == 1 or b.ndim == 1:  # NumPy's matmul drops the 1-D operand's axis, as ONNX does
        return lambda: np.copyto(out, np.matmul(a, b).reshape(out.shape))
    return lambda: np.matmul(a, b, out=out)


def _bind_act(it, op, st):
    x, out = st.env[op["in"][0]], st.env[op["out"][0]]
    act = np.array(op["attrs"]["act"], np.float32)
    return lambda: apply_act(x, act, out)


def _bind_sigmoid(it, op, st):
    x, out = st.env[op["in"][0]], st.env[op["out"][0]]

    def run():
        with np.errstate(over="ignore"):
            np.exp(np.negative(x, out=out), out=out)
        np.add(out, 1, out=out)
        np.reciprocal(out, out=out)
    return run


def _bind_affine(it, op, st):
    """affine (an unfolded BatchNormalization): out = x * scale[c] + shift[c] along axis 1."""
    x, out = st.env[op["in"][0]], st.env[op["out"][0]]
    tail = (1,) * max(0, x.ndim - 2)
    s = it.weights.get(op["w"]["scale"]).reshape(-1, *tail)
    t = it.weights.get(op["w"]["shift"]).reshape(-1, *tail)

    def run():
        np.multiply(x, s, out=out)
        np.add(out, t, out=out)
    return run


_BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}


def _bind_binary(it, op, st):
    a, b = (st.env[v] for v in op["in"])
    out = st.env[op["out"][0]]
    fn = _BINARY[op["attrs"]["fn"]]
    return lambda: fn(a, b, out=out)


def _bind_concat(it, op, st):
    ins = [st.env[v] for v in op["in"]]
    out, axis = st.env[op["out"][0]], op["attrs"]["axis"]
    return lambda: np.concatenate(ins, axis=axis, out=out)


def _bind_transpose(it, op, st):
    x, out = st.env[op["in"][0]], st.env[op["out"][0]]
    view = x.transpose(op["attrs"]["perm"])
    return lambda: np.copyto(out, view)


def _bind_softmax(it, op, st):
    """Softmax along `axis`; legacy (opset < 13): over all axes from `axis` on, flattened."""
    x, out = st.env[op["in"][0]], st.env[op["out"][0]]
    axis, legacy = op["attrs"]["axis"], op["attrs"]["legacy"]
    if legacy or axis == x.ndim - 1:
        rows = int(np.prod(x.shape[:axis])) if legacy else int(np.prod(x.shape[:-1]))
        x2, o2 = x.reshape(rows, -1), out.reshape(rows, -1)
        return lambda: it.K.softmax(x2, o2)

    def run():
        np.subtract(x, x.max(axis=axis, keepdims=True), out=out)
        np.exp(out, out=out)
        np.divide(out, out.sum(axis=axis, keepdims=True), out=out)
    return run


def _bind_pad(it, op, st):
    x, out = st.env[op["in"][0]], st.env[op["out"][0]]
    a = op["attrs"]
    r = x.ndim
    width = [(a["pads"][d], a["pads"][r + d]) for d in range(r)]
    kw = {"constant_values": a["value"]} if a["mode"] == "constant" else {}
    return lambda: np.copyto(out, np.pad(x, width, mode=a["mode"], **kw))


def _bind_reduce(it, op, st):
    x, out = st.env[op["in"][0]], st.env[op["out"][0]]
    axes, keep = tuple(op["attrs"]["axes"]), op["attrs"]["keepdims"]
    return lambda: np.copyto(out, np.mean(x, axis=axes, keepdims=keep).reshape(out.shape))


def _bind_global_pool(it, op, st):
    """Max or mean over all spatial axes (the mean by the kernel global_avg_pool, every
    image's channels as rows)."""
    x, out = st.env[op["in"][0]], st.env[op["out"][0]]
    if op["attrs"]["mode"] == "max":
        axes = tuple(range(2, x.ndim))
        return lambda: np.max(x, axis=axes, keepdims=True, out=out)
    size = int(np.prod(x.shape[2:]))
    x2, o2 = x.reshape(-1, size), out.reshape(-1, 1)
    return lambda: it.K.global_avg_pool(x2, o2)


def _bind_pool(it, op, st):
    x, out = st.env[op["in"][0]], st.env[op["out"][0]]
    a = op["attrs"]
    return lambda: pool(x, a["mode"], a["kernel"], a["strides"], a["dilations"], a["pads"],
                        a["count_include_pad"], out)


def _bind_reshape(it, op, st):
    x, out = st.env[op["in"][0]], st.env[op["out"][0]]
    flat = x.reshape(out.shape)
    return lambda: np.copyto(out, flat)


def _bind_const(it, op, st):
    out = st.env[op["out"][0]]
    w = it.weights.get(op["w"]["value"]).reshape(out.shape)
    return lambda: np.copyto(out, w)


OPS = {
    "conv": _bind_conv,
    "squeeze_excite": _bind_squeeze_excite,
    "dense": _bind_dense,
    "matmul": _bind_matmul,
    "act": _bind_act,
    "sigmoid": _bind_sigmoid,
    "affine": _bind_affine,
    "binary": _bind_binary,
    "concat": _bind_concat,
    "transpose": _bind_transpose,
    "softmax": _bind_softmax,
    "pad": _bind_pad,
    "reduce": _bind_reduce,
    "global_pool": _bind_global_pool,
    "pool": _bind_pool,
    "reshape": _bind_reshape,
    "const": _bind_const,
}
interpreter.OPS.update(OPS)
