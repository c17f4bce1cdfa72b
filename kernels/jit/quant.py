"""Numba quant kernels: activation quantization, quantized matmul, row dequantization.

Two activation precisions (the caller picks xq's dtype): int16 per block of 32 in natural
order (the default: logits within float rounding of the float model, so greedy decoding
follows it token for token; per block, codes widened to int16 meet the activation in
``vpmaddwd``, see _codegen_i16), or int8 as llama.cpp quantizes activations (about 2x faster
products, a small drift), described below.

int8 activation layout (quantize_act): per block of 32, in *pair order*: the 64 elements of
blocks 2p and 2p + 1 are stored as [2p: 0-15, 2p+1: 0-15, 2p: 16-31, 2p+1: 16-31]; a last odd
block keeps its natural order. The 4-bit weights are read as stored: blocks 2p and 2p + 1 of a
row are 32 contiguous bytes whose low nibbles are elements [2p: 0-15, 2p+1: 0-15] and high
nibbles [2p: 16-31, 2p+1: 16-31], so each operand of a pair's dot product is one 32-byte load,
with no shuffle. q8_0 weights meet the same activation after one 16-byte insert per half.

fp16 scales arrive as uint16 bit views (Numba has no float16). ``_f16`` widens them with bit
arithmetic: sign and the low 15 bits are moved to float32 positions (exponent field e and
10-bit mantissa land as float32 exponent e, float32 subnormal when e == 0), then one multiply
by 2**112 rebiases the exponent (127 - 15). Exact for every finite half; inf/nan scales are
not supported. The x86 route converts 8 scales at once in hardware (F16C ``vcvtph2ps``).

The quantized product's inner loop is an ``intrinsic`` (``_dot_tile``) emitting LLVM IR for a
tile of one row x T tokens, 8 blocks (4 pairs) at a time: unsigned 4-bit codes (or |w| of q8_0
with the activation's sign moved onto it) times int8 activations, summed in adjacent pairs to
int16 (x86 ``vpmaddubsw``; a pair's 16 lanes hold 8 partial sums of each of its blocks),
folded across the 4 pairs and widened (``vpmaddwd`` with ones; q8_0 widens first, its int16
sums have no room) to one int32 lane per block, converted to float and accumulated with the 8
blocks' scales in one fma; one horizontal sum per output. The 4-bit offset term (m or -8 d,
times the activation's block sums) is accumulated beside it. The portable route emits the same
integer arithmetic as generic IR (widen, multiply, add even and odd lanes: exact, as no sum
leaves int16), so both routes give the same results. The route is picked at import by
``isa()`` (EDGERT_ISA=portable forces the generic one, so the ARM route is tested on x86 too);
QMATMUL holds both. The intrinsic lives in this file because ``cache=True`` only tracks
changes to the file of the cached function.
"""
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..formats import Q4_1, Q8_0

_I8, _I16, _I32, _F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.FloatType()
_I64 = ir.IntType(64)
PORTABLE, X86_AVX2 = 0, 1  # instruction routes of the block dot product (see isa())
# bytes ahead in the weight codes that _dot_tile prefetches (measured here, cold weights, 1 thread:
# 1.3x on K = 1536 rows, no change on K = 8960; 1024-8192 all helped)
PREFETCH = 4096
N_ACC = 2  # accumulators per token in the int16 tile
# the blocks of a group of 8 in the order of their folded int32 lanes: pair p's blocks 2p and
# 2p + 1 sit in lanes p and 4 + p (the two 128-bit halves of every 32-byte operand)
_PAIR_LANES = [0, 2, 4, 6, 1, 3, 5, 7]


def isa() -> int:
    """X86_AVX2 when Numba compiles for a host with AVX2 (and F16C, which every AVX2 CPU has),
    else PORTABLE (generic vector IR that LLVM lowers for any target, e.g. ARM NEON).
    EDGERT_ISA=portable forces the portable route."""
    import os

    import llvmlite.binding as llvm
    import numba

    if os.environ.get("EDGERT_ISA", "").lower() == "portable":
        return PORTABLE
    host = numba.config.CPU_NAME in (None, "host") and not numba.config.CPU_FEATURES
    features = llvm.get_host_cpu_features() if host else {}
    return X86_AVX2 if features.get("avx2", False) and features.get("f16c", False) else PORTABLE


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


def _load8(builder, base, off, elem, count=None):
    """<8 x elem> at element `off` of `base`; with count (i64 at run time, 1..7) only the first
    count elements are read (a masked load: every access in bounds), the others are zero."""
    if count is None:
        return _vload(builder, base, off, 8, elem)
    vt, i64x8 = ir.VectorType(elem, 8), ir.VectorType(_I64, 8)
    n = builder.insert_element(ir.Constant(i64x8, None), count, ir.Constant(_I32, 0))
    n = builder.shuffle_vector(n, n, ir.Constant(ir.VectorType(_I32, 8), [0] * 8))
    mask = builder.icmp_unsigned("<", ir.Constant(i64x8, list(range(8))), n)
    name = f"llvm.masked.load.v8{'f32' if elem == _F32 else 'i16'}.p0"
    ptr = builder.bitcast(builder.gep(base, [off]), vt.as_pointer())
    return _call(builder, name, vt, [ptr, ir.Constant(_I32, 4 if elem == _F32 else 2), mask,
                                     ir.Constant(vt, [0.0 if elem == _F32 else 0] * 8)])


def _call(builder, name, ret, args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, [a.type for a in args]), name)
    return builder.call(fn, args)


def _f16_ir(builder, h, route):
    """<8 x i16> fp16 bits -> <8 x float>: F16C on x86, else the bit arithmetic of _f16."""
    f8 = ir.VectorType(_F32, 8)
    if route == X86_AVX2:
        return builder.fpext(builder.bitcast(h, ir.VectorType(ir.HalfType(), 8)), f8)
    i8x32 = ir.VectorType(_I32, 8)

    def const(ty, v):
        return ir.Constant(ty, [v] * 8)
    h = builder.zext(h, i8x32)
    sign = builder.shl(builder.and_(h, const(i8x32, 0x8000)), const(i8x32, 16))
    rest = builder.shl(builder.and_(h, const(i8x32, 0x7FFF)), const(i8x32, 13))
    return builder.fmul(builder.bitcast(builder.or_(sign, rest), f8), const(f8, 2.0**112))


def _pair_sums(builder, v):
    """<2L x iW> -> <L x iW>: sums of adjacent lanes."""
    half = v.type.count // 2
    idx = ir.VectorType(_I32, half)
    even = builder.shuffle_vector(v, v, ir.Constant(idx, list(range(0, 2 * half, 2))))
    odd = builder.shuffle_vector(v, v, ir.Constant(idx, list(range(1, 2 * half, 2))))
    return builder.add(even, odd)


def _maddubs(builder, u, s, route):
    """<L x i8> u (unsigned), s (signed) -> <L/2 x i16> sums of adjacent products (x86
    vpmaddubsw, which saturates; every caller's sums fit int16, so both routes are exact)."""
    L = u.type.count
    if route == X86_AVX2:
        name = "llvm.x86.avx2.pmadd.ub.sw" if L == 32 else "llvm.x86.ssse3.pmadd.ub.sw.128"
        return _call(builder, name, ir.VectorType(_I16, L // 2), [u, s])
    wide = ir.VectorType(_I16, L)
    return _pair_sums(builder, builder.mul(builder.zext(u, wide), builder.sext(s, wide)))


def _madd_ones(builder, a, route):
    """<L x i16> -> <L/2 x i32> sums of adjacent lanes (x86 vpmaddwd with ones)."""
    L = a.type.count
    if route == X86_AVX2:
        name = "llvm.x86.avx2.pmadd.wd" if L == 16 else "llvm.x86.sse2.pmadd.wd"
        return _call(builder, name, ir.VectorType(_I32, L // 2), [a, ir.Constant(a.type, [1] * L)])
    return _pair_sums(builder, builder.sext(a, ir.VectorType(_I32, L)))


def _sign(builder, x, w, route):
    """x where w > 0, -x where w < 0, 0 where w == 0, per int8 lane (x86 vpsignb)."""
    if route == X86_AVX2:
        name = "llvm.x86.avx2.psign.b" if x.type.count == 32 else "llvm.x86.ssse3.psign.b.128"
        return _call(builder, name, x.type, [x, w])
    zero = ir.Constant(x.type, [0] * x.type.count)
    neg = builder.select(builder.icmp_signed("<", w, zero), builder.sub(zero, x), x)
    return builder.select(builder.icmp_signed("==", w, zero), zero, neg)


def _abs(builder, w):
    """|w| per int8 lane; -128 stays 0x80, which vpmaddubsw reads as unsigned 128."""
    zero = ir.Constant(w.type, [0] * w.type.count)
    return builder.select(builder.icmp_signed("<", w, zero), builder.sub(zero, w), w)


def _prefetch(builder, qs_p, off, nbytes):
    """Prefetch the weight codes at qs_p[off + PREFETCH : + nbytes], one cache line at a time
    (off: i64 byte offset of the blocks about to be read)."""
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [_I8.as_pointer(), _I32, _I32, _I32]), "llvm.prefetch.p0")
    for k in range(0, nbytes, 64):
        a = builder.gep(qs_p, [builder.add(off, ir.Constant(_I64, PREFETCH + k))])
        builder.call(fn, [a, ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])


def _hsum8(builder, v):
    """<8 x float> -> float, pairwise."""
    for width in (4, 2, 1):
        mask = ir.VectorType(_I32, width)
        lo = builder.shuffle_vector(v, v, ir.Constant(mask, list(range(width))))
        hi = builder.shuffle_vector(v, v, ir.Constant(mask, list(range(width, 2 * width))))
        v = builder.fadd(lo, hi)
    return builder.extract_element(v, ir.Constant(_I32, 0))


@intrinsic(prefer_literal=True)
def _dot_tile(typingctx, T, route, qs, d, c, cs, xq, xd, xs, out, r, t0):
    """out[t0 + j, r] = sum over blocks b of d[r, b] * xd[t0 + j, b] * (integer dot of weight
    row r's block b codes with the activation block b of token t0 + j) + cs * sum over b of
    c[r, b] * xs[t0 + j, b] (4-bit codes only), for j < T (a literal int).
    Weight codes: qs uint8 [N, B, 16] nibbles (low = element j, high = j + 16, unsigned 0..15)
    or int8 [N, B, 32]; d, c uint16 fp16 bits [N, B]; cs float32; xq int8 [n, K] in pair order
    (module docstring); xd, xs f32 [n, B]; out f32 [n, N]; all C-contiguous.
    Blocks go in groups of 8 (the last 1-7 pair by pair, then an odd one on 16-byte vectors;
    their scales through masked loads, which made K = 576 rows 1.5x faster than lane-by-lane
    loads): the scales of a group are widened and multiplied as one vector, and each pair of
    blocks is unpacked once per call and used for all T tokens. Every token is summed in the same order whatever
    T, so a token's output does not depend on how many tokens share the call (verifying a token
    tree = decoding its paths).
    route: PORTABLE or X86_AVX2 (literal). Measured here: tiles of several rows per call ran
    up to 3x slower for decode and no faster for prefill than one row by 4 tokens."""
    lits = (T, route)
    if not all(isinstance(a, types.IntegerLiteral) for a in lits):
        return None
    ok = (all(isinstance(a, types.Array) and a.layout == "C" for a in (qs, d, c, xq, xd, xs, out))
          and qs.dtype in (types.uint8, types.int8) and d.dtype == types.uint16 and c.dtype == types.uint16
          and isinstance(cs, types.Float) and xq.dtype in (types.int8, types.int16)
          and all(a.dtype == types.float32 for a in (xd, xs, out)))
    if not ok:
        return None
    nt, rt = (a.literal_value for a in lits)
    nibbles = qs.dtype == types.uint8
    sig = types.void(T, route, qs, d, c, cs, xq, xd, xs, out, r, t0)
    if xq.dtype == types.int16:
        return sig, _codegen_i16(nt, rt, nibbles)

    def codegen(context, builder, sig, args):
        f8 = ir.VectorType(_F32, 8)
        qs_p, d_p, c_p = (_ptr(context, builder, sig.args[k], args[k]) for k in (2, 3, 4))
        xq_p, xd_p, xs_p, out_p = (_ptr(context, builder, sig.args[k], args[k]) for k in (6, 7, 8, 9))
        cs_v = context.cast(builder, args[5], sig.args[5], types.float32)
        nb = cgutils.unpack_tuple(builder, context.make_array(sig.args[3])(context, builder, args[3]).shape, 2)[1]
        kdim = cgutils.unpack_tuple(builder, context.make_array(sig.args[6])(context, builder, args[6]).shape, 2)[1]
        ncols = cgutils.unpack_tuple(builder, context.make_array(sig.args[9])(context, builder, args[9]).shape, 2)[1]
        r, t0 = (builder.sext(a, _I64) if a.type.width < 64 else a for a in args[10:12])
        toks = [builder.add(t0, ir.Constant(_I64, j)) for j in range(nt)]
        row = builder.mul(r, nb)
        zero = ir.Constant(f8, [0.0] * 8)
        # per token: the sum of scaled dot products and the 4-bit offset term, 8 lanes each
        accs = [cgutils.alloca_once_value(builder, zero) for _ in range(nt)]
        offs = [cgutils.alloca_once_value(builder, zero) for _ in range(nt)]
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f8, [f8, f8, f8]), "llvm.fmuladd.v8f32")
        step = 16 if nibbles else 32  # bytes of one block's codes

        def i64(v):
            return ir.Constant(_I64, v)

        def shuffle(a, b, idx):
            """Lanes idx of a and b (b None: of a alone)."""
            return builder.shuffle_vector(a, a if b is None else b, ir.Constant(ir.VectorType(_I32, len(idx)), idx))

        def accumulate(acc, s, scale):
            builder.store(builder.call(fma, [builder.sitofp(s, f8), scale, builder.load(acc)]), acc)

        def weights(b, L):
            """(w, sign) of block b (L = 16) or blocks b, b + 1 (L = 32): w = (elements 0-15 of
            each, elements 16-31 of each) as <L x i8> unsigned codes (nibbles, sign None) or
            |w| (q8_0, sign = the signed codes)."""
            off = builder.mul(builder.add(row, b), i64(step))
            if nibbles:
                q = _vload(builder, qs_p, off, L, _I8)
                lo = builder.and_(q, ir.Constant(q.type, [15] * L))
                return (lo, builder.lshr(q, ir.Constant(q.type, [4] * L))), None
            lo, hi = _vload(builder, qs_p, off, 16, _I8), _vload(builder, qs_p, builder.add(off, i64(16)), 16, _I8)
            if L == 32:  # [b: 0-15 | b+1: 0-15], [b: 16-31 | b+1: 16-31]
                lo = shuffle(lo, _vload(builder, qs_p, builder.add(off, i64(32)), 16, _I8), list(range(32)))
                hi = shuffle(hi, _vload(builder, qs_p, builder.add(off, i64(48)), 16, _I8), list(range(32)))
            return (_abs(builder, lo), _abs(builder, hi)), (lo, hi)

        def sums(w, sign, t, b, L):
            """Token t's partial dot products with weights(b, L): nibbles <L/2 x i16> (adjacent
            pairs, lo + hi: |sum| <= 4 * 15 * 127), q8_0 <L/4 x i32> (|w| * (+-x) pairs reach
            2 * 128 * 127, no room to add lo and hi in int16). Lanes of block b first."""
            xoff = builder.add(builder.mul(t, kdim), builder.mul(b, i64(32)))
            x = (_vload(builder, xq_p, xoff, L, _I8), _vload(builder, xq_p, builder.add(xoff, i64(L)), L, _I8))
            if sign is None:
                return builder.add(_maddubs(builder, w[0], x[0], rt), _maddubs(builder, w[1], x[1], rt))
            return builder.add(*(_madd_ones(builder, _maddubs(builder, w[h], _sign(builder, x[h], sign[h], rt), rt), rt)
                                 for h in range(2)))

        def int32(v):
            return _madd_ones(builder, v, rt) if nibbles else v

        def group(b0):
            """8 blocks from b0: per token the 4 pairs' sums fold into one int32 lane per block,
            in _PAIR_LANES order, then one conversion and one fma."""
            base = builder.add(row, b0)
            _prefetch(builder, qs_p, builder.mul(base, i64(step)), 8 * step)
            scales = scale_vectors(b0, None)
            ws = [weights(builder.add(b0, i64(2 * p)), 32) for p in range(4)]
            for t, acc, sc in zip(toks, accs, scales):
                v = [sums(w, sign, t, builder.add(b0, i64(2 * p)), 32) for p, (w, sign) in enumerate(ws)]
                if nibbles:  # int16 [b0 x8 | b1 x8], [b2 x8 | b3 x8] -> [b0 x4, b2 x4 | b1 x4, b3 x4] (<= 8 * 15 * 127)
                    lo, hi = ([i + j for i in starts for j in range(4)] for starts in ((0, 16, 8, 24), (4, 20, 12, 28)))
                else:  # int32 [b0 x4 | b1 x4], [b2 x4 | b3 x4] -> [b0 x2, b2 x2 | b1 x2, b3 x2]
                    lo, hi = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
                q = [int32(builder.add(shuffle(a, b, lo), shuffle(a, b, hi))) for a, b in ((v[0], v[1]), (v[2], v[3]))]
                # [b0 x2, b2 x2 | b1 x2, b3 x2], [b4 x2, b6 x2 | b5 x2, b7 x2] -> [b0, b2, b4, b6 | b1, b3, b5, b7]
                s = builder.add(shuffle(q[0], q[1], [0, 2, 8, 10, 4, 6, 12, 14]),
                                shuffle(q[0], q[1], [1, 3, 9, 11, 5, 7, 13, 15]))
                accumulate(acc, s, sc)

        def scale_vectors(b0, count):
            """Per token: d * xd of blocks b0.. (8, or the first count) in _PAIR_LANES order; and
            the offset term c * xs added to offs."""
            base = builder.add(row, b0)
            dv = _f16_ir(builder, _load8(builder, d_p, base, _I16, count), rt)
            cv = _f16_ir(builder, _load8(builder, c_p, base, _I16, count), rt) if nibbles else None
            scales = []
            for t, off in zip(toks, offs):
                tb = builder.add(builder.mul(t, nb), b0)
                scales.append(shuffle(builder.fmul(dv, _load8(builder, xd_p, tb, _F32, count)), None, _PAIR_LANES))
                if nibbles:
                    xs8 = _load8(builder, xs_p, tb, _F32, count)
                    builder.store(builder.call(fma, [cv, xs8, builder.load(off)]), off)
            return scales

        def tail(b0, count):
            """The last count (runtime, 1..7) blocks from b0: pair by pair, then an odd block
            (natural order) on 16-byte vectors."""
            scales = scale_vectors(b0, count)
            for p in range(3):
                b = builder.add(b0, i64(2 * p))
                with builder.if_then(builder.icmp_unsigned(">=", count, i64(2 * p + 2))):
                    w, sign = weights(b, 32)
                    for t, acc, sc in zip(toks, accs, scales):
                        accumulate(acc, int32(sums(w, sign, t, b, 32)), shuffle(sc, None, [p] * 4 + [4 + p] * 4))
            with builder.if_then(builder.trunc(count, ir.IntType(1))):
                b = builder.add(b0, builder.sub(count, i64(1)))
                lane = builder.lshr(count, i64(1))  # where block count - 1 sits in _PAIR_LANES order
                w, sign = weights(b, 16)
                for t, acc, sc in zip(toks, accs, scales):
                    s4 = int32(sums(w, sign, t, b, 16))
                    scale = builder.insert_element(ir.Constant(f8, None), builder.extract_element(sc, lane),
                                                   ir.Constant(_I32, 0))
                    s8 = shuffle(s4, ir.Constant(s4.type, [0] * 4), list(range(8)))  # lanes 4-7 zero
                    accumulate(acc, s8, shuffle(scale, None, [0] * 8))

        groups = builder.udiv(nb, i64(8))
        with cgutils.for_range(builder, groups) as loop:
            group(builder.mul(loop.index, i64(8)))
        rest = builder.urem(nb, i64(8))
        with builder.if_then(builder.icmp_unsigned("!=", rest, i64(0))):
            tail(builder.mul(groups, i64(8)), rest)
        cs8 = shuffle(builder.insert_element(ir.Constant(f8, None), cs_v, ir.Constant(_I32, 0)), None, [0] * 8)
        for t, acc, off in zip(toks, accs, offs):
            total = builder.load(acc)
            if nibbles:
                total = builder.call(fma, [builder.load(off), cs8, total])
            builder.store(_hsum8(builder, total), builder.gep(out_p, [builder.add(builder.mul(t, ncols), r)]))
        return context.get_dummy_value()

    return sig, codegen


def _pmadd(builder, a, b, route):
    """<16 x i16> a, b -> <8 x i32> sums of adjacent products (x86 vpmaddwd)."""
    if route == X86_AVX2:
        return _call(builder, "llvm.x86.avx2.pmadd.wd", ir.VectorType(_I32, 8), [a, b])
    wide = ir.VectorType(_I32, 16)
    return _pair_sums(builder, builder.mul(builder.sext(a, wide), builder.sext(b, wide)))


def _codegen_i16(nt, rt, nibbles):
    """_dot_tile's code for int16 activations in natural order (the default, exact path): per
    block of 32 the weight codes widen to int16 and meet the activation in vpmaddwd (8 int32
    lanes), scaled in float and accumulated 8 wide in N_ACC accumulators per token; the 4-bit
    offset term (c * xs, 8 blocks per fma) beside it, as in the int8 tile, and the codes
    prefetched PREFETCH bytes ahead (q8_0 ffn_down of Qwen2.5-1.5B, 1536 x 8960, 1 thread:
    1.12 -> 0.82 ms; q4_1 1.16 -> 0.95 ms at 17920 x 1536, 0.86 -> 0.55 ms at 1536 x 8960, the
    last also for the offset term leaving qmatmul's scalar loop). 4-bit codes widen to int16
    once per block and split there (one vpmovzxbw instead of two; q4_1 3072 x 1536 in cache,
    1 thread: 161 -> 139 us). Tried and dropped: the blocks' scales read from a stack table as
    broadcast memory operands instead of shuffled out of a vector (no gain, q8_0 slower), and
    the last 1-7 blocks as one masked group (slower than block by block). Same argument list
    as _dot_tile."""

    def codegen(context, builder, sig, args):
        v16 = ir.VectorType(_I16, 16)
        f8 = ir.VectorType(_F32, 8)
        qs_p, d_p, c_p = (_ptr(context, builder, sig.args[k], args[k]) for k in (2, 3, 4))
        xq_p, xd_p, xs_p, out_p = (_ptr(context, builder, sig.args[k], args[k]) for k in (6, 7, 8, 9))
        cs_v = context.cast(builder, args[5], sig.args[5], types.float32)
        nb = cgutils.unpack_tuple(builder, context.make_array(sig.args[3])(context, builder, args[3]).shape, 2)[1]
        kdim = cgutils.unpack_tuple(builder, context.make_array(sig.args[6])(context, builder, args[6]).shape, 2)[1]
        ncols = cgutils.unpack_tuple(builder, context.make_array(sig.args[9])(context, builder, args[9]).shape, 2)[1]
        r, t0 = (builder.sext(a, _I64) if a.type.width < 64 else a for a in args[10:12])
        toks = [builder.add(t0, ir.Constant(_I64, j)) for j in range(nt)]
        stride = 16 if nibbles else 32
        zero = ir.Constant(f8, [0.0] * 8)
        # independent accumulators per token (blocks alternate between them), the same number
        # for every T: a token's output does not depend on how many tokens share the call
        accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(N_ACC)] for _ in range(nt)]
        offs = [cgutils.alloca_once_value(builder, zero) for _ in range(nt)]  # 4-bit offset term
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f8, [f8, f8, f8]), "llvm.fmuladd.v8f32")
        lanes = ir.VectorType(_I32, 8)

        def splat(v, lane):
            return builder.shuffle_vector(v, v, ir.Constant(lanes, [lane] * 8))

        def block(b, scales, k=0):
            off = builder.mul(builder.add(builder.mul(r, nb), b), ir.Constant(_I64, stride))
            if nibbles:  # widened once, then split: vpmovzxbw, vpand, vpsrlw
                qw = builder.zext(_vload(builder, qs_p, off, 16, _I8), v16)
                lo = builder.and_(qw, ir.Constant(v16, [15] * 16))
                hi = builder.lshr(qw, ir.Constant(v16, [4] * 16))
            else:
                lo = builder.sext(_vload(builder, qs_p, off, 16, _I8), v16)
                hi = builder.sext(_vload(builder, qs_p, builder.add(off, ir.Constant(_I64, 16)), 16, _I8), v16)
            for t, acc, scale in zip(toks, (a[k % N_ACC] for a in accs), scales):
                xoff = builder.add(builder.mul(t, kdim), builder.mul(b, ir.Constant(_I64, 32)))
                x_lo = _vload(builder, xq_p, xoff, 16, _I16)
                x_hi = _vload(builder, xq_p, builder.add(xoff, ir.Constant(_I64, 16)), 16, _I16)
                s = builder.add(_pmadd(builder, lo, x_lo, rt), _pmadd(builder, hi, x_hi, rt))
                builder.store(builder.call(fma, [builder.sitofp(s, f8), scale, builder.load(acc)]), acc)

        groups = builder.udiv(nb, ir.Constant(_I64, 8))  # 8 blocks' scales widened as one vector
        with cgutils.for_range(builder, groups) as loop:
            b0 = builder.mul(loop.index, ir.Constant(_I64, 8))
            _prefetch(builder, qs_p, builder.mul(builder.add(builder.mul(r, nb), b0), ir.Constant(_I64, stride)),
                      8 * stride)
            dv = _f16_ir(builder, _vload(builder, d_p, builder.add(builder.mul(r, nb), b0), 8, _I16), rt)
            sc = [builder.fmul(dv, _vload(builder, xd_p, builder.add(builder.mul(t, nb), b0), 8, _F32)) for t in toks]
            if nibbles:
                cv = _f16_ir(builder, _vload(builder, c_p, builder.add(builder.mul(r, nb), b0), 8, _I16), rt)
                for t, off in zip(toks, offs):
                    xs8 = _vload(builder, xs_p, builder.add(builder.mul(t, nb), b0), 8, _F32)
                    builder.store(builder.call(fma, [cv, xs8, builder.load(off)]), off)
            for k in range(8):
                block(builder.add(b0, ir.Constant(_I64, k)), [splat(v, k) for v in sc], k)
        with cgutils.for_range_slice(builder, builder.mul(groups, ir.Constant(_I64, 8)), nb,
                                     ir.Constant(_I64, 1)) as (b, _):
            hv = builder.insert_element(ir.Constant(ir.VectorType(_I16, 8), None),
                                        builder.load(builder.gep(d_p, [builder.add(builder.mul(r, nb), b)])),
                                        ir.Constant(_I32, 0))
            dw = _f16_ir(builder, hv, rt)
            cw = None
            if nibbles:
                hc = builder.insert_element(ir.Constant(ir.VectorType(_I16, 8), [0] * 8),
                                            builder.load(builder.gep(c_p, [builder.add(builder.mul(r, nb), b)])),
                                            ir.Constant(_I32, 0))
                cw = _f16_ir(builder, hc, rt)  # lane 0: c of block b, other lanes 0
            scales = []
            for t, off in zip(toks, offs):
                tb = builder.add(builder.mul(t, nb), b)
                one = builder.insert_element(ir.Constant(f8, None), builder.load(builder.gep(xd_p, [tb])),
                                             ir.Constant(_I32, 0))
                scales.append(splat(builder.fmul(dw, one), 0))
                if nibbles:
                    xs1 = splat(builder.insert_element(ir.Constant(f8, None), builder.load(builder.gep(xs_p, [tb])),
                                                       ir.Constant(_I32, 0)), 0)
                    builder.store(builder.call(fma, [cw, xs1, builder.load(off)]), off)
            block(b, scales)
        cs8 = splat(builder.insert_element(ir.Constant(f8, None), cs_v, ir.Constant(_I32, 0)), 0)
        for t, acc, off in zip(toks, accs, offs):
            total = builder.load(acc[0])
            for a in acc[1:]:
                total = builder.fadd(total, builder.load(a))
            if nibbles:
                total = builder.call(fma, [builder.load(off), cs8, total])
            builder.store(_hsum8(builder, total), builder.gep(out_p, [builder.add(builder.mul(t, ncols), r)]))
        return context.get_dummy_value()

    return codegen


@njit(cache=True, nogil=True, fastmath=True)
def quantize_act(x, xq, xd, xs):
    """x f32[n, K] -> xq [n, K], xd f32[n, B], xs f32[n, B]: per block of 32, with Q = 127 (xq
    int8, stored in pair order: module docstring) or 32767 (xq int16, natural order),
    xd = amax / Q, xq = rint(x * Q / amax), xs = xd * sum(xq)."""
    n, K = x.shape
    nb = K // 32
    if xq.shape != (n, K) or xq.itemsize > 2 or xd.shape != (n, nb) or xs.shape != (n, nb):
        raise ValueError("quantize_act: xq must be int8 or int16 [n, K], xd and xs [n, K / 32]")
    pairs = xq.itemsize == 1
    qmax = np.float32(127) if pairs else np.float32(32767)
    for i in range(n):
        for b in range(nb):
            amax = np.float32(0)
            for j in range(b * 32, b * 32 + 32):
                amax = max(amax, abs(x[i, j]))
            inv = qmax / amax if amax > 0 else np.float32(0)
            lo = b * 32 - (b & 1) * 16 if pairs and b | 1 < nb else b * 32  # where elements 0-15 go
            hi = lo + (32 if pairs and b | 1 < nb else 16)  # and 16-31
            s = np.int32(0)
            for j in range(16):
                q = np.int32(np.rint(x[i, b * 32 + j] * inv))
                xq[i, lo + j] = q
                s += q
            for j in range(16):
                q = np.int32(np.rint(x[i, b * 32 + 16 + j] * inv))
                xq[i, hi + j] = q
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
        uint16 fp16 bits [N, B], m (0, 0) unless q4_1; qs C-contiguous), activation xq int8
        [n, K] in pair order or int16 in natural order, with xd, xs f32[n, B] from quantize_act
        (all C-contiguous). Per
        block: s = int dot of the weight codes with xq, then q4_0: d * (xd * s - 8 * xs); q4_1:
        d * xd * s + m * xs; q8_0: d * xd * s. Work items are groups of ROW_GROUP rows; a
        group's weights (a few KB) stay in cache while every token passes over them, each
        weight pair of blocks unpacked once per 4 tokens (the last 1-3 tokens share one tile)."""
        N, nb = d.shape
        n, K = xq.shape
        if (qs.size != N * nb * (32 if fmt == Q8_0 else 16) or K != nb * 32 or out.shape != (n, N)
                or xd.shape != (n, nb) or xs.shape != (n, nb) or (fmt == Q4_1 and m.shape != d.shape)):
            raise ValueError("qmatmul: qs, m, xq, xd, xs or out shape does not match d and fmt")
        q = qs.reshape(N, nb, qs.size // (N * nb))
        c = m if fmt == Q4_1 else d  # the offset term: m * xs (q4_1) or -8 d * xs (q4_0)
        cs = np.float32(1) if fmt == Q4_1 else np.float32(-8)
        for g in prange((N + ROW_GROUP - 1) // ROW_GROUP):
            r_lo = g * ROW_GROUP
            r_hi = min(N, r_lo + ROW_GROUP)
            t = 0
            while t + 4 <= n:
                for r in range(r_lo, r_hi):
                    _dot_tile(4, route, q, d, c, cs, xq, xd, xs, out, r, t)
                t += 4
            rest = n - t  # 0..3 tokens: one tile of that size
            for r in range(r_lo, r_hi):
                if rest == 3:
                    _dot_tile(3, route, q, d, c, cs, xq, xd, xs, out, r, t)
                elif rest == 2:
                    _dot_tile(2, route, q, d, c, cs, xq, xd, xs, out, r, t)
                elif rest == 1:
                    _dot_tile(1, route, q, d, c, cs, xq, xd, xs, out, r, t)

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
