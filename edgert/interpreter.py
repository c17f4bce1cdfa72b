"""Runs a program: each op resolved to its kernel once at load, buffers planned per shape.

Interpreter(program, edge, backend).step(tokens, pos, cache, rows) runs one language-model
step over n new tokens (prefill n > 1, decode n = 1, tree verification with a mask) and
returns the output rows: the last token's logits (rows="last") or every token's
(rows="all"). Interpreter.run(feeds, dims) runs any program (no KV cache) on named inputs.
"""
from __future__ import annotations

import sys

import numpy as np

from . import kernels as kernel_registry
from .budget import STEPS_KEPT
from .errors import EdgeError
from .kvcache import KVCache
from .program import concrete, plan_buffers, validate

# Activations of quantized linears are quantized per block of 32 to int16 (the default: the
# logits stay within float rounding of the float model, so greedy decoding follows it token
# for token) or to int8 as llama.cpp does (stored in the kernels' pair order; the products run
# on vpmaddubsw, about 2x faster, with a small drift). See edgert.kernels.jit.quant.
ACTIVATIONS = {"int16": np.int16, "int8": np.int8}
_DTYPES = {"i64": np.int64, "f32": np.float32}
_PYODIDE = sys.platform == "emscripten"  # no BLAS there: np.einsum beats np.matmul about 2x
EXPAND = (None, "f32", "int8")  # Weights(expand=...): how quantized tensors are kept in memory


class RowsI8:
    """A weight matrix kept as int8 codes q [N, K] with one float32 scale per row [N]."""

    __slots__ = ("q", "scale")

    def __init__(self, q, scale):
        self.q, self.scale = q, scale


class Weights:
    """Weight views for kernels: float tensors as float32, quantized ones as
    (format code, d bits uint16, m bits uint16 or empty, qs) -- or, with expand="f32", expanded
    once at first use to float32 [N, K], with expand="int8" to RowsI8 (a quarter of that).
    Expanding through K.dequant_rows follows whatever layout the quantized parts have."""

    def __init__(self, edge, K=None, expand: str | None = None):
        if expand not in EXPAND:
            raise EdgeError(f"unknown weight expansion {expand!r}; supported: f32, int8 (or None: as stored)")
        self.edge, self.K, self.expand = edge, K, expand
        self._cache = {}

    def get(self, name: str):
        if name not in self._cache:
            dtype, t = self.edge.dtype(name), self.edge.tensor(name)
            if isinstance(t, dict):
                from .kernels import formats

                empty = np.zeros((0, 0), np.uint16)
                m = t["m"].view(np.uint16) if "m" in t else empty
                w = (formats.FORMATS[dtype], t["d"].view(np.uint16), m, t["qs"])
                self._cache[name] = self._expanded(w, *self.edge.shape(name)) if self.expand else w
            else:
                self._cache[name] = np.ascontiguousarray(t, dtype=np.float32)
        return self._cache[name]

    def _expanded(self, w, n: int, k: int):
        """Quantized w [n, k] -> float32 [n, k] or RowsI8, a tile of about 2**20 weights at a time."""
        fmt, d, m, qs = w
        step = max(1, (1 << 20) // k)
        rows = np.arange(n, dtype=np.int64)
        if self.expand == "f32":
            out = np.empty((n, k), np.float32)
            for r0 in range(0, n, step):
                self.K.dequant_rows(fmt, d, m, qs, rows[r0:r0 + step], out[r0:r0 + step])
            return out
        q, scale, tile = np.empty((n, k), np.int8), np.empty(n, np.float32), np.empty((min(step, n), k), np.float32)
        for r0 in range(0, n, step):
            r1 = min(n, r0 + step)
            self.K.dequant_rows(fmt, d, m, qs, rows[r0:r1], tile[:r1 - r0])
            self.K.quantize_rows_i8(tile[:r1 - r0], q[r0:r1], scale[r0:r1])
        return RowsI8(q, scale)


class _Step:
    """Bound callables for one set of dims (e.g. n, m): run() executes the op list once."""

    def __init__(self, interp: "Interpreter", dims: dict):
        prog = interp.program
        slot_of, cap = plan_buffers(prog, dims)
        arena = [np.empty(c, np.float32) for c in cap]
        self.inputs = {name: np.zeros(concrete(spec["shape"], dims), _DTYPES[spec["dtype"]])
                       for name, spec in prog["inputs"].items()}
        env = dict(self.inputs)
        for v, s in slot_of.items():
            shape = concrete(prog["values"][v], dims)
            env[v] = arena[s][: int(np.prod(shape))].reshape(shape)
        self.env = env
        self.mask = np.zeros((0, 0), np.bool_)
        self.act_scratch = {}  # (rows, K) -> [xq, xd, xs, value quantized in it last], see _bind_linear
        self.act_dtype = interp.act_dtype
        self.calls = [interp.bind(op, self) for op in prog["ops"]]
        self.outputs = [env[v] for v in prog["outputs"]]

    def run(self):
        for call in self.calls:
            call()


class Interpreter:
    def __init__(self, program: dict, edge, backend: str | None = None, weights: str | None = None,
                 store=None, activations: str = "int16"):
        """weights: None keeps quantized tensors as stored; "f32" or "int8" expands them (see Weights).
        store: an edgert.weightstore.WeightStore that reads the weights under a memory budget.
        activations: "int16" or "int8", how quantized linears quantize their input (ACTIVATIONS)."""
        if activations not in ACTIVATIONS:
            raise EdgeError(f"activations must be one of {', '.join(ACTIVATIONS)}, not {activations!r}")
        self.act_dtype = ACTIVATIONS[activations]
        validate(program, edge.header["tensors"], OPS)
        self.program = program
        self.K = kernel_registry.load(backend)
        self.store = store
        self.weights = store.weights(edge, self.K, weights) if store else Weights(edge, self.K, weights)
        self.cache: KVCache | None = None
        self._steps: dict = {}
        self.wide_kept = STEPS_KEPT  # of the kept steps, how many may output all rows (m > 1)

    def step(self, tokens, pos, cache: KVCache, rows: str = "last", mask=None) -> np.ndarray:
        """Run n = len(tokens) new tokens at positions pos; returns float32 [m, vocab]
        (a view into the arena: copy it before the next step). The KV entries of these tokens
        are written at cache.length.. and cache.length advances by n."""
        n = len(tokens)
        if cache.length + n > cache.capacity:
            raise EdgeError(f"context full: {cache.length} + {n} tokens exceed the context of {cache.capacity}")
        st = self._step_for({"n": n, "m": 1 if rows == "last" else n})
        st.inputs["tokens"][:] = tokens
        st.inputs["pos"][:] = pos
        st.mask = np.zeros((0, 0), np.bool_) if mask is None else np.ascontiguousarray(mask, np.bool_)
        self.cache = cache
        st.run()
        cache.length += n
        return st.outputs[0]

    def run(self, feeds: dict, dims: dict | None = None) -> list:
        """Run a program without KV cache: feeds {input name: array} (every declared input),
        dims the sizes of symbolic dimensions. Returns the outputs (views into the arena)."""
        st = self._step_for(dict(dims or {}))
        missing = set(st.inputs) - set(feeds)
        if missing:
            raise EdgeError(f"missing input(s): {', '.join(sorted(missing))}")
        for name, arr in feeds.items():
            if name not in st.inputs:
                raise EdgeError(f"unknown input {name!r}; the model takes: {', '.join(st.inputs)}")
            arr = np.asarray(arr)
            if arr.shape != st.inputs[name].shape:
                raise EdgeError(f"input {name!r} has shape {arr.shape}; expected {st.inputs[name].shape}")
            st.inputs[name][...] = arr
        st.run()
        return st.outputs

    def _step_for(self, dims: dict) -> "_Step":
        """The bound step for these dims: at most STEPS_KEPT kept, the oldest dropped first, and
        at most wide_kept of them with all rows out (their arenas hold [m, vocab] logits)."""
        key = tuple(sorted(dims.items()))
        st = self._steps.get(key)
        if st is None:
            if dims.get("m", 1) > 1:
                wide = [k for k in self._steps if dict(k).get("m", 1) > 1]
                for k in wide[:len(wide) - self.wide_kept + 1]:
                    self._drop(k)
            if len(self._steps) >= STEPS_KEPT:
                self._drop(next(iter(self._steps)))
            st = self._steps[key] = self.new_step(dims)
        return st

    def _drop(self, key) -> None:
        """Forget a kept step. Its bound calls refer back to it: breaking that cycle frees its
        arena now, not at some later pass of the cycle collector."""
        self._steps.pop(key).calls = []

    def new_step(self, dims: dict) -> "_Step":
        """A step for these dims with an arena of its own, not kept by the interpreter: its
        inputs (st.inputs), values (st.env) and bound op calls (st.calls, in program order)."""
        return _Step(self, dims)

    def bind(self, op: dict, st: _Step):
        """Resolve op to a zero-argument callable over the step's buffers."""
        if self.store is not None:
            return self.store.bind(self, op, st, OPS[op["op"]])
        return OPS[op["op"]](self, op, st)


def _bind_embed(it, op, st):
    w = it.weights.get(op["w"]["weight"])
    tokens, out = st.env[op["in"][0]], st.env[op["out"][0]]
    if isinstance(w, RowsI8):
        return lambda: np.multiply(w.q[tokens], w.scale[tokens, None], out=out)
    if isinstance(w, tuple):
        fmt, d, m, qs = w
        return lambda: it.K.dequant_rows(fmt, d, m, qs, tokens, out)
    return lambda: np.take(w, tokens.astype(np.intp), axis=0, out=out)  # intp: 32-bit under Pyodide


def _bind_rms_norm(it, op, st):
    w = it.weights.get(op["w"]["weight"])
    x, out, eps = st.env[op["in"][0]], st.env[op["out"][0]], float(op["attrs"]["eps"])
    return lambda: it.K.rms_norm(x, w, eps, out)


def _bind_linear(it, op, st):
    """out [rows, N] = x [rows, K] @ W.T (+ bias). Quantized W: the activation is quantized to
    int16 or int8 per block into a scratch shared by all linears of its shape (the next linear on the
    same input skips quantizing), then one integer-dot kernel serves decode (1 row) and
    prefill (many rows) alike."""
    K = it.K
    w = it.weights.get(op["w"]["weight"])
    bias = it.weights.get(op["w"]["bias"]) if "bias" in op["w"] else None
    src = op["in"][0]
    x, out = st.env[src], st.env[op["out"][0]]

    def add_bias():
        if bias is not None:
            np.add(out, bias, out=out)
    if isinstance(w, RowsI8):
        def run():
            K.matmul_rows_i8(x, w.q, w.scale, out)
            add_bias()
        return run
    if not isinstance(w, tuple):
        product = _float_product(x, w, out)

        def run():
            product()
            add_bias()
        return run
    fmt, d, m, qs = w
    xq, xd, xs, fresh = act_scratch(st, src, x)

    def run():
        if fresh:
            K.quantize_act(x, xq, xd, xs)
        K.qmatmul(fmt, xq, xd, xs, d, m, qs, out)
        add_bias()
    return run


def act_scratch(st, src: str, x):
    """(xq, xd, xs, fresh): the step's quantized-activation scratch for x's shape (shared by
    all linears of that shape), and whether x (value src) must be quantized into it. Ops run
    in bind order, so a linear right after another on the same input reuses its quantization."""
    rows, kdim = x.shape
    scratch = st.act_scratch.get((rows, kdim))
    if scratch is None:
        blocks = np.zeros((2, rows, kdim // 32), np.float32)
        scratch = st.act_scratch[rows, kdim] = [np.zeros((rows, kdim), st.act_dtype), blocks[0], blocks[1], None]
    fresh = scratch[3] != src
    scratch[3] = src
    return scratch[0], scratch[1], scratch[2], fresh


def _float_product(x, w, out):
    """out [rows, N] = x [rows, K] @ w [N, K].T: np.matmul, or under Pyodide (no BLAS) np.einsum,
    in its matrix-vector form for one row (measured there: 0.63 ms against 1.1 ms for
    the matrix-matrix form and 1.2 ms for matmul, 1536 x 576)."""
    if not _PYODIDE:
        return lambda: np.matmul(x, w.T, out=out)
    if x.shape[0] == 1:
        x0, o0 = x[0], out[0]
        return lambda: np.einsum("rk,k->r", w, x0, out=o0)
    return lambda: np.einsum("nk,rk->nr", x, w, out=out)


def _bind_rope(it, op, st):
    """Rotates the first `heads` heads of each row (default: all); other columns are copied."""
    a = op["attrs"]
    x, out = st.env[op["in"][0]], st.env[op["out"][0]]
    n, hd = x.shape[0], int(a["head_dim"])
    width = int(a.get("heads", x.shape[1] // hd)) * hd
    x3, o3 = x[:, :width].reshape(n, -1, hd), out[:, :width].reshape(n, -1, hd)
    theta, neox, pos = float(a["theta"]), bool(a["neox"]), st.inputs["pos"]
    if width == x.shape[1] or np.shares_memory(x, out):
        return lambda: it.K.rope(x3, pos, theta, neox, o3)

    def run():
        np.copyto(out[:, width:], x[:, width:])
        it.K.rope(x3, pos, theta, neox, o3)
    return run


def _split_heads(vals, attrs):
    """q, k, v views [n, heads, head_dim] from three values or one fused qkv value."""
    hd = int(attrs["head_dim"])
    if len(vals) == 3:
        return [v.reshape(v.shape[0], -1, hd) for v in vals]
    qkv = vals[0]
    n, nq, nkv = qkv.shape[0], int(attrs["n_head"]) * hd, int(attrs["n_kv_head"]) * hd
    return [qkv[:, a:b].reshape(n, -1, hd) for a, b in ((0, nq), (nq, nq + nkv), (nq + nkv, nq + 2 * nkv))]


def _bind_attention(it, op, st):
    """Stores the new tokens' K/V in the cache and attends over it (one kernel call)."""
    a = op["attrs"]
    layer = int(a["layer"])
    q, k, v = _split_heads([st.env[name] for name in op["in"]], a)
    out = st.env[op["out"][0]]
    o3 = out.reshape(out.shape[0], -1, int(a["head_dim"]))
    scale = float(a["scale"])

    def run():
        c = it.cache
        it.K.attention(q, k, v, c.k[layer], c.v[layer], c.length, st.mask, scale, o3)
    return run


def _bind_add(it, op, st):
    a, b = (st.env[name] for name in op["in"])
    out = st.env[op["out"][0]]
    return lambda: np.add(a, b, out=out)


def _bind_silu_mul(it, op, st):
    """silu(g) * u from two values, or from the halves of one fused gate/up value."""
    vals = [st.env[name] for name in op["in"]]
    out = st.env[op["out"][0]]
    g, u = vals if len(vals) == 2 else (vals[0][:, :out.shape[1]], vals[0][:, out.shape[1]:])
    return lambda: it.K.silu_mul(g, u, out)


def _bind_output_rows(it, op, st):
    """[n, d] -> [m, d]: the last row (m = 1) or all rows (m = n)."""
    x, out = st.env[op["in"][0]], st.env[op["out"][0]]
    start = x.shape[0] - out.shape[0]
    return lambda: np.copyto(out, x[start:])


OPS = {
    "embed": _bind_embed,
    "rms_norm": _bind_rms_norm,
    "linear": _bind_linear,
    "rope": _bind_rope,
    "attention": _bind_attention,
    "add": _bind_add,
    "silu_mul": _bind_silu_mul,
    "output_rows": _bind_output_rows,
}

from . import vision_ops  # noqa: E402,F401  (registers the CNN ops into OPS)
