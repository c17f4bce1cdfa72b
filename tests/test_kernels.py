"""Kernels, both backends (jit = Numba, ref = NumPy twins), against float64 references written
here (not with the code under test), on odd shapes."""
import importlib.util
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

from edgert import kernels
from edgert.kernels.formats import FORMATS

HAS_NUMBA = importlib.util.find_spec("numba") is not None
BACKENDS = ["ref", pytest.param("jit", marks=pytest.mark.skipif(not HAS_NUMBA, reason="numba not installed"))]
FMTS = list(FORMATS)


@pytest.fixture(params=BACKENDS)
def K(request):
    return kernels.load(request.param)


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def random_parts(rng, fmt, N, Kd):
    """Random quantized parts (scales fp16 of either sign, |d| in [0.004, 0.06], codes uniform)
    and their float64 dequantization, computed here from the format definition."""
    B = Kd // 32
    d = (rng.uniform(0.004, 0.06, (N, B)) * rng.choice([-1, 1], (N, B))).astype(np.float16)
    m = rng.uniform(-0.5, 0.0, (N, B)).astype(np.float16)
    if fmt == "q8_0":
        qs = rng.integers(-128, 128, (N, B, 32)).astype(np.int8)
        codes = qs.astype(np.float64)
    else:
        qs = rng.integers(0, 256, (N, B, 16)).astype(np.uint8)
        codes = np.concatenate([qs % 16, qs // 16], axis=-1).astype(np.float64)
    d64, m64 = d.astype(np.float64)[..., None], m.astype(np.float64)[..., None]
    w = {"q4_0": (codes - 8) * d64, "q4_1": codes * d64 + m64, "q8_0": codes * d64}[fmt]
    mbits = m.view(np.uint16) if fmt == "q4_1" else np.zeros((0, 0), np.uint16)
    return (FORMATS[fmt], d.view(np.uint16), mbits, qs), w.reshape(N, Kd)


# --- registry -------------------------------------------------------------------------------

def test_load_and_threads(monkeypatch):
    assert set(kernels.load("ref").__all__) == {
        "quantize_act", "qmatmul", "dequant_rows", "rms_norm", "rope", "attention", "silu_mul", "softmax",
        "quantize_rows_i8", "matmul_rows_i8", "sparse_ffn", "conv_gemm", "conv_gemm_dw", "gemm_dw_scratch",
        "depthwise_conv", "conv_direct", "dense", "squeeze_excite",
        "global_avg_pool"}
    monkeypatch.setenv("EDGERT_KERNELS", "ref")
    assert kernels.load().__name__ == "edgert.kernels.ref"
    with pytest.raises(ValueError, match="unknown kernel backend 'gpu'"):
        kernels.load("gpu")
    with pytest.raises(ValueError):
        kernels.set_threads(0)
    kernels.set_threads(1)
    if HAS_NUMBA:
        import numba

        assert kernels.load("jit").__all__ == kernels.load("ref").__all__
        assert numba.get_num_threads() == 1
        kernels.set_threads(64)
        assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
        kernels.set_threads(1)
        with kernels.threads(2):  # for one block, then back to what this thread had
            assert numba.get_num_threads() == min(2, numba.config.NUMBA_NUM_THREADS)
        assert numba.get_num_threads() == 1


def test_without_numba(monkeypatch):
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba now raises ImportError
    monkeypatch.delenv("EDGERT_KERNELS", raising=False)
    assert kernels.load().__name__ == "edgert.kernels.ref"
    with pytest.raises(ImportError, match="backend 'jit' needs numba"):
        kernels.load("jit")
    kernels.set_threads(2)  # no-op
    with kernels.threads(2):  # no-op
        pass


@pytest.mark.skipif(not HAS_NUMBA, reason="numba not installed: no OpenMP runtime to configure")
@pytest.mark.parametrize("first, preset, expect", [("cnn", None, "10000"), ("llm", None, "1000"), ("cnn", "7", "7")])
def test_spin_count_follows_the_first_model(tmp_path, first, preset, expect):
    """edgert.load sets GOMP_SPINCOUNT by its first model's kind before the OpenMP runtime
    loads (kernels.prefer_spin_count); the user's own setting wins, and a second model of the
    other kind changes nothing (libgomp has read it by then)."""
    from test_damaged_cnn import _convert
    from tiny_llm import make_tiny_llm

    paths = {"cnn": _convert(tmp_path, None), "llm": make_tiny_llm(str(tmp_path / "llm.edge"), seed=0)}
    order = [paths[first], paths["llm" if first == "cnn" else "cnn"]]
    code = ("import os, sys, edgert\n"
            "for p in sys.argv[1:]:\n"
            "    edgert.load(p)\n"
            "    print(os.environ.get('GOMP_SPINCOUNT'), 'edgert.kernels.jit' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "EDGERT_KERNELS")}
    if preset is not None:
        env["GOMP_SPINCOUNT"] = preset
    run = subprocess.run([sys.executable, "-c", code, *order], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [expect, "True"] * 2


# --- quantized products -----------------------------------------------------------------------

ACTS = [np.int16, np.int8]  # activation precisions: int16 natural order, int8 pair order


def natural_order(xq):
    """Quantized activation [n, K] in natural order: int16 is; int8 comes in the kernels' pair
    order (blocks 2p, 2p + 1 stored as [2p: 0-15, 2p+1: 0-15, 2p: 16-31, 2p+1: 16-31], a last
    odd block as is)."""
    if xq.dtype == np.int16:
        return xq
    n, K = xq.shape
    full = K // 64 * 64
    pairs = xq[:, :full].reshape(n, K // 64, 2, 2, 16)  # [pair, half (elements 0-15 / 16-31), block, 16]
    return np.concatenate([pairs.transpose(0, 1, 3, 2, 4).reshape(n, full), xq[:, full:]], axis=1)


def quantized_act(K, x, act=np.int8):
    """(xq, xd, xs) of x from K.quantize_act, xq of dtype act."""
    n, Kd = x.shape
    xq, xd, xs = np.empty((n, Kd), act), np.empty((n, Kd // 32), np.float32), np.empty((n, Kd // 32), np.float32)
    K.quantize_act(x, xq, xd, xs)
    return xq, xd, xs


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("n", [1, 3, 17])
@pytest.mark.parametrize("Kd", [32, 96, 576])
def test_quantize_act(K, n, Kd, act):
    x = _rng("qa", n, Kd).standard_normal((n, Kd)).astype(np.float32) * 3
    x[0, :32] = 0  # an all-zero block
    B = Kd // 32
    qmax = np.iinfo(act).max
    xq, xd, xs = quantized_act(K, x, act)
    xn = natural_order(xq).astype(np.float64)
    x64 = x.astype(np.float64).reshape(n, B, 32)
    amax = np.abs(x64).max(axis=-1)
    np.testing.assert_allclose(xd, amax / qmax, rtol=1e-6)
    scale = np.where(amax > 0, amax / qmax, 1)[..., None]
    err = np.abs(xn.reshape(n, B, 32) - x64 / scale)
    assert err.max() <= 0.5 + qmax * 1e-6  # round to nearest, up to float32 rounding of x / xd
    np.testing.assert_allclose(xs, amax / qmax * xn.reshape(n, B, 32).sum(axis=-1), rtol=1e-6, atol=1e-30)


def _qmatmul_routes():
    """(name, qmatmul) for the NumPy twin and every Numba instruction route this host runs."""
    routes = [("ref", kernels.load("ref").qmatmul)]
    if HAS_NUMBA:
        from edgert.kernels.jit import quant

        routes.append(("jit-portable", quant.QMATMUL[quant.PORTABLE]))
        if quant.isa() == quant.X86_AVX2:
            routes.append(("jit-avx2", quant.QMATMUL[quant.X86_AVX2]))
    return routes


def test_isa_switch():
    """EDGERT_ISA=portable forces the generic route at import (the one ARM takes)."""
    pytest.importorskip("numba", reason="the instruction routes are Numba's")
    code = "from edgert.kernels import jit; print(jit.ISA, jit.qmatmul is jit.QMATMUL[0])"
    env = dict(os.environ, EDGERT_ISA="portable")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "True"]


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("N", [1, 7, 130])
@pytest.mark.parametrize("Kd", [32, 96, 480, 576, 1024])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("route", [r for r, _ in _qmatmul_routes()])
@pytest.mark.parametrize("act", ACTS)
def test_qmatmul(fmt, N, Kd, n, route, act):
    """Every route (NumPy twin, Numba portable and AVX2) on 1 token (decode), whole tiles of 4
    tokens and a remainder; 1, 3, 15, 18, 32 blocks (groups of 8, pairs, an odd last block)."""
    K = kernels.load("ref")
    qmatmul = dict(_qmatmul_routes())[route]
    rng = _rng("mm", fmt, N, Kd, n)
    (code, d, m, qs), w = random_parts(rng, fmt, N, Kd)
    x = rng.standard_normal((n, Kd)).astype(np.float32)
    B = Kd // 32
    xq, xd, xs = quantized_act(K, x, act)
    out = np.full((n, N), np.nan, np.float32)
    qmatmul(code, xq, xd, xs, d, m, qs, out)
    # Against the dequantized activation xq * xd: only float32 rounding (relative to sum |w x|).
    xa = (natural_order(xq).reshape(n, B, 32) * xd.astype(np.float64)[..., None]).reshape(n, Kd)
    mag = np.abs(xa) @ np.abs(w).T
    assert np.all(np.abs(out - xa @ w.T) <= 1e-5 * mag + 1e-30)
    # Against the float activation: rounding moves each element by at most xd / 2.
    bound = np.repeat(xd.astype(np.float64) / 2, 32, axis=1) @ np.abs(w).T
    assert np.all(np.abs(out - x.astype(np.float64) @ w.T) <= bound * (1 + 1e-4) + 1e-5 * mag)


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("Kd", [96, 576])
@pytest.mark.parametrize("act", ACTS)
def test_qmatmul_rows_alone(fmt, Kd, act):
    """Numba routes: each token's output is the same bit for bit alone or in a batch of any size
    (token trees rely on it), and the portable route equals the AVX2 one (same integer sums,
    same float steps)."""
    routes = [f for r, f in _qmatmul_routes() if r != "ref"]
    if not routes:
        pytest.skip("the instruction routes are Numba's")
    rng = _rng("alone", fmt, Kd)
    (code, d, m, qs), _ = random_parts(rng, fmt, 37, Kd)
    xq, xd, xs = quantized_act(kernels.load("ref"), rng.standard_normal((7, Kd)).astype(np.float32), act)
    outs = []
    for qmatmul in routes:
        alone = np.empty((7, 37), np.float32)
        for t in range(7):
            qmatmul(code, xq[t:t + 1], xd[t:t + 1], xs[t:t + 1], d, m, qs, alone[t:t + 1])
        for n in (2, 3, 4, 7):
            batch = np.empty((n, 37), np.float32)
            qmatmul(code, xq[:n], xd[:n], xs[:n], d, m, qs, batch)
            np.testing.assert_array_equal(batch, alone[:n])
        outs.append(alone)
    for other in outs[1:]:
        np.testing.assert_array_equal(other, outs[0])


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("Kd", [32, 96, 576])
def test_dequant_rows(K, fmt, Kd):
    rng = _rng("dq", fmt, Kd)
    (code, d, m, qs), w = random_parts(rng, fmt, 130, Kd)
    rows = np.array([0, 129, 5, 5, 77], np.int64)
    out = np.empty((len(rows), Kd), np.float32)
    K.dequant_rows(code, d, m, qs, rows, out)
    np.testing.assert_array_equal(out, w[rows].astype(np.float32))  # exact: codes * fp16 (+ fp16)
    with pytest.raises(IndexError):
        K.dequant_rows(code, d, m, qs, np.array([130], np.int64), out[:1])


def test_fp16_scales(K):
    """Every finite fp16 scale (normal, subnormal, zero, negative) widens exactly."""
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    bits = bits[(bits & 0x7C00) != 0x7C00].reshape(1, -1)  # drop inf and nan
    qs = np.ones((1, bits.shape[1], 32), np.int8)
    out = np.empty((1, bits.shape[1] * 32), np.float32)
    K.dequant_rows(FORMATS["q8_0"], bits, np.zeros((0, 0), np.uint16), qs, np.zeros(1, np.int64), out)
    np.testing.assert_array_equal(out[0, ::32], bits[0].view(np.float16).astype(np.float32))


# --- norms, rope, activations -------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 3, 17])
@pytest.mark.parametrize("inplace", [False, True])
def test_rms_norm(K, n, inplace):
    rng = _rng("rms", n)
    x = rng.standard_normal((n, 576)).astype(np.float32) * 4
    w = rng.standard_normal(576).astype(np.float32)
    x64 = x.astype(np.float64)
    want = x64 / np.sqrt((x64**2).mean(axis=1, keepdims=True) + 1e-5) * w
    out = x if inplace else np.empty_like(x)
    K.rms_norm(x, w, 1e-5, out)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [1, 3, 17])
@pytest.mark.parametrize("D", [64, 32])
@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("inplace", [False, True])
def test_rope(K, n, D, neox, inplace):
    rng = _rng("rope", n, D, neox)
    x = rng.standard_normal((n, 3, D)).astype(np.float32)
    pos = rng.integers(0, 5000, n).astype(np.int64)
    theta = 10000.0 if neox else 100000.0
    # Complex rotation: pair (a, b) is the number a + ib times exp(i * pos * theta**(-2i/D)).
    x64 = x.astype(np.float64)
    z = x64[..., : D // 2] + 1j * x64[..., D // 2 :] if neox else x64[..., 0::2] + 1j * x64[..., 1::2]
    z = z * np.exp(1j * pos[:, None, None] * theta ** (-np.arange(0, D, 2) / D))
    want = np.empty_like(x64)
    if neox:
        want[..., : D // 2], want[..., D // 2 :] = z.real, z.imag
    else:
        want[..., 0::2], want[..., 1::2] = z.real, z.imag
    out = x if inplace else np.empty_like(x)
    K.rope(x, pos, theta, neox, out)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("n", [1, 3, 17])
@pytest.mark.parametrize("inplace", [False, True])
def test_silu_mul(K, n, inplace):
    rng = _rng("silu", n)
    g = rng.uniform(-40, 40, (n, 200)).astype(np.float32)
    u = rng.standard_normal((n, 200)).astype(np.float32)
    g64 = g.astype(np.float64)
    want = g64 / (1 + np.exp(-g64)) * u
    out = g if inplace else np.empty_like(g)
    K.silu_mul(g, u, out)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-30)


@pytest.mark.parametrize("n", [1, 3, 17])
@pytest.mark.parametrize("inplace", [False, True])
def test_softmax(K, n, inplace):
    x = (_rng("sm", n).standard_normal((n, 1000)) * 10 + 500).astype(np.float32)  # exp(x) overflows
    e = np.exp(x.astype(np.float64) - x.max(axis=1, keepdims=True))
    want = e / e.sum(axis=1, keepdims=True)
    out = x if inplace else np.empty_like(x)
    K.softmax(x, out)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-12)


# --- attention ----------------------------------------------------------------------------------

def tree_mask(rng, n):
    """Ancestor-or-self mask of a random token tree (parent[j] < j): mask[i, j] iff j is on the
    path from the root to i."""
    parent = [-1] + [int(rng.integers(0, j)) for j in range(1, n)]
    mask = np.zeros((n, n), np.bool_)
    for i in range(n):
        j = i
        while j >= 0:
            mask[i, j] = True
            j = parent[j]
    return mask


def attention64(q, k, v, n_past, visible_new, scale):
    n, H, D = q.shape
    group = H // k.shape[0]
    out = np.zeros((n, H, D))
    for i in range(n):
        cols = list(range(n_past)) + [n_past + j for j in range(n) if visible_new[i, j]]
        for h in range(H):
            s = k[h // group, cols].astype(np.float64) @ q[i, h].astype(np.float64) * scale
            p = np.exp(s - s.max())
            out[i, h] = p @ v[h // group, cols].astype(np.float64) / p.sum()
    return out


@pytest.mark.parametrize("n", [1, 3, 17])
@pytest.mark.parametrize("heads", [(9, 3), (14, 2), (4, 4)])
@pytest.mark.parametrize("D", [64, 32])
@pytest.mark.parametrize("n_past", [0, 5])
@pytest.mark.parametrize("causal", [True, False])
def test_attention(K, n, heads, D, n_past, causal):
    H, Hkv = heads
    rng = _rng("att", n, H, D, n_past, causal)
    T = n_past + n + 4
    qkv = rng.standard_normal((n, (H + 2 * Hkv) * D)).astype(np.float32)  # one fused row per token
    q = qkv[:, : H * D].reshape(n, H, D)
    k = qkv[:, H * D : (H + Hkv) * D].reshape(n, Hkv, D)
    v = qkv[:, (H + Hkv) * D :].reshape(n, Hkv, D)
    k_cache = rng.standard_normal((Hkv, T, D)).astype(np.float32)
    v_cache = rng.standard_normal((Hkv, T, D)).astype(np.float32)
    k_cache[:, n_past:], v_cache[:, n_past:] = np.nan, np.nan  # new rows written by the kernel; beyond unread
    mask = np.zeros((0, 0), np.bool_) if causal else tree_mask(rng, n)
    visible = np.tril(np.ones((n, n), np.bool_)) if causal else mask
    scale = 1 / np.sqrt(D)
    out = np.full((n, H, D), np.nan, np.float32)
    K.attention(q, k, v, k_cache, v_cache, n_past, mask, scale, out)
    np.testing.assert_array_equal(k_cache[:, n_past : n_past + n], k.transpose(1, 0, 2))
    np.testing.assert_array_equal(v_cache[:, n_past : n_past + n], v.transpose(1, 0, 2))
    assert np.isnan(k_cache[:, n_past + n :]).all() and np.isnan(v_cache[:, n_past + n :]).all()
    np.testing.assert_allclose(out, attention64(q, k_cache, v_cache, n_past, visible, scale), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n_past", [5, 13, 31])
def test_attention_tree_node_equals_its_path(K, n_past):
    """A token-tree node's output is bit for bit that of its path decoded one token at a time
    (int8 activations turn any 1-ulp difference into a different code downstream). Numba only:
    the NumPy twin's vectorized sums are not exact in this sense."""
    if K.__name__.endswith(".ref"):
        pytest.skip("bit-exact tree verification is a property of the Numba kernels")
    rng = _rng("tree", n_past)
    H, Hkv, D, n = 9, 3, 64, 12
    q, k, v = (rng.standard_normal((n, h, D)).astype(np.float32) for h in (H, Hkv, Hkv))
    caches = rng.standard_normal((2, Hkv, n_past + n, D)).astype(np.float32)
    mask = tree_mask(rng, n)
    tree = np.empty((n, H, D), np.float32)
    k_cache, v_cache = caches.copy()
    K.attention(q, k, v, k_cache, v_cache, n_past, mask, 0.125, tree)
    path = [int(j) for j in np.flatnonzero(mask[n - 1])]  # the last node's ancestors, root first
    k_cache, v_cache = caches.copy()
    for step, j in enumerate(path):
        one = np.empty((1, H, D), np.float32)
        K.attention(q[j:j + 1], k[j:j + 1], v[j:j + 1], k_cache, v_cache, n_past + step, np.zeros((0, 0), np.bool_),
                    0.125, one)
        np.testing.assert_array_equal(one[0], tree[j])


def test_silu_mul_rows_alone(K):
    """Each row of a batch exactly as alone (the fused gate/up value's strided halves)."""
    gu = (_rng("silu-rows").standard_normal((6, 2 * 1536)) * 3).astype(np.float32)
    batch = np.empty((6, 1536), np.float32)
    K.silu_mul(gu[:, :1536], gu[:, 1536:], batch)
    for i in range(6):
        one = np.empty((1, 1536), np.float32)
        K.silu_mul(gu[i:i + 1, :1536], gu[i:i + 1, 1536:], one)
        np.testing.assert_array_equal(one[0], batch[i])


# --- real weights ---------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("act", ACTS)
def test_real_smollm2_weights(K, smollm2_gguf, act):
    """qmatmul and dequant_rows on SmolLM2's Q4_1 and Q8_0 tensors against gguf's dequantizer."""
    gguf = pytest.importorskip("gguf")
    from edgert.kernels.formats import from_gguf_blocks

    names = {gguf.GGMLQuantizationType.Q4_1: "q4_1", gguf.GGMLQuantizationType.Q8_0: "q8_0"}
    wanted = {"blk.0.ffn_gate.weight", "blk.0.ffn_down.weight", "token_embd.weight"}
    tensors = [t for t in gguf.GGUFReader(smollm2_gguf).tensors if t.name in wanted]
    assert {names[t.tensor_type] for t in tensors} == {"q4_1", "q8_0"}
    rng = _rng("real")
    for t in tensors:
        Kd = int(t.shape[0])  # GGUF lists dims innermost first
        raw = np.asarray(t.data[:4096])  # at most 4096 rows
        N = len(raw)
        fmt = names[t.tensor_type]
        w = gguf.quants.dequantize(raw, t.tensor_type).astype(np.float64)
        p = from_gguf_blocks(raw, fmt, N, Kd)
        m = p["m"].view(np.uint16) if "m" in p else np.zeros((0, 0), np.uint16)
        args = (FORMATS[fmt], p["d"].view(np.uint16), m, p["qs"])
        rows = rng.integers(0, N, 9).astype(np.int64)
        out = np.empty((9, Kd), np.float32)
        K.dequant_rows(*args, rows, out)
        np.testing.assert_array_equal(out, w[rows].astype(np.float32), err_msg=t.name)
        x = rng.standard_normal((1, Kd)).astype(np.float32)
        B = Kd // 32
        xq, xd, xs = quantized_act(K, x, act)
        y = np.empty(N, np.float32)
        K.qmatmul(args[0], xq, xd, xs, *args[1:], y[None])
        xa = (natural_order(xq)[0].reshape(B, 32) * xd[0].astype(np.float64)[:, None]).reshape(Kd)
        assert np.all(np.abs(y - w @ xa) <= 1e-5 * (np.abs(w) @ np.abs(xa))), t.name
