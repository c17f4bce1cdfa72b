"""Numba convolution kernels, NCHW (one image at a time: x [C, H, W]).

Why channel-major (CHW): a 1x1 convolution is then out [Cout, P] = W [Cout, Cin] @ x [Cin, P]
with P = H * W pixels contiguous per channel, so the vector lanes run along pixels and one
weight is a broadcast scalar. A pruned weight group -- G output channels at one input
channel (GROUP, the block layout below) -- then costs one activation load for G vector FMAs,
and skipping a zero group skips its load and its FMAs outright, with no gathers: the
Fast-Sparse-ConvNets (XNNPACK) CHW scheme. The ONNX graph's own layout is kept too, so
Reshape/Flatten/Concat need no layout bookkeeping.

Block layout of a GEMM weight [Cout, K] (K = Cin for 1x1, Cin*kh*kw after im2col): rows in
blocks of GROUP (the last one zero-padded); block b keeps the input columns where any of its
rows is non-zero: idx i32[nnz] (column), vals f32[nnz, GROUP] (the block's rows at that
column), ptr i32[nb + 1] (block b owns entries ptr[b]..ptr[b+1]). A dense weight is the same
layout with every column present; sparse and dense run the same kernel.

The GEMM's inner loop is an ``intrinsic`` (``_gemm_tile``) emitting LLVM IR: GROUP rows x V
vectors of LANES pixels held in registers across the whole K loop (plain Numba loops leave
the accumulators in memory and ran at 2 GMAC/s here, the intrinsic at 25-50, as fast as
OpenBLAS on the large layers). The last, partial pixel tile uses masked loads and stores, and
is one vector wide where one holds its pixels (_tile). Bias and the activation are applied to
the tile in registers before its single store; a plain clamp (identity, relu, relu6) takes
max and min alone, which matters most where pruning leaves few k per tile (EfficientNet-Lite0's
pruned 1x1 layers 3-5% faster).

Depthwise convolution has its own register tile (``_dw_tile``): DW_ROWS output rows x LANES
columns of one channel (DW_LANES at the end of a row), all taps accumulated in registers,
read straight from the image (masked loads at its borders, a shuffle for column stride 2);
for 3x3 and 5x5 kernels at stride 1 and 2 the tap rows are unrolled so that each image row
is loaded once for all the tile rows that use it. EfficientNet-Lite0's depthwise layers, 1
thread, 8-lane tiles: 7.1 ms with plain Numba loops, 2.6 ms with the tile, 1.7 ms unrolled
(8-30 GMAC/s; stride 2 on large images is bound by reading the image).

Activations (``act`` f32[5] = a, b, lo, hi, m): y = min(max(a*x + b, lo), hi) * (x if m else 1):
identity (1, 0, -inf, inf, 0), relu (lo = 0), clip/relu6 (lo, hi), hardsigmoid (alpha, beta,
0, 1, 0), hardswish (1/6, 1/2, 0, 1, 1).
"""
import functools

import numpy as np
from llvmlite import ir
from numba import config, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..ref.conv import GROUP  # output channels per weight group (the pruning unit)

_F32, _I32, _I64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)


def lanes() -> int:
    """Float lanes of one vector register: 16 with AVX-512, else 8 (AVX2, NEON pairs)."""
    import llvmlite.binding as llvm
    import numba

    host = numba.config.CPU_NAME in (None, "host") and not numba.config.CPU_FEATURES
    return 16 if host and llvm.get_host_cpu_features().get("avx512f", False) else 8


LANES = lanes()
V_TILE = 2  # vectors of LANES pixels per tile


def _ptr(context, builder, arrty, arr):
    return context.make_array(arrty)(context, builder, arr).data


def _vector_fns(builder, nl):
    """LLVM intrinsics on <nl x float>: fmuladd, maxnum, minnum, masked load, masked store."""
    fv = ir.VectorType(_F32, nl)
    bv = ir.VectorType(ir.IntType(1), nl)
    ptrty = fv.as_pointer()

    def fn(name, ret, argtys):
        return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, argtys), name)
    return (fn(f"llvm.fmuladd.v{nl}f32", fv, [fv, fv, fv]), fn(f"llvm.maxnum.v{nl}f32", fv, [fv, fv]),
            fn(f"llvm.minnum.v{nl}f32", fv, [fv, fv]), fn(f"llvm.masked.load.v{nl}f32.p0", fv, [ptrty, _I32, bv, fv]),
            fn(f"llvm.masked.store.v{nl}f32.p0", ir.VoidType(), [fv, ptrty, _I32, bv]))


def _activation(builder, nl, act_p, clamp):
    """f(y) for <nl x float> y: act(y) = min(max(a*y + b, lo), hi) * (m*y + 1 - m), act_p ->
    f32[5] (a, b, lo, hi, m); where clamp (i1, known per call) says a = 1, b = 0, m = 0
    (identity, relu, relu6), as max and min alone: in each tile's epilogue the general form
    costs as much as a 3x3 depthwise tile's FMAs per row."""
    fv = ir.VectorType(_F32, nl)
    fma, vmax, vmin = _vector_fns(builder, nl)[:3]

    def splat(i):
        v = builder.insert_element(ir.Constant(fv, ir.Undefined), builder.load(builder.gep(act_p, [ir.Constant(
            _I64, i)])), ir.Constant(_I32, 0))
        return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, nl), [0] * nl))
    a, b, lo, hi, m = (splat(i) for i in range(5))
    one_minus_m = builder.fsub(ir.Constant(fv, [1.0] * nl), m)

    def f(y):
        with builder.if_else(clamp) as (plain, general):
            with plain:
                t_plain = builder.call(vmin, [builder.call(vmax, [y, lo]), hi])
                blk_plain = builder.block
            with general:
                t = builder.call(vmin, [builder.call(vmax, [builder.call(fma, [y, a, b]), lo]), hi])
                t_general = builder.fmul(t, builder.call(fma, [y, m, one_minus_m]))
                blk_general = builder.block
        t = builder.phi(fv)
        t.add_incoming(t_plain, blk_plain)
        t.add_incoming(t_general, blk_general)
        return t
    return f


@intrinsic(prefer_literal=True)
def _gemm_tile(typingctx, L, V, masked, x, vals, idx, k0, k1, bias, act, clamp, out, res, o0, j0, jo, jend):
    """out[o0 + g, jo : jo + V*L] = act(bias[o0 + g] + sum over k in [k0, k1) of
    vals[k, g] * x[idx[k], j0 : j0 + V*L]) (+ res[o0 + g, jo : ...] unless res is None) for
    g < GROUP and o0 + g < out rows. x f32[K, P], out and res f32[Cout, Q], vals f32[nnz,
    GROUP] C-contiguous, idx i32, bias f32[>= o0 + GROUP], act f32[5] (clamp: see
    _activation). L lanes, V vectors (literals); masked (literal bool): only the columns
    j0 + t < jend are loaded and stored (the last tile), else all V*L columns must lie inside
    both arrays. conv_gemm passes jo = j0, jend = P; conv_gemm_dw writes a band of x's columns
    into its own buffer; conv_direct passes its phase buffer as a one-column x (f32[n, 1], row
    pitch 1), so that a tile reads the floats from offset idx[k] + j0 on."""
    if not all(isinstance(a, (types.IntegerLiteral, types.BooleanLiteral)) for a in (L, V, masked)):
        return None
    nl, nv, msk = L.literal_value, V.literal_value, bool(masked.literal_value)
    residual = not isinstance(res, (types.NoneType, types.Omitted))

    def codegen(context, builder, sig, args):
        fv = ir.VectorType(_F32, nl)
        x_p, vals_p, idx_p, bias_p, act_p, out_p = (_ptr(context, builder, sig.args[k], args[k])
                                                    for k in (3, 4, 5, 8, 9, 11))
        res_p = _ptr(context, builder, sig.args[12], args[12]) if residual else None
        P = cgutils.unpack_tuple(builder, context.make_array(sig.args[3])(context, builder, args[3]).shape, 2)[1]
        cout, Q = cgutils.unpack_tuple(builder, context.make_array(sig.args[11])(context, builder, args[11]).shape, 2)
        k0_, k1_, o0_, j0_, jo_, jend_ = (builder.sext(a, _I64) if a.type.width < 64 else a
                                          for a in (args[6], args[7], args[13], args[14], args[15], args[16]))
        clamp = context.cast(builder, args[10], sig.args[10], types.boolean)

        def c64(v):
            return ir.Constant(_I64, v)

        fma, _, _, mload, mstore = _vector_fns(builder, nl)
        ptrty = fv.as_pointer()

        def splat(s):
            v = builder.insert_element(ir.Constant(fv, ir.Undefined), s, ir.Constant(_I32, 0))
            return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, nl), [0] * nl))

        def vptr(base, off):
            return builder.bitcast(builder.gep(base, [off]), ptrty)

        zero = ir.Constant(fv, [0.0] * nl)
        masks = []
        if msk:  # lane j of vector v is live iff j0 + v*L + j < jend
            left = splat(builder.sitofp(builder.sub(jend_, j0_), _F32))
            for v in range(nv):
                lane_pos = ir.Constant(fv, [float(v * nl + j) for j in range(nl)])
                masks.append(builder.fcmp_ordered("<", lane_pos, left))

        def load(base, off, v):
            if msk:
                return builder.call(mload, [vptr(base, off), ir.Constant(_I32, 4), masks[v], zero])
            return builder.load(vptr(base, off), align=4)

        accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(nv)] for _ in range(GROUP)]
        for g in range(GROUP):
            b = splat(builder.load(builder.gep(bias_p, [builder.add(o0_, c64(g))])))
            for v in range(nv):
                builder.store(b, accs[g][v])
        with cgutils.for_range_slice(builder, k0_, k1_, c64(1)) as (k, _):
            col = builder.sext(builder.load(builder.gep(idx_p, [k])), _I64)
            xoff = builder.add(builder.mul(col, P), j0_)
            xs = [load(x_p, builder.add(xoff, c64(v * nl)), v) for v in range(nv)]
            kg = builder.mul(k, c64(GROUP))
            for g in range(GROUP):
                w = splat(builder.load(builder.gep(vals_p, [builder.add(kg, c64(g))])))
                for v in range(nv):
                    builder.store(builder.call(fma, [xs[v], w, builder.load(accs[g][v])]), accs[g][v])
        activate = _activation(builder, nl, act_p, clamp)
        for g in range(GROUP):
            row = builder.add(o0_, c64(g))
            with builder.if_then(builder.icmp_signed("<", row, cout)):
                base = builder.add(builder.mul(row, Q), jo_)
                for v in range(nv):
                    t = activate(builder.load(accs[g][v]))
                    if residual:
                        t = builder.fadd(t, load(res_p, builder.add(base, c64(v * nl)), v))
                    dst = vptr(out_p, builder.add(base, c64(v * nl)))
                    if msk:
                        builder.call(mstore, [t, dst, ir.Constant(_I32, 4), masks[v]])
                    else:
                        builder.store(t, dst, align=4)
        return context.get_dummy_value()

    sig = types.void(L, V, masked, x, vals, idx, k0, k1, bias, act, clamp, out, res, o0, j0, jo, jend)
    return sig, codegen


@intrinsic(prefer_literal=True)
def _gemv_block(typingctx, U, x, vals, idx, k0, k1, bias, act, out, o0):
    """out[o0 + g, 0] = act(bias[o0 + g] + sum over k in [k0, k1) of vals[k, g] * x[idx[k], 0])
    for g < GROUP and o0 + g < out rows: one row block of conv_gemm on a single pixel. x f32[K, 1],
    out f32[Cout, 1], vals f32[nnz, GROUP], idx i32, bias f32[>= o0 + GROUP], act f32[5]; the
    GROUP rows are one vector, and U (literal) accumulators take alternate k."""
    if not isinstance(U, types.IntegerLiteral):
        return None
    nu = U.literal_value

    def codegen(context, builder, sig, args):
        gv = ir.VectorType(_F32, GROUP)
        x_p, vals_p, idx_p, bias_p, act_p, out_p = (_ptr(context, builder, sig.args[k], args[k])
                                                    for k in (1, 2, 3, 6, 7, 8))
        cout = cgutils.unpack_tuple(builder, context.make_array(sig.args[8])(context, builder, args[8]).shape, 2)[0]
        k0_, k1_, o0_ = (builder.sext(a, _I64) if a.type.width < 64 else a for a in (args[4], args[5], args[9]))

        def c64(v):
            return ir.Constant(_I64, v)

        def splat(s):
            v = builder.insert_element(ir.Constant(gv, ir.Undefined), s, ir.Constant(_I32, 0))
            return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, GROUP), [0] * GROUP))

        fma = _vector_fns(builder, GROUP)[0]

        def vload(base, off):
            return builder.load(builder.bitcast(builder.gep(base, [off]), gv.as_pointer()), align=4)

        accs = [cgutils.alloca_once_value(builder, ir.Constant(gv, [0.0] * GROUP)) for _ in range(nu)]

        def step(k, u):
            xs = splat(builder.load(builder.gep(x_p, [builder.sext(builder.load(builder.gep(idx_p, [k])), _I64)])))
            builder.store(builder.call(fma, [vload(vals_p, builder.mul(k, c64(GROUP))), xs, builder.load(accs[u])]),
                          accs[u])
        n = builder.sub(k1_, k0_)
        k_main = builder.sub(k1_, builder.srem(n, c64(nu)))
        with cgutils.for_range_slice(builder, k0_, k_main, c64(nu)) as (k, _):
            for u in range(nu):
                step(builder.add(k, c64(u)), u)
        with cgutils.for_range_slice(builder, k_main, k1_, c64(1)) as (k, _):
            step(k, 0)
        y = vload(bias_p, o0_)
        for u in range(nu):
            y = builder.fadd(y, builder.load(accs[u]))
        t = _activation(builder, GROUP, act_p, ir.Constant(ir.IntType(1), 0))(y)
        for g in range(GROUP):
            row = builder.add(o0_, c64(g))
            with builder.if_then(builder.icmp_signed("<", row, cout)):
                builder.store(builder.extract_element(t, ir.Constant(_I32, g)), builder.gep(out_p, [row]))
        return context.get_dummy_value()

    sig = types.void(U, x, vals, idx, k0, k1, bias, act, out, o0)
    return sig, codegen


@njit(inline="always")
def _is_clamp(act):
    """act f32[5] is a plain clamp (a = 1, b = 0, m = 0): see _activation."""
    return act[0] == 1 and act[1] == 0 and act[4] == 0


@njit(inline="always")
def _tile(x, vals, idx, k0, k1, bias, act, clamp, out, res, o0, j0, jo, jend):
    """_gemm_tile on the pixels from j0 on: V_TILE vectors, masked only where they pass jend,
    and a single masked vector where one holds the pixels left: EfficientNet-Lite0's and
    PP-LCNet's 14 x 14 maps end in a tile of 4 pixels (of 32, with AVX-512), their 28 x 28 maps
    and 112-wide rows in one of 16."""
    if j0 + LANES * V_TILE <= jend:
        _gemm_tile(LANES, V_TILE, False, x, vals, idx, k0, k1, bias, act, clamp, out, res, o0, j0, jo, jend)
    elif j0 + LANES >= jend:
        _gemm_tile(LANES, 1, True, x, vals, idx, k0, k1, bias, act, clamp, out, res, o0, j0, jo, jend)
    else:
        _gemm_tile(LANES, V_TILE, True, x, vals, idx, k0, k1, bias, act, clamp, out, res, o0, j0, jo, jend)


GEMV_ACCS = 4  # accumulators of _gemv_block
TILES_PER_ITEM = 8  # pixel tiles per parallel work item


@njit(inline="always")
def _pixel_chunks(P):
    """Pixel chunks of at most TILES_PER_ITEM tiles that conv_gemm needs for P pixels, before
    rounding their count to the pool's threads; one chunk is split between threads by row
    blocks (output channels), more by pixels."""
    return ((P + LANES * V_TILE - 1) // (LANES * V_TILE) + TILES_PER_ITEM - 1) // TILES_PER_ITEM


@njit(cache=True, nogil=True, fastmath=True, parallel=True)
def conv_gemm(x, vals, idx, ptr, bias, act, out, res=None):
    """out f32[Cout, P] = act(W @ x + bias) (+ res f32[Cout, P], a residual, when given) for
    x f32[K, P], W [Cout, K] in the block layout (vals f32[nnz, GROUP], idx i32[nnz], ptr
    i32[nb + 1], nb = ceil(Cout / GROUP)); bias f32[nb * GROUP]; act f32[5]. All C-contiguous.
    Work items: (pixel chunk, row block), chunk major, so a chunk of x stays in cache while
    every block passes over it; the residual is added to each tile before its store. Chunks of
    at most TILES_PER_ITEM tiles, all of about one size, their count a multiple of the thread
    pool's (NUMBA_NUM_THREADS, fixed when compiled), or a single chunk that the threads share by
    row blocks: 2 threads on a 28x28 map used to get 16 and 9 of its 25 tiles (40x240x784,
    0.117 -> 0.078 ms). A single pixel (P = 1) runs _gemv_block per row block instead."""
    nb = ptr.shape[0] - 1
    P = x.shape[1]
    if vals.shape[1] != GROUP or out.shape[1] != P or out.shape[0] > nb * GROUP or bias.shape[0] < nb * GROUP:
        raise ValueError("conv_gemm: shapes do not match")
    if res is not None and res.shape != out.shape:
        raise ValueError("conv_gemm: the residual's shape does not match the output's")
    if P == 1:  # one pixel (a squeeze-excite or head on a 1x1 map): the rows along the vector
        for b in prange(nb):
            _gemv_block(GEMV_ACCS, x, vals, idx, ptr[b], ptr[b + 1], bias, act, out, b * GROUP)
        if res is not None:
            out += res
        return
    clamp = _is_clamp(act)
    width = LANES * V_TILE
    ntiles = (P + width - 1) // width
    nchunks = _pixel_chunks(P)
    if nchunks > 1:  # a multiple of the pool's threads, of equal size: each thread gets as many tiles
        nchunks += -nchunks % config.NUMBA_NUM_THREADS
    for item in prange(nchunks * nb):
        c = item // nb
        b = item - c * nb
        k0, k1 = ptr[b], ptr[b + 1]
        for t in range(c * ntiles // nchunks, (c + 1) * ntiles // nchunks):
            j = t * width
            _tile(x, vals, idx, k0, k1, bias, act, clamp, out, res, b * GROUP, j, j, P)


_DW_TILE_ARGS = ("L", "R", "KH", "SH", "SW", "masked", "src", "zero", "base", "pitch", "ih0", "sh", "dh", "H", "kh",
                 "coff", "W", "w", "w0", "bias", "act", "clamp", "j0", "out", "dst0", "ow", "nvalid", "nrows")


@intrinsic(prefer_literal=True)
def _dw_tile(typingctx, L, R, KH, SH, SW, masked, src, zero, base, pitch, ih0, sh, dh, H, kh, coff, W, w, w0, bias, act,
             clamp, j0, out, dst0, ow, nvalid, nrows):
    """One depthwise tile, R output rows x L columns: for r < min(R, nrows), l < min(L, nvalid),
    out[dst0 + r*ow + l] = act(bias + sum over i < kh, j < len(coff) of w[w0 + i*len(coff) + j]
    * row(ih0 + r*sh + i*dh)[SW*(j0 + l) + coff[j]]), where row(ih) = src[base + ih*pitch:] for
    0 <= ih < H and zero (zeros) otherwise. A tap's SW*L columns from SW*j0 + coff[j] on are
    loaded as SW vectors (lanes 0, SW, ... picked by a shuffle when SW = 2); masked: those
    outside [0, W) read 0 (masked loads), else all must lie inside src. src, zero, w, out f32
    C-contiguous (flat indices), coff i64, bias f32, act f32[5] (clamp: as in _activation); L lanes, R rows, KH, SH,
    SW (1 or 2) and masked literals. The R accumulators stay in registers over all taps; one
    store per row. KH > 0 promises kh == KH, sh == SH and dh == 1: the tap rows are then
    unrolled and each of the (R - 1)*SH + KH image rows is loaded once per tap column for all
    the outputs that use it (R*KH loads become R + KH - 1 at stride 1)."""
    if not all(isinstance(a, (types.IntegerLiteral, types.BooleanLiteral)) for a in (L, R, KH, SH, SW, masked)):
        return None
    nl, nr, nkh, nsh, nsw = L.literal_value, R.literal_value, KH.literal_value, SH.literal_value, SW.literal_value
    msk = bool(masked.literal_value)
    if nsw not in (1, 2):
        return None

    def codegen(context, builder, sig, args):
        fv = ir.VectorType(_F32, nl)
        iv = ir.VectorType(_I64, nl)
        arg = dict(zip(_DW_TILE_ARGS, args))
        arr = {k: _ptr(context, builder, ty, arg[k]) for k, ty in zip(_DW_TILE_ARGS, sig.args)
               if isinstance(ty, types.Array)}
        src_p, zero_p, coff_p, w_p, act_p, out_p = (arr[k] for k in ("src", "zero", "coff", "w", "act", "out"))
        kw = cgutils.unpack_tuple(builder, context.make_array(sig.args[_DW_TILE_ARGS.index("coff")])(
            context, builder, arg["coff"]).shape, 1)[0]
        base_, pitch_, ih0_, sh_, dh_, H_, kh_, W_, w0_, j0_, dst0_, ow_, nvalid_, nrows_ = (
            builder.sext(arg[k], _I64) if arg[k].type.width < 64 else arg[k]
            for k in ("base", "pitch", "ih0", "sh", "dh", "H", "kh", "W", "w0", "j0", "dst0", "ow", "nvalid", "nrows"))

        def c64(v):
            return ir.Constant(_I64, v)

        fma, _, _, mload, mstore = _vector_fns(builder, nl)
        ptrty = fv.as_pointer()

        def splat(s, ty=fv):
            v = builder.insert_element(ir.Constant(ty, ir.Undefined), s, ir.Constant(_I32, 0))
            return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, nl), [0] * nl))

        zero = ir.Constant(fv, [0.0] * nl)
        lane = ir.Constant(iv, list(range(nl)))
        accs = [cgutils.alloca_once_value(builder, splat(arg["bias"])) for _ in range(nr)]

        def row(ih):  # image row ih's base pointer, or the zero row's
            return builder.select(builder.icmp_unsigned("<", ih, H_),
                                  builder.gep(src_p, [builder.add(base_, builder.mul(ih, pitch_))]), zero_p)

        def tap_column(rows, uses, j):
            """Tap column j: for each row q, acc[r] += wv * (its L columns in rows[q]) for (r, wv) in uses[q]."""
            offs = [builder.add(builder.add(builder.mul(j0_, c64(nsw)), builder.load(builder.gep(coff_p, [j]))),
                                c64(s * nl)) for s in range(nsw)]
            if msk:
                live = [builder.icmp_unsigned("<", builder.add(splat(o, iv), lane), splat(W_, iv)) for o in offs]
            for q, row_ in enumerate(rows):
                xs = []
                for s, o in enumerate(offs):
                    p = builder.bitcast(builder.gep(row_, [o]), ptrty)
                    xs.append(builder.call(mload, [p, ir.Constant(_I32, 4), live[s], zero]) if msk
                              else builder.load(p, align=4))
                xv = xs[0] if nsw == 1 else builder.shuffle_vector(xs[0], xs[1], ir.Constant(
                    ir.VectorType(_I32, nl), list(range(0, 2 * nl, 2))))
                for r, wv in uses[q]:
                    builder.store(builder.call(fma, [xv, wv, builder.load(accs[r])]), accs[r])

        def weight(i, j):
            return splat(builder.load(builder.gep(w_p, [builder.add(w0_, builder.add(builder.mul(i, kw), j))])))

        if nkh:  # image row ih0 + q serves tile row r = (q - i) / SH with tap row i
            rows = [row(builder.add(ih0_, c64(q))) for q in range((nr - 1) * nsh + nkh)]
            with cgutils.for_range(builder, kw) as lj:
                wvs = [weight(c64(i), lj.index) for i in range(nkh)]
                tap_column(rows, [[((q - i) // nsh, wvs[i]) for i in range(nkh)
                                   if (q - i) % nsh == 0 and 0 <= (q - i) // nsh < nr] for q in range(len(rows))],
                           lj.index)
        else:
            with cgutils.for_range(builder, kh_) as li:
                i = li.index
                rows = [row(builder.add(ih0_, builder.add(builder.mul(sh_, c64(r)), builder.mul(dh_, i))))
                        for r in range(nr)]
                with cgutils.for_range(builder, kw) as lj:
                    wv = weight(i, lj.index)
                    tap_column(rows, [[(r, wv)] for r in range(nr)], lj.index)
        activate = _activation(builder, nl, act_p, context.cast(builder, arg["clamp"], sig.args[
            _DW_TILE_ARGS.index("clamp")], types.boolean))
        stored = builder.icmp_signed("<", lane, splat(nvalid_, iv))
        full = builder.icmp_signed(">=", nvalid_, c64(nl))
        for r in range(nr):
            with builder.if_then(builder.icmp_signed("<", c64(r), nrows_)):
                v = activate(builder.load(accs[r]))
                dst = builder.bitcast(builder.gep(out_p, [builder.add(dst0_, builder.mul(ow_, c64(r)))]), ptrty)
                with builder.if_else(full) as (then, otherwise):
                    with then:
                        builder.store(v, dst, align=4)
                    with otherwise:
                        builder.call(mstore, [v, dst, ir.Constant(_I32, 4), stored])
        return context.get_dummy_value()

    sig = types.void(L, R, KH, SH, SW, masked, src, zero, base, pitch, ih0, sh, dh, H, kh, coff, W, w, w0, bias, act,
                     clamp, j0, out, dst0, ow, nvalid, nrows)
    return sig, codegen


@njit(inline="always")
def _split_row(buf, d, starts, x, s0, W, sw):
    """buf[d + starts[b] + k] = x[s0 + b + sw*k] for b < sw, b + sw*k < W: one image row into
    its sw column phases. Unsigned indices, stride 2 written out, and phases far apart in buf
    (LLVM's overlap check) let LLVM vectorize it."""
    if sw == 2:
        d0, d1 = d + starts[0], d + starts[1]
        for k in range(W // 2):
            buf[np.uint64(d0 + k)] = x[np.uint64(s0 + 2 * k)]
            buf[np.uint64(d1 + k)] = x[np.uint64(s0 + 2 * k + 1)]
        if W % 2:
            buf[np.uint64(d0 + W // 2)] = x[np.uint64(s0 + W - 1)]
        return
    for b in range(sw):
        db = d + starts[b]
        for k in range((W - b + sw - 1) // sw):
            buf[np.uint64(db + k)] = x[np.uint64(s0 + b + sw * k)]


@njit(inline="always")
def _zeros(n):
    """np.zeros(n, np.float32) for a parallel kernel: there np.zeros is a parallel loop of its
    own, a region the threads are woken for (2 us on 2 threads, 0.8 us on 1, per call)."""
    z = np.empty(n, np.float32)
    for j in range(n):
        z[j] = 0
    return z


@njit(inline="always")
def _phases(H, W, OW, kw, sw, pl, dw):
    """Layout of an H x W image split into sw zero-padded column phases, phase b holding padded
    columns b, b + sw, ... (pl zeros on the left, enough on the right for OW outputs of kw
    taps): QW floats per phase row; plane, floats per phase (H rows, LANES spare so that a
    tile may run past its row); coff[j], offset of tap column j's first output column from its
    row's start; starts[b], where image column b lands (b + sw*k at starts[b] + k)."""
    QW = (max(W + pl, (OW - 1) * sw + (kw - 1) * dw + 1) + sw - 1) // sw
    plane = H * QW + LANES
    coff = np.empty(kw, np.int64)
    for j in range(kw):
        coff[j] = ((j * dw) % sw) * plane + (j * dw) // sw
    starts = np.empty(sw, np.int64)
    for b in range(sw):
        starts[b] = ((b + pl) % sw) * plane + (b + pl) // sw
    return QW, plane, coff, starts


@njit(inline="always")
def _phase_split(buf, d, QW, starts, x, s0, H, W, sw):
    """The H x W image x[s0:] into its column phases at buf[d:] (layout: _phases); the
    padding is left as it is."""
    for r in range(H):
        _split_row(buf, d + r * QW, starts, x, s0 + r * W, W, sw)


DW_LANES = 8  # columns per depthwise tile at a row's end; LANES before it (_dw_channel)
DW_ROWS = 7  # output rows per depthwise tile (its accumulators). 7 divides the 7-, 14-, 28-, 56- and 112-row
#             maps of ImageNet CNNs; 8-row tiles computed 16 rows for 14. AMD EPYC (Zen 4), 1 thread: 256 x 14 x 14
#             5x5 0.048 -> 0.041 ms, 256 x 14 -> 7 5x5 stride 2 0.030 -> 0.027 ms, 128 x 28 x 28 3x3 0.045 -> 0.043
#             ms; 64 x 56 x 56 3x3 0.069 -> 0.072 ms (a load more per 7 rows, not 8). Both heights at once, chosen
#             per map, ran as fast but took 107 s more to compile (EfficientNet-Lite0's first run: 67 -> 174 s)
SPLIT_MIN_WIDTH = 48  # stride-2 depthwise convs with 5 or more tap columns on images this wide read column
#                     phases: 144 x 56 x 56 5x5 -> 28, 1 thread, 0.19-0.22 -> 0.17 ms. With 3 tap columns the
#                     split costs more than it saves at any width (96 x 112 x 112 3x3 -> 56: 0.22 -> 0.28-0.39
#                     ms), and on 28- and 14-wide images even with 5 (5x5 14 -> 7: 0.069 -> 0.090 ms)
DW_ITEMS = 8  # parallel work items (with column phases, each zeroes its own buffer once)


@njit(inline="always")
def _dw_tile_at(L, KH, SH, SW, src, zero, base, pitch, pt, sh, dh, H, kh, coff, W, w, w0, bias, act, clamp, out, dst0,
                OH, OW, lo, hi, oh0, j0):
    """The tile of DW_ROWS rows x L columns at output (oh0, j0) of one channel (out[dst0:], OH x
    OW): plain loads if its loaded columns SW*j0 + [0, SW*L) lie in [lo, hi), else masked."""
    d = dst0 + oh0 * OW + j0
    if lo <= SW * j0 and SW * (j0 + L) <= hi:
        _dw_tile(L, DW_ROWS, KH, SH, SW, False, src, zero, base, pitch, oh0 * sh - pt, sh, dh, H, kh, coff, W, w, w0,
                 bias, act, clamp, j0, out, d, OW, OW - j0, OH - oh0)
    else:
        _dw_tile(L, DW_ROWS, KH, SH, SW, True, src, zero, base, pitch, oh0 * sh - pt, sh, dh, H, kh, coff, W, w, w0,
                 bias, act, clamp, j0, out, d, OW, OW - j0, OH - oh0)


@njit(inline="always")
def _dw_channel(KH, SH, SW, src, zero, base, pitch, pt, sh, dh, H, kh, coff, W, w, w0, bias, act, out, dst0, OH, OW,
                lo, hi):
    """Every tile of one output channel (out[dst0:], OH x OW). Along a row, tiles are LANES
    columns wide while more than DW_LANES remain, then DW_LANES wide: as many columns as
    DW_LANES-wide tiles compute, in fewer instructions with AVX-512 (56 = 16 + 16 + 16 + 8;
    with AVX2 both are 8). Measured on an AVX-512 Xeon, 1 thread: 256 x 14 x 14 5x5 0.098 ->
    0.040 ms, 64 x 28 x 28 3x3 0.038 -> 0.022 ms, 16 x 112 x 112 3x3 0.104 -> 0.058 ms, 64 x
    56 x 56 3x3 0.102 -> 0.069 ms. 16-lane tiles everywhere would compute 16 columns for 7
    (once on an AMD EPYC, Zen 4, which splits 16-lane operations in two, that made
    EfficientNet-Lite0's depthwise layers 5% slower)."""
    clamp = _is_clamp(act)
    for oh0 in range(0, OH, DW_ROWS):
        j0 = 0
        while j0 < OW:
            if LANES > DW_LANES and OW - j0 > DW_LANES:
                _dw_tile_at(LANES, KH, SH, SW, src, zero, base, pitch, pt, sh, dh, H, kh, coff, W, w, w0, bias, act,
                            clamp, out, dst0, OH, OW, lo, hi, oh0, j0)
                j0 += LANES
            else:
                _dw_tile_at(DW_LANES, KH, SH, SW, src, zero, base, pitch, pt, sh, dh, H, kh, coff, W, w, w0, bias,
                            act, clamp, out, dst0, OH, OW, lo, hi, oh0, j0)
                j0 += DW_LANES


def _dw_tile_kind(kh, sh, sw, dh):
    """(KH, SH, SW), the literals of _dw_channel's tiles for a kernel of height kh, row stride
    sh and row dilation dh whose tiles load every sw-th column (1 or 2; 1 where the image was
    split into column phases): unrolled for 3x3 and 5x5 at row stride 1 (column stride 1) or 2
    (column stride 1 or 2) without row dilation, else the general tile (0, 0, sw)."""
    if dh == 1 and kh in (3, 5) and (sh == 2 or (sh == 1 and sw == 1)):
        return int(kh), int(sh), int(sw)
    return 0, 0, int(sw)


@njit(inline="always")
def _direct_columns(kw, pl, dw, W):
    """For tiles that read the image itself (column stride 1 or 2): coff[j] = j*dw - pl and the
    range [lo, hi) of loaded columns for which no tap leaves the image (see _dw_channel)."""
    coff = np.empty(kw, np.int64)
    for j in range(kw):
        coff[j] = j * dw - pl
    return coff, pl, W + pl - (kw - 1) * dw


def depthwise_conv(x, w, bias, kh, kw, sh, sw, pt, pl, dh, dw, act, out):
    """out f32[C, OH, OW] = act(bias[c] + sum over i < kh, j < kw of w[c, i*kw + j] *
    x[c, oh*sh - pt + i*dh, ow*sw - pl + j*dw]) (0 outside the image); x f32[C, H, W],
    w f32[C, kh*kw], bias f32[C], act f32[5]; x, w, out C-contiguous.

    In tiles of DW_ROWS output rows x LANES or DW_LANES columns (_dw_tile, _dw_channel); taps
    in rows outside the image read a zero row. Column stride 1, or 2 with fewer than 5 tap
    columns or on images narrower than SPLIT_MIN_WIDTH: the tiles read x itself, with masked
    loads where a tap's columns leave the image. Kernel heights 3 and 5 at row stride 1 or 2
    (no row dilation) have their own unrolled tiles. Otherwise each channel is first split
    into sw zero-padded column phases (_phase_split), so that a tap's columns in a tile are
    contiguous in phase (j*dw) % sw from (j*dw) // sw on.

    Each tile variant is its own Numba kernel (_depthwise_kernel), compiled on first use, as
    are conv_gemm_dw's: with every variant inlined into one kernel, the first run of
    EfficientNet-Lite0 or PP-LCNet spent 62 s compiling, against 25-33 s now."""
    split = sw > 2 or (sw == 2 and kw >= 5 and x.shape[2] >= SPLIT_MIN_WIDTH)
    kernel = _depthwise_kernel(*_dw_tile_kind(kh, sh, 1 if split else sw, dh), split)
    kernel(x, w, bias, kh, kw, sh, sw, pt, pl, dh, dw, act, out)


@functools.cache
def _depthwise_kernel(KH, SH, SW, split):
    """depthwise_conv's Numba kernel for one tile variant (_dw_tile_kind), on column phases
    (split) or on the image itself. Work items: runs of channels (every row), or, on the image
    itself where conv_gemm_dw would take strips (_strips: the conv before it and the 1x1 conv
    after it split their maps between threads by pixels), bands of output rows (every
    channel), so that each thread reads the rows its core wrote and writes the rows it will
    read. 2 threads, 70% sparse, in the network: the 16 x 112 x 112 depthwise conv of PP-LCNet
    and the 1x1 conv after it 42 + 90 -> 42 + 87 us, EfficientNet-Lite0's 32 x 112 x 112 83 +
    43 -> 78 + 35 us (alone, the conv itself runs 2-3 us slower in bands)."""
    @njit(cache=True, nogil=True, fastmath=True, parallel=True)
    def kernel(x, w, bias, kh, kw, sh, sw, pt, pl, dh, dw, act, out):
        C, H, W = x.shape
        OH, OW = out.shape[1], out.shape[2]
        if w.shape[0] != C or w.shape[1] != kh * kw or out.shape[0] != C or bias.shape[0] < C:
            raise ValueError("depthwise_conv: shapes do not match")
        xf = x.reshape(-1)
        QW, plane, coff, starts = _phases(H, W, OW, kw, sw if split else 1, pl, dw)
        pitch, lo, hi = QW, 0, 1 << 62  # from phases: every tile reads inside them
        if not split:  # the tiles read x itself
            pitch = W
            coff, lo, hi = _direct_columns(kw, pl, dw, W)
        zero = _zeros(pitch + 2 * LANES + ((sw - 1) * plane if split else 0))  # the zero row
        if not split and _strips(H, W, OH, config.NUMBA_NUM_THREADS):  # bands of output rows, every channel
            tiles = (OH + DW_ROWS - 1) // DW_ROWS
            n_bands = min(tiles, DW_ITEMS)
            for item in prange(n_bands):
                o0 = item * tiles // n_bands * DW_ROWS
                o1 = min(OH, (item + 1) * tiles // n_bands * DW_ROWS)
                for c in range(C):
                    _dw_channel(KH, SH, SW, xf, zero, c * H * W, pitch, pt - o0 * sh, sh, dh, H, kh, coff, W, w,
                                c * kh * kw, bias[c], act, out, (c * OH + o0) * OW, o1 - o0, OW, lo, hi)
            return
        n_items = min(C, DW_ITEMS)
        for item in prange(n_items):
            buf = _zeros(sw * plane if split else 0)
            src = buf if split else xf
            for c in range(item * C // n_items, (item + 1) * C // n_items):
                base = c * H * W
                if split:
                    _phase_split(buf, 0, QW, starts, xf, base, H, W, sw)
                    base = 0
                _dw_channel(KH, SH, SW, src, zero, base, pitch, pt, sh, dh, H, kh, coff, W, w, c * kh * kw,
                            bias[c], act, out, c * OH * OW, OH, OW, lo, hi)
    return kernel


GEMM_DW_CHANNELS = 32  # channels per step of a conv_gemm_dw band (expanded, then convolved, in cache)
GEMM_DW_BYTES = 256 << 10  # a step's share of its band buffer, at most (unless one tile high)
GEMM_DW_SLACK = 5  # quarters of an even share of row blocks that one work item may take (see _runs)
DW_COST = 1.4  # a depthwise multiply-add's time in GEMM-tile multiply-adds (the tile's issue rate: ~70%)


@njit(cache=True)
def _band_rows(out_rows, h, kh, sh, dh):
    """Map rows that out_rows output rows of a depthwise conv read (at most h)."""
    return min(h, (out_rows - 1) * sh + (kh - 1) * dh + 1)


def gemm_dw_scratch(c, h, w, oh, kh, sh, dh):
    """Shape of conv_gemm_dw's work space for an expanded map [c, h, w] under a depthwise kernel
    of height kh, row stride sh, row dilation dh, oh output rows: (items, GROUP * most, n),
    items = min(nb, threads Numba may run), nb = ceil(c / GROUP); per work item a band buffer
    of n floats for each of `most` row blocks: all nb where the items take strips of output
    rows (_strips), else ceil(nb * GEMM_DW_SLACK / 4 / items) (at most nb). n: the map rows a
    band of output rows reads, plus LANES for alignment. A band is a multiple of DW_ROWS output
    rows, as many as keep GEMM_DW_CHANNELS channels of it (runs), or every channel (strips,
    which keep the rows the next band reads too for all of them), within GEMM_DW_BYTES (at
    least DW_ROWS, at most all): sized by 32 channels, a strip's buffer on EfficientNet-Lite0's
    144 x 56 x 56 map took 1.1 MB per thread and pushed the map it writes out of L2 before the
    next op read it (that op, 2 threads, 70%: 0.058 -> 0.043 ms with the smaller bands)."""
    nb = -(-c // GROUP)
    items = max(1, min(nb, config.NUMBA_NUM_THREADS))
    strips = _strips(h, w, oh, items)
    most = nb if strips else min(nb, -(-nb * GEMM_DW_SLACK // (4 * items)))  # see _runs
    chans = most * GROUP if strips else GEMM_DW_CHANNELS  # the channels whose band rows stay in cache
    rows = DW_ROWS
    while rows < oh and chans * 4 * w * _band_rows(rows + DW_ROWS, h, kh, sh, dh) <= GEMM_DW_BYTES:
        rows += DW_ROWS
    n = _band_rows(rows, h, kh, sh, dh) * w + LANES
    return items, most * GROUP, -(-n // LANES) * LANES


@njit(cache=True)
def _strips(h, w, oh, items):
    """Whether conv_gemm_dw's `items` work items take strips of its oh output rows (every
    channel) rather than runs of channels (every row) on an h x w input: where conv_gemm, the
    likely producer of that input, splits it between threads by pixels (_pixel_chunks), or
    conv_gemm_dw by strips, and each strip is at least 3/4 of a
    depthwise tile high. A strip's input rows were then written by its own thread, while a
    run of channels reads every input channel, half of them from the other core's cache
    (PP-LCNet's five fused ops, 2 threads, 70% sparsity: 0.53 -> 0.43 ms in the network). On
    smaller inputs conv_gemm splits by channels, and strips would read as much from the other
    core and recompute the rows they share (EfficientNet-Lite0's 112 -> 672 at 14 x 14, 70%,
    kernel alone: 0.103 ms in runs, 0.13-0.18 ms in strips)."""
    return items > 1 and _pixel_chunks(h * w) > 1 and 4 * oh >= 3 * items * DW_ROWS


@njit(inline="always")
def _runs(ptr, items, most, per_nz, per_block):
    """Boundaries i64[items + 1] of `items` runs of row blocks, of at most `most` blocks each,
    cutting where the cost so far, cost(b) = (ptr[b] - ptr[0]) * per_nz + b * per_block, comes
    nearest to an even share of the whole: a pruned expand's blocks keep unequal counts of
    columns. A cut moves past b while cost(b) and cost(b + 1) average below the share."""
    nb = ptr.shape[0] - 1
    bounds = np.empty(items + 1, np.int64)
    bounds[0], bounds[items] = 0, nb
    b = 0
    for i in range(1, items):
        twice = 2 * ((ptr[nb] - ptr[0]) * per_nz + nb * per_block) * i / items  # twice the share
        while b < nb and (ptr[b] + ptr[b + 1] - 2 * ptr[0]) * per_nz + (2 * b + 1) * per_block < twice:
            b += 1
        bounds[i] = min(max(b, nb - (items - i) * most), bounds[i - 1] + most)
    return bounds


@njit(inline="always")
def _move_down(buf, d, shift, n):
    """buf[d : d + n] = buf[d + shift : d + shift + n], shift > 0 (front to back, so the two may
    overlap); unsigned indices let LLVM vectorize it where they do not."""
    for t in range(n):
        buf[np.uint64(d + t)] = buf[np.uint64(d + shift + t)]


def conv_gemm_dw(x, vals, idx, ptr, bias, act, w, dbias, kh, kw, sh, sw, pt, pl, dh, dw, dact, scratch, out):
    """A 1x1 conv and the depthwise conv that reads its output, without the whole intermediate
    map: out f32[C, OH, OW] = depthwise_conv(m, w, dbias, kh, kw, sh, sw, pt, pl, dh, dw, dact)
    of m f32[C, H, W] = conv_gemm(x, vals, idx, ptr, bias, act) for x f32[K, H, W] (block
    layout as conv_gemm's, C <= nb * GROUP rows); column stride sw 1 or 2; scratch as
    gemm_dw_scratch gives it. All C-contiguous.

    Work item i (scratch[i], one per thread) takes a strip of output rows and every channel
    (_strips), or on small or low maps a run of row blocks (channels) and every row, so that
    no work is done twice; runs are of about equal cost, not length (_runs). It goes down its
    rows in bands (a multiple of DW_ROWS rows, the depthwise tile's height: as many as the
    buffer holds) and computes the map rows each band reads into its buffer -- the rows the previous band read
    too are moved up, not recomputed -- GEMM_DW_CHANNELS channels at a time, each expanded
    (_gemm_tile) then convolved (_dw_channel) while in cache. A channel's buffer holds the map's
    flat pixels from a0 on, a0 a multiple of LANES at or before the band's first row, so that
    the GEMM tiles' vectors are aligned as in conv_gemm.

    Measured on EfficientNet-Lite0 (1 thread): it pays only where the expanded map is much
    larger than L2 (the 16 -> 96 expand at 112 x 112, 4.8 MB, and the stride-2 depthwise conv
    after it: 0.78 -> 0.70 ms dense, 0.73 -> 0.59 ms at 30% group sparsity); on maps that stay
    in cache it runs 0-7% slower than the two kernels apart."""
    if sw not in (1, 2):
        raise ValueError(f"conv_gemm_dw: column stride {sw}; 1 or 2 only")
    kernel = _gemm_dw_kernel(*_dw_tile_kind(kh, sh, sw, dh))
    kernel(x, vals, idx, ptr, bias, act, w, dbias, kh, kw, sh, sw, pt, pl, dh, dw, dact, scratch, out)


@functools.cache
def _gemm_dw_kernel(KH, SH, SW):
    """conv_gemm_dw's Numba kernel for one depthwise tile variant (_dw_tile_kind)."""
    @njit(cache=True, nogil=True, fastmath=True, parallel=True)
    def kernel(x, vals, idx, ptr, bias, act, w, dbias, kh, kw, sh, sw, pt, pl, dh, dw, dact, scratch, out):
        K, H, W = x.shape
        C, OH, OW = out.shape
        nb = ptr.shape[0] - 1
        items, cap, RW = scratch.shape
        if (vals.shape[1] != GROUP or C > nb * GROUP or bias.shape[0] < nb * GROUP or w.shape[0] != C
                or w.shape[1] != kh * kw or dbias.shape[0] < C or items * cap < nb * GROUP
                or RW < _band_rows(DW_ROWS, H, kh, sh, dh) * W + LANES):
            raise ValueError("conv_gemm_dw: shapes do not match")
        strips = _strips(H, W, OH, items)
        if strips and cap < nb * GROUP:
            raise ValueError("conv_gemm_dw: a work space for runs of channels, not strips of rows")
        BR = DW_ROWS  # output rows per band: as many as the buffer holds
        while BR < OH and _band_rows(BR + DW_ROWS, H, kh, sh, dh) * W + LANES <= RW:
            BR += DW_ROWS
        x2 = x.reshape(K, H * W)
        clamp = _is_clamp(act)
        width = LANES * V_TILE
        coff, lo, hi = _direct_columns(kw, pl, dw, W)
        zero = _zeros(W + 2 * LANES)
        outf = out.reshape(-1)
        step = GEMM_DW_CHANNELS // GROUP  # row blocks per step
        runs = _runs(ptr, 1 if strips else items, cap // GROUP, H * W, DW_COST * OH * OW * kh * kw)
        for item in prange(items):
            buf = scratch[item]
            bufl = buf.reshape(-1)
            first, last, r0, r1 = 0, nb, OH * item // items, OH * (item + 1) // items  # row blocks, output rows
            if not strips:
                first, last, r0, r1 = runs[item], runs[item + 1], 0, OH
            a0, s_lo, s_hi = 0, 0, 0  # buf's first pixel; the map rows it holds: [s_lo, s_hi)
            for o0 in range(r0, r1, BR):
                o1 = min(r1, o0 + BR)
                r_lo = min(H, max(0, o0 * sh - pt))
                r_hi = max(r_lo, min(H, (o1 - 1) * sh - pt + (kh - 1) * dh + 1))
                keep = max(0, min(s_hi, r_hi) - r_lo) if s_lo <= r_lo else 0  # rows [r_lo, r_lo + keep) held
                a1 = r_lo * W - (r_lo * W) % LANES
                j_lo, j_hi = (r_lo + keep) * W, r_hi * W
                j_lo -= (j_lo - a1) % LANES  # an aligned start (recomputing a few held pixels)
                ntiles = (j_hi - j_lo + width - 1) // width
                for b0 in range(first, last, step):
                    b1 = min(last, b0 + step)
                    if keep and a1 != a0:
                        for c in range((b0 - first) * GROUP, (b1 - first) * GROUP):
                            _move_down(bufl, c * RW + r_lo * W - a1, a1 - a0, keep * W)
                    for t0 in range(0, ntiles, TILES_PER_ITEM):
                        for b in range(b0, b1):
                            for t in range(t0, min(ntiles, t0 + TILES_PER_ITEM)):
                                j = j_lo + t * width
                                o = (b - first) * GROUP
                                _tile(x2, vals, idx, ptr[b], ptr[b + 1], bias[b * GROUP:], act, clamp, buf[o:], None,
                                      0, j, j - a1, j_hi)
                    for c in range(b0 * GROUP, min(C, b1 * GROUP)):
                        _dw_channel(KH, SH, SW, bufl, zero, (c - first * GROUP) * RW + r_lo * W - a1, W,
                                    pt + r_lo - o0 * sh, sh, dh, r_hi - r_lo, kh, coff, W, w, c * kh * kw, dbias[c],
                                    dact, outf, (c * OH + o0) * OW, o1 - o0, OW, lo, hi)
                a0, s_lo, s_hi = a1, r_lo, r_hi
    return kernel


SPLIT_BANDS = 8  # parallel work items of conv_direct's column split (bands of rows, all channels)


@njit(cache=True, nogil=True, fastmath=True, parallel=True)
def conv_direct(x, kh, kw, sh, sw, pt, pl, dh, dw, vals, idx, ptr, bias, act, out):
    """out f32[Cout, OH, OW] = act(W @ cols + bias) for cols f32[C*kh*kw, OH*OW] the im2col
    columns of x f32[C, H, W] (row (c*kh + i)*kw + j holds x[c, oh*sh - pt + i*dh, ow*sw - pl +
    j*dw], 0 outside the image), W [Cout, C*kh*kw] in conv_gemm's block layout (one group);
    act f32[5]. All C-contiguous.

    The columns are never written: x is split once into sw zero-padded column phases with pt
    zero rows above (_phases), where every column row is a run of OW floats per output row,
    oh*sh*QW apart. idx is mapped to those runs' offsets at output (0, 0), and the GEMM tile
    reads them from the phase buffer as if it were cols (a one-column x whose row index is the
    offset). Work items: (output row, row block), row major, so each thread takes a band of
    output rows; the split before it goes by bands of rows too (SPLIT_BANDS, every channel), so
    each thread reads the rows its own core wrote (and zeroed: no serial memset first). On
    2 threads, against a split by channel after np.zeros, the stem of PP-LCNet (3 -> 16,
    224 x 224, stride 2) took 98 -> 79-86 us dense and 62 -> 45 us at 70% sparsity, that of
    EfficientNet-Lite0 (3 -> 32) 181-185 -> 168 us and 98-113 -> 91 us; 1 thread as before."""
    C, H, W = x.shape
    cout, OH, OW = out.shape
    nb = ptr.shape[0] - 1
    if vals.shape[1] != GROUP or cout > nb * GROUP or bias.shape[0] < nb * GROUP:
        raise ValueError("conv_direct: shapes do not match")
    rows = max(H + pt, (OH - 1) * sh + (kh - 1) * dh + 1)
    QW, plane, coff, starts = _phases(rows, W, OW, kw, sw, pl, dw)
    buf = np.empty(C * sw * plane, np.float32)
    xf = x.reshape(-1)
    bands = min(rows, SPLIT_BANDS)
    for band in prange(bands):  # phase rows r0..r1 of every channel, zeroed, then the image rows among them
        r0, r1 = band * rows // bands, (band + 1) * rows // bands
        for c in range(C):
            for b in range(sw):
                p0 = (c * sw + b) * plane
                buf[p0 + r0 * QW:p0 + (r1 * QW if band < bands - 1 else plane)] = 0
            for r in range(max(r0, pt), min(r1, pt + H)):
                _split_row(buf, c * sw * plane + r * QW, starts, xf, (c * H + r - pt) * W, W, sw)
    off = np.empty(idx.shape[0], np.int32)
    for k in range(idx.shape[0]):
        r = idx[k]
        if r < 0 or r >= C * kh * kw:
            raise ValueError("conv_direct: a weight column outside the image's taps")
        c, i, j = r // (kh * kw), (r // kw) % kh, r % kw
        off[k] = c * sw * plane + i * dh * QW + coff[j]
    xb = buf.reshape(-1, 1)
    out2 = out.reshape(cout, OH * OW)
    clamp = _is_clamp(act)
    width = LANES * V_TILE
    for item in prange(OH * nb):
        oh = item // nb
        b = item - oh * nb
        j0 = oh * sh * QW
        for t in range(0, OW, width):
            _tile(xb, vals, off, ptr[b], ptr[b + 1], bias, act, clamp, out2, None, b * GROUP, j0 + t, oh * OW + t,
                  j0 + OW)


DENSE_COLS = 512  # output columns per parallel work item


@njit(cache=True, nogil=True, fastmath=True, parallel=True)
def dense(x, w, bias, out):
    """out f32[M, N] = x f32[M, K] @ w f32[K, N] + bias f32[N] (a dense op on a few rows; on
    one row the converter stores the weight in the block layout for conv_gemm instead).
    Parallel over column chunks; per row of x, the chunk's weight rows stream through once,
    four at a time (one pass over the accumulators per four rows)."""
    M, K = x.shape
    N = w.shape[1]
    for item in prange((N + DENSE_COLS - 1) // DENSE_COLS):
        n0 = item * DENSE_COLS
        n1 = min(N, n0 + DENSE_COLS)
        for m in range(M):
            o = out[m, n0:n1]
            o[:] = bias[n0:n1]
            for k in range(0, K - 3, 4):
                x0, x1, x2, x3 = x[m, k], x[m, k + 1], x[m, k + 2], x[m, k + 3]
                w0, w1, w2, w3 = w[k, n0:n1], w[k + 1, n0:n1], w[k + 2, n0:n1], w[k + 3, n0:n1]
                for t in range(n1 - n0):
                    o[t] += x0 * w0[t] + x1 * w1[t] + x2 * w2[t] + x3 * w3[t]
            for k in range(K - K % 4, K):
                xv = x[m, k]
                wk = w[k, n0:n1]
                for t in range(n1 - n0):
                    o[t] += xv * wk[t]
