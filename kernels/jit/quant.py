"""Numba quant kernels: activation quantization, quantized matvec, row dequantization.

fp16 scales arrive as uint16 bit views (Numba has no float16). ``_f16`` widens them with bit
arithmetic: sign and the low 15 bits are moved to float32 positions (exponent field e and
10-bit mantissa land as float32 exponent e, float32 subnormal when e == 0), then one multiply
by 2**112 rebiases the exponent (127 - 15). Exact for every finite half; inf/nan scales are
not supported.

The per-block integer dot product is an ``intrinsic`` emitting generic LLVM vector IR
(zext/sext to i32 lanes, ``mul``, ``llvm.vector.reduce.add``), which LLVM lowers to the
target's integer dot instructions (x86: ``vpmaddwd`` with AVX2, ``vpdpbusd`` with AVX-512
VNNI), so there is no target-specific path to keep in step. It lives in this file because
``cache=True`` only tracks changes to the file of the cached function.
"""
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..formats import Q4_0, Q4_1, Q8_0

_I8, _I32 = ir.IntType(8), ir.IntType(32)


@njit(inline="always")
def _f16(h):
    """uint16 fp16 bits -> float32 (see the module docstring)."""
    h = np.uint32(h)
    bits = np.uint32(((h & np.uint32(0x8000)) << np.uint32(16)) | ((h & np.uint32(0x7FFF)) << np.uint32(13)))
    return bits.view(np.float32) * np.float32(2.0**112)


def _load(context, builder, arrty, arr, off, n, bits=8):
    """<n x i`bits`> unaligned load at element `off` of a C-contiguous integer array."""
    data = context.make_array(arrty)(context, builder, arr).data
    ptr = builder.bitcast(builder.gep(data, [off]), ir.VectorType(ir.IntType(bits), n).as_pointer())
    return builder.load(ptr, align=1)


@intrinsic
def _block_dot(typingctx, qs, qoff, xq, xoff):
    """int32 sum over one block of 32: weights at qs[qoff:] (uint8: 16 bytes of nibbles,
    low = element j, high = element j + 16, unsigned 0..15; int8: 32 values) times the
    int8 or int16 activation xq[xoff:xoff + 32]. Both arrays C-contiguous, indices flat.
    No overflow: |sum| <= 32 * 128 * 32767 < 2**31."""
    ok = (isinstance(qs, types.Array) and qs.layout == "C" and qs.dtype in (types.uint8, types.int8)
          and isinstance(xq, types.Array) and xq.layout == "C" and xq.dtype in (types.int8, types.int16))
    if not ok:
        return None
    nibbles = qs.dtype == types.uint8
    xbits = xq.dtype.bitwidth

    def codegen(context, builder, sig, args):
        v32 = ir.VectorType(_I32, 32)
        y = builder.sext(_load(context, builder, sig.args[2], args[2], args[3], 32, xbits), v32)
        if nibbles:
            q = _load(context, builder, sig.args[0], args[0], args[1], 16)
            lo = builder.and_(q, ir.Constant(q.type, [15] * 16))
            hi = builder.lshr(q, ir.Constant(q.type, [4] * 16))
            q = builder.zext(builder.shuffle_vector(lo, hi, ir.Constant(v32, list(range(32)))), v32)
        else:
            q = builder.sext(_load(context, builder, sig.args[0], args[0], args[1], 32), v32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I32, [v32]),
                                            "llvm.vector.reduce.add.v32i32")
        return builder.call(fn, [builder.mul(q, y)])

    return types.int32(qs, qoff, xq, xoff), codegen


@njit(cache=True, nogil=True, fastmath=True)
def quantize_act(x, xq, xd, xs):
    """x f32[n, K] -> xq i8 or i16 [n, K], xd f32[n, B], xs f32[n, B], per block of 32:
    with Q = 127 (int8) or 32767 (int16), xd = amax / Q, xq = rint(x * Q / amax),
    xs = xd * sum(xq)."""
    n, K = x.shape
    qmax = np.float32(np.iinfo(xq.dtype).max)
    for i in range(n):
        for b in range(K // 32):
            amax = np.float32(0)
            for j in range(b * 32, b * 32 + 32):
                amax = max(amax, abs(x[i, j]))
            inv = qmax / amax if amax > 0 else np.float32(0)
            s = np.int32(0)
            for j in range(b * 32, b * 32 + 32):
                q = np.int32(np.rint(x[i, j] * inv))
                xq[i, j] = q
                s += q
            xd[i, b] = amax / qmax
            xs[i, b] = xd[i, b] * np.float32(s)


@njit(cache=True, nogil=True, fastmath=True, parallel=True)
def qmatmul(fmt, xq, xd, xs, d, m, qs, out):
    """out f32[n, N] = activation [n, K] @ W.T, W quantized [N, K] in format `fmt` (d, m:
    uint16 fp16 bits [N, B], m (0, 0) unless q4_1; qs C-contiguous), activation xq i8 or i16
    [n, K] (C-contiguous) with xd, xs f32[n, B] from quantize_act. Per block: s = int32 dot of
    the unsigned weight codes with xq, then q4_0: d * (xd * s - 8 * xs); q4_1: d * xd * s +
    m * xs; q8_0: d * xd * s. Decode is n = 1; for n > 1 each weight row is read from memory
    once and stays in L1 while every token's activation passes over it."""
    N, nb = d.shape
    n, K = xq.shape
    if qs.size != N * nb * (32 if fmt == Q8_0 else 16) or K != nb * 32 or out.shape != (n, N):
        raise ValueError("qmatmul: qs, xq or out shape does not match d and fmt")
    stride = 32 if fmt == Q8_0 else 16
    for r in prange(N):
        for t in range(n):
            acc = np.float32(0)
            for b in range(nb):
                s = xd[t, b] * np.float32(_block_dot(qs, (r * nb + b) * stride, xq, t * K + b * 32))
                acc += _f16(d[r, b]) * (s - np.float32(8) * xs[t, b] if fmt == Q4_0 else s)
            if fmt == Q4_1:  # a loop of its own: folding it into the one above slows both
                for b in range(nb):
                    acc += _f16(m[r, b]) * xs[t, b]
            out[t, r] = acc


@njit(cache=True, nogil=True, fastmath=True, parallel=True)
def dequant_rows(fmt, d, m, qs, rows, out):
    """out f32[r, K] = rows `rows` (int64 [r]) of the quantized matrix (d, m, qs [N, B, 16 or 32]
    as in qmatmul). Bit-exact with formats.dequantize."""
    nb, lanes = d.shape[1], qs.shape[2]
    if lanes != (32 if fmt == Q8_0 else 16):
        raise ValueError("dequant_rows: qs shape does not match fmt")
    for i in range(rows.size):
        if rows[i] < 0 or rows[i] >= d.shape[0]:
            raise IndexError("dequant_rows: row index out of range")
    for i in prange(rows.size):
        r = rows[i]
        for b in range(nb):
            scale = _f16(d[r, b])
            o = b * 32
            if fmt == Q8_0:
                for j in range(lanes):
                    out[i, o + j] = np.float32(qs[r, b, j]) * scale
            else:
                base = _f16(m[r, b]) if fmt == Q4_1 else np.float32(-8) * scale
                for j in range(lanes):
                    q = qs[r, b, j]
                    out[i, o + j] = np.float32(q & np.uint8(15)) * scale + base
                    out[i, o + lanes + j] = np.float32(q >> np.uint8(4)) * scale + base
