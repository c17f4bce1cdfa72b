"""Numba quant kernels: activation quantization, quantized matvec, row dequantization.

fp16 scales arrive as uint16 bit views (Numba has no float16). ``_f16`` widens them with bit
arithmetic: sign and the low 15 bits are moved to float32 positions (exponent field e and
10-bit mantissa land as float32 exponent e, float32 subnormal when e == 0), then one multiply
by 2**112 rebiases the exponent (127 - 15). Exact for every finite half; inf/nan scales are
not supported.

The quantized product's inner loop is an ``intrinsic`` (``_dot_tile``) emitting LLVM IR for
a tile of rows x tokens: per block of 32, weight codes widened to int16 lanes, multiplied
and pair-summed into 8 int32 lanes (x86 ``vpmaddwd`` through ``llvm.x86.avx2.pmadd.wd``, or
generic IR -- sext, mul, add of even and odd lanes -- on the portable route), converted to
float and accumulated with the block's scale, 8 lanes wide; one horizontal sum per output.
The route is picked at import by ``isa()`` (EDGERT_ISA=portable forces the generic one, so
the ARM route is tested on x86 too); QMATMUL holds both. The intrinsic lives in this file
because ``cache=True`` only tracks changes to the file of the cached function.
"""
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..formats import Q4_1, Q8_0

_I8, _I16, _I32, _F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.FloatType()
PORTABLE, X86_AVX2 = 0, 1  # instruction routes of the block dot product (see isa())
N_ACC = 2  # accumulators per token in _dot_tile


def isa() -> int:
    """X86_AVX2 when Numba compiles for a host with AVX2, else PORTABLE (generic vector IR that
    LLVM lowers for any target, e.g. ARM NEON). EDGERT_ISA=portable forces the portable route."""
    import os

    import llvmlite.binding as llvm
    import numba

    if os.environ.get("EDGERT_ISA", "").lower() == "portable":
        return PORTABLE
    host = numba.config.CPU_NAME in (None, "host") and not numba.config.CPU_FEATURES
    return X86_AVX2 if host and llvm.get_host_cpu_features().get("avx2", False) else PORTABLE


@njit(inline="always")
def _f16(h):
    """uint16 fp16 bits -> float32 (see the module docstring)."""
    h = np.uint32(h)
    bits = np.uint32(((h & np.uint32(0x8000)) << np.uint32(16)) | ((h & np.uint32(0x7FFF)) << np.uint32(13)))
    return bits.view(np.float32) * np.float32(2.0**112)


def _ptr(context, builder, arrty, arr):
    return context.make_array(arrty)(context, builder, arr).data


def _vload(builder, base, off, n, elem):
    """<n x elem> unaligned load at element `off` of the pointer `base`."""
    ptr = builder.bitcast(builder.gep(base, [off]), ir.VectorType(elem, n).as_pointer())
    return builder.load(ptr, align=1)


def _f16_ir(builder, h):
    """i16 (or <n x i16>) fp16 bits -> float (<n x float>), the bit arithmetic of _f16 (no F16C
    needed)."""
    lanes = getattr(h.type, "count", None)

    def ty(elem):
        return ir.VectorType(elem, lanes) if lanes else elem

    def const(elem, v):
        return ir.Constant(ty(elem), [v] * lanes if lanes else v)
    h = builder.zext(h, ty(_I32))
    sign = builder.shl(builder.and_(h, const(_I32, 0x8000)), const(_I32, 16))
    rest = builder.shl(builder.and_(h, const(_I32, 0x7FFF)), const(_I32, 13))
    return builder.fmul(builder.bitcast(builder.or_(sign, rest), ty(_F32)), const(_F32, 2.0**112))


def _pmadd(builder, a, b, route):
    """<16 x i16> a, b -> <8 x i32> sums of adjacent products (x86 vpmaddwd)."""
    v8 = ir.VectorType(_I32, 8)
    if route == X86_AVX2:
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v8, [a.type, b.type]),
                                            "llvm.x86.avx2.pmadd.wd")
        return builder.call(fn, [a, b])
    v16 = ir.VectorType(_I32, 16)
    p = builder.mul(builder.sext(a, v16), builder.sext(b, v16))
    even = builder.shuffle_vector(p, p, ir.Constant(v8, list(range(0, 16, 2))))
    odd = builder.shuffle_vector(p, p, ir.Constant(v8, list(range(1, 16, 2))))
    return builder.add(even, odd)


def _hsum8(builder, v):
    """<8 x float> -> float, pairwise."""
    for width in (4, 2, 1):
        mask = ir.VectorType(_I32, width)
        lo = builder.shuffle_vector(v, v, ir.Constant(mask, list(range(width))))
        hi = builder.shuffle_vector(v, v, ir.Constant(mask, list(range(width, 2 * width))))
        v = builder.fadd(lo, hi)
    return builder.extract_element(v, ir.Constant(_I32, 0))


@intrinsic(prefer_literal=True)
def _dot_tile(typingctx, T, route, qs, d, xq, xd, out, r, t0):
    """out[t0 + j, r] = sum over blocks b of d[r, b] * xd[t0 + j, b] * (integer dot of weight
    row r's block b codes with xq[t0 + j, 32 b : 32 b + 32]), for j < T (a literal int). Weight codes: qs uint8 [N, B, 16] nibbles (low = element j, high = j + 16,
    unsigned 0..15) or int8 [N, B, 32]; d uint16 fp16 bits [N, B]; xq int8/int16 [n, K];
    xd f32 [n, B]; out f32 [n, N]; all C-contiguous. Each weight block is unpacked once per
    call and used for all T tokens; per block the 8 int32 lanes of the dot (vpmaddwd) are
    scaled in float and accumulated without a horizontal sum, which happens once at the end.
    route: PORTABLE or X86_AVX2 (literal). Measured here: tiles of several rows per call ran
    up to 3x slower for decode and no faster for prefill than one row by 4 tokens."""
    lits = (T, route)
    if not all(isinstance(a, types.IntegerLiteral) for a in lits):
        return None
    ok = (all(isinstance(a, types.Array) and a.layout == "C" for a in (qs, d, xq, xd, out))
          and qs.dtype in (types.uint8, types.int8) and d.dtype == types.uint16
          and xq.dtype in (types.int8, types.int16) and xd.dtype == types.float32 and out.dtype == types.float32)
    if not ok:
        return None
    nt, rt = (a.literal_value for a in lits)
    nibbles = qs.dtype == types.uint8

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        v16 = ir.VectorType(_I16, 16)
        f8 = ir.VectorType(_F32, 8)
        qs_p, d_p, xq_p, xd_p, out_p = (_ptr(context, builder, sig.args[k], args[k]) for k in range(2, 7))
        d_arr = context.make_array(sig.args[3])(context, builder, args[3])
        xq_arr = context.make_array(sig.args[4])(context, builder, args[4])
        out_arr = context.make_array(sig.args[6])(context, builder, args[6])
        nb = cgutils.unpack_tuple(builder, d_arr.shape, 2)[1]
        kdim = cgutils.unpack_tuple(builder, xq_arr.shape, 2)[1]
        ncols = cgutils.unpack_tuple(builder, out_arr.shape, 2)[1]
        r, t0 = (builder.sext(a, i64) if a.type.width < 64 else a for a in args[7:9])
        toks = [builder.add(t0, ir.Constant(i64, j)) for j in range(nt)]
        stride = 16 if nibbles else 32
        zero = ir.Constant(f8, [0.0] * 8)
        # independent accumulators per token (blocks alternate between them): one chain of
        # dependent fmas would wait out the fma latency on every block. The same number for
        # every T keeps each token's sums in one order, so a token's output does not depend
        # on how many tokens share the call (verifying a token tree = decoding its paths).
        n_acc = N_ACC
        accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(n_acc)] for _ in range(nt)]
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f8, [f8, f8, f8]), "llvm.fmuladd.v8f32")
        lanes = ir.VectorType(_I32, 8)

        def splat(v, lane):
            return builder.shuffle_vector(v, v, ir.Constant(lanes, [lane] * 8))

        def block(b, scales, k=0):
            """Accumulate block b of row r for every token into accumulator k; scales[j]:
            <8 x float> all equal to d[r, b] * xd[t0 + j, b]."""
            blk = builder.add(builder.mul(r, nb), b)
            off = builder.mul(blk, ir.Constant(i64, stride))
            if nibbles:
                q = _vload(builder, qs_p, off, 16, _I8)
                lo = builder.zext(builder.and_(q, ir.Constant(q.type, [15] * 16)), v16)
                hi = builder.zext(builder.lshr(q, ir.Constant(q.type, [4] * 16)), v16)
            else:
                lo = builder.sext(_vload(builder, qs_p, off, 16, _I8), v16)
                hi = builder.sext(_vload(builder, qs_p, builder.add(off, ir.Constant(i64, 16)), 16, _I8), v16)
            for t, acc, scale in zip(toks, (a[k % n_acc] for a in accs), scales):
                xoff = builder.add(builder.mul(t, kdim), builder.mul(b, ir.Constant(i64, 32)))
                x_lo = builder.sext(_vload(builder, xq_p, xoff, 16, xq_p.type.pointee), v16)
                x_hi = builder.sext(_vload(builder, xq_p, builder.add(xoff, ir.Constant(i64, 16)), 16,
                                           xq_p.type.pointee), v16)
                s = builder.add(_pmadd(builder, lo, x_lo, rt), _pmadd(builder, hi, x_hi, rt))
                builder.store(builder.call(fma, [builder.sitofp(s, f8), scale, builder.load(acc)]), acc)

        # blocks in groups of 8: their 8 scales are widened and multiplied as one vector
        groups = builder.udiv(nb, ir.Constant(i64, 8))
        with cgutils.for_range(builder, groups) as loop:
            b0 = builder.mul(loop.index, ir.Constant(i64, 8))
            dv = _f16_ir(builder, _vload(builder, d_p, builder.add(builder.mul(r, nb), b0), 8, _I16))
            sc = [builder.fmul(dv, _vload(builder, xd_p, builder.add(builder.mul(t, nb), b0), 8, _F32))
                  for t in toks]
            for k in range(8):
                block(builder.add(b0, ir.Constant(i64, k)), [splat(v, k) for v in sc], k)
        with cgutils.for_range_slice(builder, builder.mul(groups, ir.Constant(i64, 8)), nb, ir.Constant(i64, 1)) as (b, _):
            dw = _f16_ir(builder, builder.load(builder.gep(d_p, [builder.add(builder.mul(r, nb), b)])))
            scales = []
            for t in toks:
                xd_t = builder.load(builder.gep(xd_p, [builder.add(builder.mul(t, nb), b)]))
                one = builder.insert_element(ir.Constant(f8, ir.Undefined), builder.fmul(dw, xd_t),
                                             ir.Constant(_I32, 0))
                scales.append(splat(one, 0))
            block(b, scales)
        for t, acc in zip(toks, accs):
            total = builder.load(acc[0])
            for a in acc[1:]:
                total = builder.fadd(total, builder.load(a))
            dst = builder.gep(out_p, [builder.add(builder.mul(t, ncols), r)])
            builder.store(_hsum8(builder, total), dst)
        return context.get_dummy_value()

    return types.void(T, route, qs, d, xq, xd, out, r, t0), codegen


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


ROW_GROUP = 16  # weight rows per parallel work item


def _make_qmatmul(route):
    """qmatmul compiled for one instruction route (a closure constant, so each route has its
    own cached machine code)."""

    @njit(cache=True, nogil=True, fastmath=True, parallel=True)
    def qmatmul(fmt, xq, xd, xs, d, m, qs, out):
        """out f32[n, N] = activation [n, K] @ W.T, W quantized [N, K] in format `fmt` (d, m:
        uint16 fp16 bits [N, B], m (0, 0) unless q4_1; qs C-contiguous), activation xq i8 or
        i16 [n, K] (C-contiguous) with xd, xs f32[n, B] from quantize_act. Per block: s = int
        dot of the unsigned weight codes with xq, then q4_0: d * (xd * s - 8 * xs); q4_1:
        d * xd * s + m * xs; q8_0: d * xd * s. Work items are groups of ROW_GROUP rows; a
        group's weights (a few KB) stay in cache while every token passes over them, each
        weight block unpacked once per 4 tokens (the last 1-3 tokens share one tile)."""
        N, nb = d.shape
        n, K = xq.shape
        if qs.size != N * nb * (32 if fmt == Q8_0 else 16) or K != nb * 32 or out.shape != (n, N):
            raise ValueError("qmatmul: qs, xq or out shape does not match d and fmt")
        q = qs.reshape(N, nb, qs.size // (N * nb))
        for g in prange((N + ROW_GROUP - 1) // ROW_GROUP):
            r_lo = g * ROW_GROUP
            r_hi = min(N, r_lo + ROW_GROUP)
            t = 0
            while t + 4 <= n:
                for r in range(r_lo, r_hi):
                    _dot_tile(4, route, q, d, xq, xd, out, r, t)
                t += 4
            rest = n - t  # 0..3 tokens: one tile of that size
            for r in range(r_lo, r_hi):
                if rest == 3:
                    _dot_tile(3, route, q, d, xq, xd, out, r, t)
                elif rest == 2:
                    _dot_tile(2, route, q, d, xq, xd, out, r, t)
                elif rest == 1:
                    _dot_tile(1, route, q, d, xq, xd, out, r, t)
            if fmt != Q8_0:  # the offset term: m (q4_1) or -8 d (q4_0) times sum(x), per block
                c = m if fmt == Q4_1 else d
                cs = np.float32(1) if fmt == Q4_1 else np.float32(-8)
                for r in range(r_lo, r_hi):
                    for t in range(n):
                        acc = np.float32(0)
                        for b in range(nb):
                            acc += _f16(c[r, b]) * xs[t, b]
                        out[t, r] += cs * acc

    return qmatmul


QMATMUL = {PORTABLE: _make_qmatmul(PORTABLE), X86_AVX2: _make_qmatmul(X86_AVX2)}


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
