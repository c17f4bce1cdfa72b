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
OpenBLAS on the large layers). The last, partial pixel tile uses masked loads and stores.
Bias and the activation are applied to the tile in registers before its single store.

Activations (``act`` f32[5] = a, b, lo, hi, m): y = min(max(a*x + b, lo), hi) * (x if m else 1):
identity (1, 0, -inf, inf, 0), relu (lo = 0), clip/relu6 (lo, hi), hardsigmoid (alpha, beta,
0, 1, 0), hardswish (1/6, 1/2, 0, 1, 1).
"""
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
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


@intrinsic(prefer_literal=True)
def _gemm_tile(typingctx, L, V, masked, x, vals, idx, k0, k1, bias, act, out, o0, j0):
    """out[o0 + g, j0 : j0 + V*L] = act(bias[o0 + g] + sum over k in [k0, k1) of
    vals[k, g] * x[idx[k], j0 : ...]) for g < GROUP and o0 + g < out rows. x f32[K, P],
    out f32[Cout, P], vals f32[nnz, GROUP] C-contiguous, idx i32, bias f32[>= o0 + GROUP],
    act f32[5]. L lanes, V vectors (literals); masked (literal bool): only columns < P are
    loaded and stored (the last tile), else all V*L columns must lie inside P."""
    if not all(isinstance(a, (types.IntegerLiteral, types.BooleanLiteral)) for a in (L, V, masked)):
        return None
    nl, nv, msk = L.literal_value, V.literal_value, bool(masked.literal_value)

    def codegen(context, builder, sig, args):
        fv = ir.VectorType(_F32, nl)
        bv = ir.VectorType(ir.IntType(1), nl)
        x_p, vals_p, idx_p, bias_p, act_p, out_p = (_ptr(context, builder, sig.args[k], args[k])
                                                    for k in (3, 4, 5, 8, 9, 10))
        P = cgutils.unpack_tuple(builder, context.make_array(sig.args[3])(context, builder, args[3]).shape, 2)[1]
        cout = cgutils.unpack_tuple(builder, context.make_array(sig.args[10])(context, builder, args[10]).shape,
                                    2)[0]
        k0_, k1_, o0_, j0_ = (builder.sext(a, _I64) if a.type.width < 64 else a for a in (args[6], args[7],
                                                                                           args[11], args[12]))

        def c64(v):
            return ir.Constant(_I64, v)

        def fn(name, ret, argtys):
            return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, argtys), name)
        fma = fn(f"llvm.fmuladd.v{nl}f32", fv, [fv, fv, fv])
        vmax = fn(f"llvm.maxnum.v{nl}f32", fv, [fv, fv])
        vmin = fn(f"llvm.minnum.v{nl}f32", fv, [fv, fv])
        ptrty = fv.as_pointer()
        mload = fn(f"llvm.masked.load.v{nl}f32.p0", fv, [ptrty, _I32, bv, fv])
        mstore = fn(f"llvm.masked.store.v{nl}f32.p0", ir.VoidType(), [fv, ptrty, _I32, bv])

        def splat(s):
            v = builder.insert_element(ir.Constant(fv, ir.Undefined), s, ir.Constant(_I32, 0))
            return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, nl), [0] * nl))

        def vptr(base, off):
            return builder.bitcast(builder.gep(base, [off]), ptrty)

        zero = ir.Constant(fv, [0.0] * nl)
        masks = []
        if msk:  # lane j of vector v is live iff j0 + v*L + j < P
            left = splat(builder.sitofp(builder.sub(P, j0_), _F32))
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
        a, b, lo, hi, m = (splat(builder.load(builder.gep(act_p, [c64(i)]))) for i in range(5))
        one_minus_m = builder.fsub(splat(ir.Constant(_F32, 1.0)), m)
        for g in range(GROUP):
            row = builder.add(o0_, c64(g))
            with builder.if_then(builder.icmp_signed("<", row, cout)):
                base = builder.add(builder.mul(row, P), j0_)
                for v in range(nv):
                    y = builder.load(accs[g][v])
                    t = builder.call(vmin, [builder.call(vmax, [builder.call(fma, [y, a, b]), lo]), hi])
                    t = builder.fmul(t, builder.call(fma, [y, m, one_minus_m]))
                    dst = vptr(out_p, builder.add(base, c64(v * nl)))
                    if msk:
                        builder.call(mstore, [t, dst, ir.Constant(_I32, 4), masks[v]])
                    else:
                        builder.store(t, dst, align=4)
        return context.get_dummy_value()

    sig = types.void(L, V, masked, x, vals, idx, k0, k1, bias, act, out, o0, j0)
    return sig, codegen


TILES_PER_ITEM = 8  # pixel tiles per parallel work item


@njit(cache=True, nogil=True, fastmath=True, parallel=True)
def conv_gemm(x, vals, idx, ptr, bias, act, out):
    """out f32[Cout, P] = act(W @ x + bias) for x f32[K, P], W [Cout, K] in the block layout
    (vals f32[nnz, GROUP], idx i32[nnz], ptr i32[nb + 1], nb = ceil(Cout / GROUP)); bias
    f32[nb * GROUP]; act f32[5]. All C-contiguous. Work items: (pixel chunk, row block), chunk
    major, so a chunk of x stays in cache while every block passes over it."""
    nb = ptr.shape[0] - 1
    P = x.shape[1]
    if vals.shape[1] != GROUP or out.shape[1] != P or out.shape[0] > nb * GROUP or bias.shape[0] < nb * GROUP:
        raise ValueError("conv_gemm: shapes do not match")
    width = LANES * V_TILE
    full = P // width
    ntiles = (P + width - 1) // width
    nchunks = (ntiles + TILES_PER_ITEM - 1) // TILES_PER_ITEM
    for item in prange(nchunks * nb):
        c = item // nb
        b = item - c * nb
        k0, k1 = ptr[b], ptr[b + 1]
        for t in range(c * TILES_PER_ITEM, min(ntiles, (c + 1) * TILES_PER_ITEM)):
            if t < full:
                _gemm_tile(LANES, V_TILE, False, x, vals, idx, k0, k1, bias, act, out, b * GROUP, t * width)
            else:
                _gemm_tile(LANES, V_TILE, True, x, vals, idx, k0, k1, bias, act, out, b * GROUP, t * width)


@njit(cache=True, nogil=True, fastmath=True, parallel=True)
def im2col(x, kh, kw, sh, sw, pt, pl, dh, dw, cols):
    """cols f32[C*kh*kw, OH, OW] from x f32[C, H, W]: row (c*kh + i)*kw + j holds
    x[c, oh*sh - pt + i*dh, ow*sw - pl + j*dw], 0 outside the image."""
    C, H, W = x.shape
    OH, OW = cols.shape[1], cols.shape[2]
    for r in prange(C * kh * kw):
        c = r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        for oh in range(OH):
            ih = oh * sh - pt + i * dh
            if ih < 0 or ih >= H:
                cols[r, oh, :] = 0
                continue
            for ow in range(OW):
                iw = ow * sw - pl + j * dw
                cols[r, oh, ow] = x[c, ih, iw] if 0 <= iw < W else np.float32(0)


@njit(inline="always")
def _act(y, act):
    """act applied to one value (see the module docstring)."""
    t = min(max(y * act[0] + act[1], act[2]), act[3])
    return t * (y * act[4] + (np.float32(1) - act[4]))


DW_CHUNK = 2048  # output elements accumulated at a time (8 KB, stays in L1)


@njit(cache=True, nogil=True, fastmath=True, parallel=True)
def depthwise_conv(x, w, bias, kh, kw, sh, sw, pt, pl, dh, dw, act, out):
    """out f32[C, OH, OW] = act(bias[c] + sum over i < kh, j < kw of w[c, i*kw + j] *
    x[c, oh*sh - pt + i*dh, ow*sw - pl + j*dw]) (0 outside the image); x f32[C, H, W],
    w f32[C, kh*kw], bias f32[C], act f32[5].

    Per channel, the zero-padded input is split into sh x sw phase planes (phase (a, b) holds
    padded rows a, a + sh, ... and columns b, b + sw, ...), each QH x QW. Output (oh, ow) of tap
    (i, j) then reads phase ((i*dh) % sh, (j*dw) % sw) at (oh + i*dh // sh, ow + j*dw // sw): with
    the output laid out QW wide (columns >= OW are scratch), every tap is one contiguous
    multiply-add over the flat plane, which vectorizes for any stride and dilation."""
    C, H, W = x.shape
    OH, OW = out.shape[1], out.shape[2]
    HP = max(H + pt, (OH - 1) * sh + (kh - 1) * dh + 1)
    WP = max(W + pl, (OW - 1) * sw + (kw - 1) * dw + 1)
    QH = (HP + sh - 1) // sh + 1  # one spare row: a tap's flat run may pass its last row
    QW = (WP + sw - 1) // sw
    rows = max(1, min(OH, DW_CHUNK // QW))  # output rows accumulated at a time (stays in L1)
    n_items = min(C, 64)
    ntap = kh * kw
    planes = np.zeros(ntap + 5, np.int64)  # tap t reads phase plane planes[t] at offset offs[t] (+ row start);
    offs = np.zeros(ntap + 5, np.int64)    # the 4 spare taps (weight 0) keep five-tap passes in bounds
    for t in range(ntap):
        i, j = t // kw, t % kw
        planes[t] = ((i * dh) % sh) * sw + (j * dw) % sw
        offs[t] = ((i * dh) // sh) * QW + (j * dw) // sw
    for item in prange(n_items):
        ph = np.zeros((sh * sw, QH * QW), np.float32)
        acc = np.empty(rows * QW, np.float32)
        ws = np.zeros(5, np.float32)
        for c in range(item * C // n_items, (item + 1) * C // n_items):
            for r in range(H):  # copy the image into the phase planes (padding stays 0)
                pr = r + pt
                base = (pr // sh) * QW
                for b in range(sw):
                    c0 = (b - pl) % sw  # first image column landing in phase column b
                    if c0 >= W:
                        continue
                    cnt = (W - c0 + sw - 1) // sw
                    d0 = base + (c0 + pl) // sw
                    ph[(pr % sh) * sw + b, d0:d0 + cnt] = x[c, r, c0::sw]
            for oh0 in range(0, OH, rows):
                nr = min(rows, OH - oh0)
                n = nr * QW
                dst = acc[:n]
                dst[:] = bias[c]
                for t0 in range(0, ntap, 5):  # five taps per pass over the rows
                    for u in range(5):
                        ws[u] = w[c, t0 + u] if t0 + u < ntap else np.float32(0)
                    o0 = oh0 * QW
                    s0 = ph[planes[t0], o0 + offs[t0]:o0 + offs[t0] + n]
                    s1 = ph[planes[t0 + 1], o0 + offs[t0 + 1]:o0 + offs[t0 + 1] + n]
                    s2 = ph[planes[t0 + 2], o0 + offs[t0 + 2]:o0 + offs[t0 + 2] + n]
                    s3 = ph[planes[t0 + 3], o0 + offs[t0 + 3]:o0 + offs[t0 + 3] + n]
                    s4 = ph[planes[t0 + 4], o0 + offs[t0 + 4]:o0 + offs[t0 + 4] + n]
                    w0, w1, w2, w3, w4 = ws[0], ws[1], ws[2], ws[3], ws[4]
                    for t in range(n):
                        dst[t] += w0 * s0[t] + w1 * s1[t] + w2 * s2[t] + w3 * s3[t] + w4 * s4[t]
                for r in range(nr):
                    o = out[c, oh0 + r]
                    s = acc[r * QW:r * QW + OW]
                    for t in range(OW):
                        o[t] = _act(s[t], act)


DENSE_COLS = 128  # output columns per parallel work item


@njit(cache=True, nogil=True, fastmath=True, parallel=True)
def dense(x, w, bias, out):
    """out f32[M, N] = x f32[M, K] @ w f32[K, N] + bias f32[N] (a classifier head: M small).
    Parallel over column chunks; each weight row chunk is read once per row of x."""
    M, K = x.shape
    N = w.shape[1]
    for item in prange((N + DENSE_COLS - 1) // DENSE_COLS):
        n0 = item * DENSE_COLS
        n1 = min(N, n0 + DENSE_COLS)
        for m in range(M):
            o = out[m, n0:n1]
            o[:] = bias[n0:n1]
            for k in range(K):
                xv = x[m, k]
                wk = w[k, n0:n1]
                for t in range(n1 - n0):
                    o[t] += xv * wk[t]
