"""NumPy quant kernels: activation quantization, quantized matvec, row dequantization.

The quantized activation is int16 per block of 32 in natural order, or int8 in pair order, the
layouts of the Numba kernels (edgert.kernels.jit.quant): blocks 2p and 2p + 1 stored as
[2p: 0-15, 2p+1: 0-15, 2p: 16-31, 2p+1: 16-31], a last odd block in natural order;
``pair_order(K)`` maps one to the other.

fp16 scales arrive as uint16 bit views; they are widened through a 65536-entry float32 table
built once at import (Pyodide converts float16 in software, so a gather is much cheaper
than ``.view(np.float16).astype(np.float32)`` per call).
"""
import functools
import sys

import numpy as np

from ..formats import Q4_0, Q4_1, Q8_0

_F16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
_CHUNK = 1 << 20  # weights per qmatmul step: bounds the float temporaries to a few MB
_PYODIDE = sys.platform == "emscripten"


@functools.lru_cache(maxsize=16)
def pair_order(K):
    """int64 [K]: natural element j of an activation row sits at pair-order position order[j]."""
    j = np.arange(K, dtype=np.int64)
    b, e = j // 32, j % 32
    full = (b | 1) < K // 32  # blocks of a complete pair
    return np.where(full, (b - (b & 1)) * 32 + (e >= 16) * 32 + (b & 1) * 16 + e % 16, j)


def quantize_act(x, xq, xd, xs):
    """x f32[n, K] -> xq [n, K], xd f32[n, B], xs f32[n, B]: per block of 32, with Q = 127 (xq int8,
    pair order) or 32767 (xq int16, natural order), xd = amax / Q, xq = rint(x * Q / amax),
    xs = xd * sum(xq)."""
    n, K = x.shape
    if xq.dtype not in (np.int8, np.int16):
        raise ValueError("quantize_act: xq must be int8 or int16")
    qmax = np.float32(np.iinfo(xq.dtype).max)
    xb = x.reshape(n, K // 32, 32)
    amax = np.abs(xb).max(axis=-1)
    inv = np.zeros_like(amax)
    np.divide(qmax, amax, out=inv, where=amax > 0)
    q = np.rint(xb * inv[..., None])
    if xq.dtype == np.int8:
        xq[:, pair_order(K)] = q.reshape(n, K)
    else:
        xq[...] = q.reshape(n, K)
    np.divide(amax, qmax, out=xd)
    np.multiply(xd, q.sum(axis=-1), out=xs)


def qmatmul(fmt, xq, xd, xs, d, m, qs, out):
    """out f32[n, N] = activation [n, K] @ W.T, W quantized [N, K] (d, m: uint16 fp16 bits
    [N, B], m (0, 0) unless q4_1), activation xq int8 [n, K] (pair order) or int16 (natural
    order) with xd, xs f32[n, B]; the
    Numba kernel's math up to float rounding. n == 1 (decode): per block the dot s of the
    unsigned codes with xq, in float32, then q4_0: d * (xd * s - 8 * xs); q4_1: d * xd * s +
    m * xs; q8_0: d * xd * s. n > 1: row tiles are dequantized and multiplied with the
    dequantized activation xq * xd (np.matmul with BLAS; np.einsum under Pyodide, which has none)."""
    if xq.dtype == np.int8:
        xq = xq[:, pair_order(xq.shape[1])]  # natural order
    if xq.shape[0] > 1:
        _qmatmul_tiles(fmt, xq, xd, d, m, qs, out)
        return
    xs, xd, out = xs[0], xd[0], out[0]
    N, nb = d.shape
    x = xq.reshape(nb, 32).astype(np.float32)
    # byte P = lo + 16 hi, so lo.x_lo + hi.x_hi = P.x_lo + hi.(x_hi - 16 x_lo): no mask pass.
    x_lo, x_hi = np.ascontiguousarray(x[:, :16]), x[:, 16:] - np.float32(16) * x[:, :16]
    step = max(1, _CHUNK // max(qs[0].size, 1))
    for r0 in range(0, N, step):
        r1 = min(N, r0 + step)
        q = qs[r0:r1]
        if fmt == Q8_0:
            s = np.einsum("rbj,bj->rb", q.astype(np.float32), x)
        else:
            s = np.einsum("rbj,bj->rb", q.astype(np.float32), x_lo)
            s += np.einsum("rbj,bj->rb", (q >> np.uint8(4)).astype(np.float32), x_hi)
        s *= xd
        if fmt == Q4_0:
            s -= np.float32(8) * xs
        np.einsum("rb,rb->r", _F16[d[r0:r1]], s, out=out[r0:r1])
        if fmt == Q4_1:
            out[r0:r1] += np.einsum("rb,b->r", _F16[m[r0:r1]], xs)


def _qmatmul_tiles(fmt, xq, xd, d, m, qs, out, tile=None):
    """qmatmul for n > 1 (xq in natural order): `tile` weight rows at a time (default about 2**20 weights, a 4 MB
    scratch) dequantized, then one float product with all n activations."""
    n, K = xq.shape
    N = d.shape[0]
    x = (xq.reshape(n, K // 32, 32) * xd[..., None]).reshape(n, K).astype(np.float32)
    tile = tile or max(1, _CHUNK // K)
    scratch = np.empty((min(tile, N), K), np.float32)
    rows = np.arange(N, dtype=np.int64)
    for r0 in range(0, N, tile):
        w = scratch[: min(tile, N - r0)]
        dequant_rows(fmt, d, m, qs, rows[r0: r0 + len(w)], w)
        if _PYODIDE:
            np.einsum("nk,tk->nt", x, w, out=out[:, r0: r0 + len(w)])
        else:
            np.matmul(x, w.T, out=out[:, r0: r0 + len(w)])


def dequant_rows(fmt, d, m, qs, rows, out):
    """out f32[r, K] = rows `rows` (int64 [r]) of the quantized matrix (d, m, qs [N, B, 16 or 32]
    as in qmatmul). Bit-exact with formats.dequantize."""
    r = len(rows)
    nb = d.shape[1]
    w = out.reshape(r, nb, 32)
    q = qs[rows]
    scale = _F16[d[rows]][..., None]
    if fmt == Q8_0:
        np.multiply(q, scale, out=w)
        return
    w[..., :16] = q & np.uint8(15)
    w[..., 16:] = q >> np.uint8(4)
    if fmt == Q4_0:
        w -= np.float32(8)
        w *= scale
    else:
        w *= scale
        w += _F16[m[rows]][..., None]
