"""NumPy twins of the convolution kernels (NCHW, one image: x [C, H, W]); see
edgert.kernels.jit.conv for the block weight layout and the activation parameters.

GROUP is defined here (NumPy only) so that the converter can use it without Numba. The
Numba kernels' machine-code cache does not track this file: after changing GROUP, clear
kernels/jit/__pycache__.
"""
import numpy as np

GROUP = 4  # output channels per weight group: the pruning unit and the GEMM kernel's row block


def apply_act(y, act, out):
    """out = min(max(a*y + b, lo), hi) * (y if m else 1), act = (a, b, lo, hi, m); out may be y."""
    a, b, lo, hi, m = (float(v) for v in act)
    if m:
        t = np.multiply(y, a)
        t += b
        np.clip(t, lo, hi, out=t)
        np.multiply(t, y, out=out)
    else:
        np.multiply(y, a, out=out)
        out += b
        np.clip(out, lo, hi, out=out)


def conv_gemm(x, vals, idx, ptr, bias, act, out, res=None):
    """out f32[Cout, P] = act(W @ x + bias) (+ res f32[Cout, P] when given) for x f32[K, P],
    W [Cout, K] in the block layout (vals f32[nnz, GROUP], idx i32[nnz], ptr i32[nb + 1]:
    entries ptr[0] .. ptr[nb] - 1, so one group's slice of a grouped conv's ptr); bias
    f32[nb * GROUP]; act f32[5]. W is rebuilt dense here; einsum rather than @ (no BLAS under
    Pyodide)."""
    nb = len(ptr) - 1
    cout, k = out.shape[0], x.shape[0]
    w = np.zeros((nb, k, GROUP), np.float32)
    w[np.repeat(np.arange(nb), np.diff(ptr)), idx[ptr[0]:ptr[nb]]] = vals[ptr[0]:ptr[nb]]
    w = w.transpose(0, 2, 1).reshape(nb * GROUP, k)[:cout]
    np.einsum("ok,kp->op", w, x, out=out)
    out += bias[:cout, None]
    apply_act(out, act, out)
    if res is not None:
        out += res


def _padded_image(x, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow):
    """x [C, H, W] zero-padded to cover every tap of an oh x ow output (begin pads pt, pl)."""
    c, h, w = x.shape
    hp = max(h + pt, (oh - 1) * sh + (kh - 1) * dh + 1)
    wp = max(w + pl, (ow - 1) * sw + (kw - 1) * dw + 1)
    xp = np.zeros((c, hp, wp), np.float32)
    xp[:, pt:pt + h, pl:pl + w] = x
    return xp


def _taps(xp, kh, kw, sh, sw, dh, dw, oh, ow):
    """Views [C, oh, ow] of the padded image, one per tap (i, j), in row-major tap order."""
    for i in range(kh):
        for j in range(kw):
            yield xp[:, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]


def im2col(x, kh, kw, sh, sw, pt, pl, dh, dw, cols):
    """cols f32[C*kh*kw, OH, OW] from x f32[C, H, W]: row (c*kh + i)*kw + j holds
    x[c, oh*sh - pt + i*dh, ow*sw - pl + j*dw], 0 outside the image."""
    c = x.shape[0]
    oh, ow = cols.shape[1], cols.shape[2]
    xp = _padded_image(x, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow)
    view = cols.reshape(c, kh * kw, oh, ow)
    for t, tap in enumerate(_taps(xp, kh, kw, sh, sw, dh, dw, oh, ow)):
        view[:, t] = tap


def conv_direct(x, kh, kw, sh, sw, pt, pl, dh, dw, vals, idx, ptr, bias, act, out):
    """out f32[Cout, OH, OW] = act(W @ im2col(x) + bias) for x f32[C, H, W], W [Cout, C*kh*kw]
    in conv_gemm's block layout (one group), act f32[5]: a general convolution. This twin
    writes the im2col columns; the Numba kernel reads them from the image."""
    cout, oh, ow = out.shape
    cols = np.empty((x.shape[0] * kh * kw, oh, ow), np.float32)
    im2col(x, kh, kw, sh, sw, pt, pl, dh, dw, cols)
    conv_gemm(cols.reshape(len(cols), -1), vals, idx, ptr, bias, act, out.reshape(cout, -1))


def depthwise_conv(x, w, bias, kh, kw, sh, sw, pt, pl, dh, dw, act, out):
    """out f32[C, OH, OW] = act(bias[c] + sum over i < kh, j < kw of w[c, i*kw + j] *
    x[c, oh*sh - pt + i*dh, ow*sw - pl + j*dw]) (0 outside the image); x f32[C, H, W],
    w f32[C, kh*kw], bias f32[C], act f32[5]."""
    oh, ow = out.shape[1], out.shape[2]
    xp = _padded_image(x, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow)
    out[...] = bias[:, None, None]
    for t, tap in enumerate(_taps(xp, kh, kw, sh, sw, dh, dw, oh, ow)):
        out += w[:, t, None, None] * tap
    apply_act(out, act, out)


def dense(x, w, bias, out):
    """out f32[M, N] = x f32[M, K] @ w f32[K, N] + bias f32[N] (einsum: no BLAS under Pyodide)."""
    np.einsum("mk,kn->mn", x, w, out=out)
    out += bias


def gemm_dw_scratch(c, h, w, oh, kh, sh, dh):
    """Shape of conv_gemm_dw's work space: this twin needs none (it expands the whole map)."""
    return 0, 0, 0


def conv_gemm_dw(x, vals, idx, ptr, bias, act, w, dbias, kh, kw, sh, sw, pt, pl, dh, dw, dact, scratch, out):
    """out f32[C, OH, OW] = depthwise_conv(m, w, dbias, kh, kw, sh, sw, pt, pl, dh, dw, dact) of
    m f32[C, H, W] = conv_gemm(x, vals, idx, ptr, bias, act) for x f32[K, H, W]: a 1x1 conv and
    the depthwise conv on its output, as one op (the Numba kernel never holds all of m)."""
    k, h, wd = x.shape
    m = np.empty((out.shape[0], h * wd), np.float32)
    conv_gemm(x.reshape(k, h * wd), vals, idx, ptr, bias, act, m)
    depthwise_conv(m.reshape(-1, h, wd), w, dbias, kh, kw, sh, sw, pt, pl, dh, dw, dact, out)
