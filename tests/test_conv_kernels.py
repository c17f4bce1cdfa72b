"""Convolution kernels, both backends, against float64 references written here (direct loops
and dense products of the test's own weights), on odd shapes; group pruning and the block
layout."""
import importlib.util
import zlib

import numpy as np
import pytest

from edgert import kernels
from edgert.convert.prune import GROUP, block_layout, dense_from_blocks, group_sparsity, prune_groups

HAS_NUMBA = importlib.util.find_spec("numba") is not None
BACKENDS = ["ref", pytest.param("jit", marks=pytest.mark.skipif(not HAS_NUMBA, reason="numba not installed"))]
BIG = 3.4e38
ACTS = {  # (a, b, lo, hi, m) and the float64 function it must compute
    "identity": ([1, 0, -BIG, BIG, 0], lambda y: y),
    "relu": ([1, 0, 0, BIG, 0], lambda y: np.maximum(y, 0)),
    "relu6": ([1, 0, 0, 6, 0], lambda y: np.clip(y, 0, 6)),
    "hardswish": ([1 / 6, 0.5, 0, 1, 1], lambda y: y * np.clip(y / 6 + 0.5, 0, 1)),
    "hardsigmoid": ([0.2, 0.5, 0, 1, 0], lambda y: np.clip(0.2 * y + 0.5, 0, 1)),
}


@pytest.fixture(params=BACKENDS)
def K(request):
    return kernels.load(request.param)


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _zero_groups(rng, w, sparsity):
    """w f32[rows, K] with about the fraction `sparsity` of its (GROUP x 1) groups zeroed, chosen
    at random here (in place; returned)."""
    if sparsity:
        w *= np.repeat(rng.random((-(-len(w) // GROUP), w.shape[1])) >= sparsity, GROUP, axis=0)[:len(w)]
    return w


def _direct_conv(x, w, bias, stride, pads, dil, groups):
    """float64 reference: x [C, H, W], w [Cout, C/groups, kh, kw], pads (top, left, bottom, right)."""
    c, h, wd = x.shape
    cout, cg, kh, kw = w.shape
    xp = np.zeros((c, h + pads[0] + pads[2], wd + pads[1] + pads[3]))
    xp[:, pads[0]:pads[0] + h, pads[1]:pads[1] + wd] = x
    oh = (xp.shape[1] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (xp.shape[2] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((cout, oh, ow))
    per = cout // groups
    for o in range(cout):
        g = o // per
        for ci in range(cg):
            for i in range(kh):
                for j in range(kw):
                    r0, c0 = i * dil[0], j * dil[1]
                    out[o] += w[o, ci, i, j] * xp[g * cg + ci, r0:r0 + (oh - 1) * stride[0] + 1:stride[0],
                                                  c0:c0 + (ow - 1) * stride[1] + 1:stride[1]]
        out[o] += bias[o]
    return out


@pytest.mark.parametrize("cout,k,p", [(4, 3, 1), (7, 5, 31), (16, 24, 33), (13, 40, 49), (64, 17, 257), (9, 11, 549),
                                      (1, 1, 16), (13, 7, 1), (66, 257, 1)])
@pytest.mark.parametrize("sparsity", [0.0, 0.6])
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("residual", [False, True])
def test_conv_gemm(K, cout, k, p, sparsity, act, residual):
    """Against float64, optionally with a residual added after the activation (a 1x1 conv
    fused with the Add after it)."""
    rng = _rng("gemm", cout, k, p, sparsity, act)
    w = _zero_groups(rng, rng.standard_normal((cout, k)).astype(np.float32), sparsity)
    x = rng.standard_normal((k, p)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    params, fn = ACTS[act]
    vals, idx, ptr, b = block_layout(w, bias)
    out = np.full((cout, p), np.nan, np.float32)
    res = rng.standard_normal((cout, p)).astype(np.float32) if residual else None
    K.conv_gemm(x, vals, idx, ptr, b, np.array(params, np.float32), out, res)
    want = fn(w.astype(np.float64) @ x + bias[:, None]) + (res if residual else 0)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dense_part", [slice(0, 16), slice(48, 64)])
def test_conv_gemm_unequal_blocks(K, threads, dense_part):
    """Row blocks of very unequal cost on a map of one pixel chunk, which the jit kernel's
    threads share by row blocks: one quarter of the rows (first or last) keeps every column,
    a quarter one column, the rest none."""
    rng = _rng("gemm unequal", dense_part.start)
    w = rng.standard_normal((64, 96)).astype(np.float32)
    keep = np.zeros_like(w, bool)
    keep[dense_part], keep[16:32:3, 5] = True, True
    w *= keep
    x = rng.standard_normal((96, 50)).astype(np.float32)
    vals, idx, ptr, b = block_layout(w, np.zeros(64, np.float32))
    out = np.full((64, 50), np.nan, np.float32)
    with kernels.threads(threads):
        K.conv_gemm(x, vals, idx, ptr, b, np.array(ACTS["relu"][0], np.float32), out)
    np.testing.assert_allclose(out, np.maximum(w.astype(np.float64) @ x, 0), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("p", [1, 20])
def test_conv_gemm_on_a_slice_of_ptr(K, p):
    """A grouped conv's layouts stored one after the other: group 1 passes its own slice of ptr,
    whose offsets start where group 0's entries end."""
    rng = _rng("gemm-slice", p)
    ws = [rng.standard_normal((6, 9)).astype(np.float32) for _ in range(2)]
    ws[1][:4, :5] = 0
    lay = [block_layout(w) for w in ws]
    vals, idx = np.concatenate([la[0] for la in lay]), np.concatenate([la[1] for la in lay])
    ptr = np.concatenate([lay[0][2], lay[1][2] + len(lay[0][1])]).astype(np.int32)
    x = rng.standard_normal((9, p)).astype(np.float32)
    n = len(lay[0][2])
    for g, sl in enumerate((ptr[:n], ptr[n:])):
        out = np.full((6, p), np.nan, np.float32)
        K.conv_gemm(x, vals, idx, sl, lay[g][3], np.array(ACTS["identity"][0], np.float32), out)
        np.testing.assert_allclose(out, ws[g].astype(np.float64) @ x, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("c,p", [(1, 1), (7, 49), (512, 49), (13, 3), (9, 196)])
def test_global_avg_pool(K, c, p):
    x = _rng("pool", c, p).standard_normal((c, p)).astype(np.float32)
    out = np.full((c, 1), np.nan, np.float32)
    K.global_avg_pool(x, out)
    np.testing.assert_allclose(out[:, 0], x.astype(np.float64).mean(axis=1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("c,m,p", [(8, 4, 49), (13, 6, 5), (256, 64, 49), (40, 10, 1), (3, 1, 196)])
@pytest.mark.parametrize("sparsity", [0.0, 0.6])
def test_squeeze_excite(K, c, m, p, sparsity):
    """Against float64: x times, per channel, hardsigmoid(W2 @ relu(W1 @ mean of x + b1) + b2),
    both weights in the block layout (optionally with whole groups zeroed)."""
    rng = _rng("se", c, m, p, sparsity)
    w1, w2 = rng.standard_normal((m, c)).astype(np.float32), rng.standard_normal((c, m)).astype(np.float32)
    w1, w2 = _zero_groups(rng, w1, sparsity), _zero_groups(rng, w2, sparsity)
    b1, b2 = rng.standard_normal(m).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    x = rng.standard_normal((c, p)).astype(np.float32)
    (a1, f1), (a2, f2) = ACTS["relu"], ACTS["hardsigmoid"]
    out = np.full((c, p), np.nan, np.float32)
    K.squeeze_excite(x, *block_layout(w1, b1), np.array(a1, np.float32), *block_layout(w2, b2),
                     np.array(a2, np.float32), out)
    s = f2(w2.astype(np.float64) @ f1(w1.astype(np.float64) @ x.astype(np.float64).mean(axis=1) + b1) + b2)
    np.testing.assert_allclose(out, x * s[:, None], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("c,h,w,k,stride,pads,dil", [
    (3, 7, 9, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    (5, 12, 11, 3, (2, 2), (0, 0, 1, 1), (1, 1)),   # TF "same" padding after a stride-2 conv
    (4, 14, 14, 5, (2, 2), (2, 2, 2, 2), (1, 1)),
    (2, 9, 10, 5, (1, 1), (2, 1, 3, 0), (1, 1)),
    (3, 10, 10, 3, (1, 2), (2, 2, 2, 2), (2, 2)),   # dilation, mixed strides
    (6, 1, 1, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    (7, 28, 28, 7, (3, 3), (3, 3, 3, 3), (1, 1)),
    (3, 40, 45, 3, (2, 2), (1, 1, 1, 1), (1, 1)),   # stride 2 with tiles inside the image
    (2, 23, 41, 5, (2, 2), (2, 2, 2, 2), (1, 1)),
    (2, 50, 57, 5, (2, 2), (2, 2, 2, 2), (1, 1)),   # stride 2 on a wide image: column phases
    (3, 49, 48, 3, (2, 2), (0, 0, 1, 1), (1, 1)),   # 3 tap columns: direct however wide
    (2, 20, 37, 5, (1, 1), (2, 2, 2, 2), (1, 1)),
    (3, 17, 30, 3, (1, 2), (1, 1, 1, 1), (1, 1)),   # mixed strides, either way
    (3, 17, 30, 3, (2, 1), (1, 1, 1, 1), (1, 1)),
    (2, 19, 21, 3, (1, 1), (2, 2, 2, 2), (2, 1)),   # row dilation only
    (2, 12, 13, 4, (1, 1), (1, 2, 2, 1), (1, 1)),   # even kernel, asymmetric pads
    (3, 14, 14, 5, (1, 1), (2, 2, 2, 2), (1, 1)),   # with AVX-512, one 16-lane tile per row (_dw_channel)
    (2, 24, 19, 3, (1, 1), (1, 1, 1, 1), (1, 1)),   # a last tile of 3 of its DW_ROWS (7) rows
    (2, 28, 27, 3, (2, 2), (1, 1, 1, 1), (1, 1)),
])
def test_depthwise_conv(K, c, h, w, k, stride, pads, dil, act="relu6"):
    rng = _rng("dw", c, h, w, k, stride, pads, dil)
    x = rng.standard_normal((c, h, w)).astype(np.float32)
    wt = rng.standard_normal((c, 1, k, k)).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    want = _direct_conv(x.astype(np.float64), wt.astype(np.float64), bias, stride, pads, dil, c)
    params, fn = ACTS[act]
    out = np.full(want.shape, np.nan, np.float32)
    K.depthwise_conv(x, wt.reshape(c, k * k), bias, k, k, *stride, pads[0], pads[1], *dil,
                     np.array(params, np.float32), out)
    np.testing.assert_allclose(out, fn(want), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("act", list(ACTS))
def test_depthwise_conv_activations(K, act):
    test_depthwise_conv(K, 4, 11, 19, 3, (1, 1), (1, 1, 1, 1), (1, 1), act)
    test_depthwise_conv(K, 4, 11, 19, 5, (2, 2), (2, 2, 2, 2), (1, 1), act)


@pytest.mark.parametrize("k,c,h,w,kh,stride,pads,dil,sparsity", [
    (16, 96, 40, 37, 3, (2, 2), (0, 0, 1, 1), (1, 1), 0.0),   # TF "same" padding, stride 2
    (24, 20, 33, 30, 3, (1, 1), (1, 1, 1, 1), (1, 1), 0.5),   # C not a multiple of GROUP
    (8, 42, 150, 131, 3, (1, 1), (1, 1, 1, 1), (1, 1), 0.3),  # wide rows: bands of 7 rows, two channel steps
    (8, 42, 150, 131, 5, (2, 2), (1, 1, 2, 2), (1, 1), 0.0),
    (12, 48, 29, 21, 5, (2, 2), (2, 2, 2, 2), (1, 1), 0.3),
    (40, 40, 26, 26, 5, (1, 1), (2, 2, 2, 2), (1, 1), 0.0),
    (16, 24, 28, 28, 3, (2, 2), (0, 0, 1, 1), (1, 1), 0.7),   # 14 output rows: on 2 threads, strips of 7
    (64, 72, 7, 7, 5, (1, 1), (2, 2, 2, 2), (1, 1), 0.6),     # one band: threads split the channels
    (8, 8, 19, 23, 3, (2, 1), (3, 1, 0, 1), (2, 1), 0.0),     # mixed strides, row dilation, a band of padding
    (5, 4, 1, 1, 3, (1, 1), (1, 1, 1, 1), (1, 1), 0.0),       # one pixel
])
def test_conv_gemm_dw(K, k, c, h, w, kh, stride, pads, dil, sparsity):
    """A 1x1 conv (block layout, optionally group-sparse) and the depthwise conv on its output,
    fused, against the two convs one after the other in float64. The jit kernel's bands are
    whole maps but for the wide ones."""
    rng = _rng("gemm_dw", k, c, h, w, kh, stride, sparsity)
    w1 = _zero_groups(rng, rng.standard_normal((c, k)).astype(np.float32), sparsity)
    _check_gemm_dw(K, rng, x_shape=(k, h, w), w1=w1, kh=kh, stride=stride, pads=pads, dil=dil)


def test_conv_gemm_dw_unequal_blocks(K):
    """Row blocks of very unequal cost on a map too low for strips of rows: the jit kernel's
    threads take runs of equal cost, not length, up to the most its scratch holds (here the
    first quarter of the rows keeps every column, the rest one each)."""
    rng = _rng("gemm_dw unequal")
    k, c = 64, 96
    w1 = rng.standard_normal((c, k)).astype(np.float32)
    w1[c // 4:, 1:] = 0
    _check_gemm_dw(K, rng, x_shape=(k, 5, 10), w1=w1, kh=3, stride=(1, 1), pads=(1, 1, 1, 1), dil=(1, 1))


@pytest.mark.skipif(not HAS_NUMBA, reason="numba not installed")
def test_conv_gemm_dw_refuses_a_work_space_for_runs():
    """Where the jit kernel's threads take strips of rows, each needs a buffer for every
    channel: a work space shaped for runs of channels is refused, not overrun."""
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("strips of rows need 2 or more threads")
    K = kernels.load("jit")
    c, k, h, w = 16, 8, 28, 28
    items, cap, n = K.gemm_dw_scratch(c, h, w, h, 3, 1, 1)
    assert items * cap >= 2 * c
    scratch = np.zeros((items, cap // items, n), np.float32)
    w1, b = np.ones((c, k), np.float32), np.zeros(c, np.float32)
    act = np.array(ACTS["relu6"][0], np.float32)
    with pytest.raises(ValueError, match="runs of channels"):
        K.conv_gemm_dw(np.ones((k, h, w), np.float32), *block_layout(w1, b), act, np.ones((c, 9), np.float32), b, 3,
                       3, 1, 1, 1, 1, 1, 1, act, scratch, np.empty((c, h, w), np.float32))


def _check_gemm_dw(K, rng, x_shape, w1, kh, stride, pads, dil):
    (k, h, w), c = x_shape, w1.shape[0]
    b1, b2 = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    w2 = rng.standard_normal((c, 1, kh, kh)).astype(np.float32)
    x = rng.standard_normal((k, h, w)).astype(np.float32)
    (p1, f1), (p2, f2) = ACTS["relu6"], ACTS["hardswish"]
    mid = f1(np.einsum("ck,khw->chw", w1.astype(np.float64), x) + b1[:, None, None])
    want = f2(_direct_conv(mid, w2.astype(np.float64), b2, stride, pads, dil, c))
    out = np.full(want.shape, np.nan, np.float32)
    scratch = np.full(K.gemm_dw_scratch(c, h, w, want.shape[1], kh, stride[0], dil[0]), np.nan, np.float32)
    K.conv_gemm_dw(x, *block_layout(w1, b1), np.array(p1, np.float32), w2.reshape(c, -1), b2, kh, kh, *stride,
                   pads[0], pads[1], *dil, np.array(p2, np.float32), scratch, out)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("c,h,w,kh,kw,stride,pads,dil,groups,cout,sparsity,act", [
    (3, 15, 16, 3, 3, (2, 2), (0, 0, 1, 1), (1, 1), 1, 8, 0.0, "identity"),
    (3, 40, 37, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1, 16, 0.5, "relu6"),  # a stem: full and masked tiles
    (4, 9, 7, 2, 3, (1, 2), (1, 0, 0, 2), (2, 1), 2, 6, 0.0, "identity"),
    (6, 8, 8, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1), 3, 9, 0.0, "identity"),
    (2, 20, 41, 5, 4, (3, 3), (2, 1, 2, 3), (1, 2), 1, 5, 0.3, "hardswish"),
])
def test_conv_direct(K, c, h, w, kh, kw, stride, pads, dil, groups, cout, sparsity, act):
    """A general (grouped, strided, dilated, padded) convolution, one conv_direct call per
    group, against the direct float64 loops."""
    rng = _rng("conv_direct", c, h, w, kh, kw, stride, groups, sparsity)
    x = rng.standard_normal((c, h, w)).astype(np.float32)
    wt = rng.standard_normal((cout, c // groups, kh, kw)).astype(np.float32)
    cg, per = c // groups, cout // groups
    if sparsity:
        wt = prune_groups(wt.reshape(cout, -1), sparsity).reshape(wt.shape)
    bias = rng.standard_normal(cout).astype(np.float32)
    p, f = ACTS[act]
    want = f(_direct_conv(x.astype(np.float64), wt.astype(np.float64), bias, stride, pads, dil, groups))
    out = np.full(want.shape, np.nan, np.float32)
    for g in range(groups):
        vals, idx, ptr, b = block_layout(wt[g * per:(g + 1) * per].reshape(per, -1), bias[g * per:(g + 1) * per])
        K.conv_direct(x[g * cg:(g + 1) * cg], kh, kw, *stride, pads[0], pads[1], *dil, vals, idx, ptr, b,
                      np.array(p, np.float32), out[g * per:(g + 1) * per])
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2])
def test_row_bands_at_each_thread_count(K, threads):
    """depthwise_conv's bands of output rows (on maps the ops around it split by pixels) and
    conv_direct's split by bands of rows, each band zeroing its own padding, on 1 and 2
    threads: whichever thread takes a band, its rows, halo and padding come out the same."""
    with kernels.threads(threads):
        test_depthwise_conv(K, 3, 40, 45, 3, (1, 1), (1, 1, 1, 1), (1, 1))   # 6 bands of 7 rows, the last 5
        test_depthwise_conv(K, 2, 23, 41, 5, (2, 2), (2, 2, 2, 2), (1, 1))   # stride 2 on the image itself
        test_conv_direct(K, 3, 40, 37, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1, 16, 0.5, "relu6")
        test_conv_direct(K, 2, 3, 5, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, 4, 0.0, "identity")  # 5 rows, 5 bands


@pytest.mark.parametrize("m,k,n", [(1, 1280, 1000), (3, 7, 5), (2, 64, 129)])
def test_dense(K, m, k, n):
    rng = _rng("dense", m, k, n)
    x, w = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    out = np.empty((m, n), np.float32)
    K.dense(x, w, bias, out)
    np.testing.assert_allclose(out, x.astype(np.float64) @ w + bias, rtol=1e-5, atol=1e-3)


def test_prune_groups_removes_the_smallest_groups():
    rng = _rng("prune")
    w = rng.standard_normal((10, 37)).astype(np.float32)
    pruned = prune_groups(w, 0.5)
    rows = -(-10 // GROUP)
    padded = np.zeros((rows * GROUP, 37))
    padded[:10] = w
    norms = np.sqrt((padded.reshape(rows, GROUP, 37) ** 2).sum(axis=1))
    zero = ~np.any(np.vstack([pruned, np.zeros((rows * GROUP - 10, 37))]).reshape(rows, GROUP, 37) != 0, axis=1)
    assert zero.sum() == round(0.5 * rows * 37)
    assert norms[zero].max() <= norms[~zero].min()  # magnitude order
    np.testing.assert_array_equal(pruned[np.repeat(~zero, GROUP, axis=0)[:10]], w[np.repeat(~zero, GROUP, axis=0)[:10]])
    assert group_sparsity(pruned) == pytest.approx(zero.mean())
    with pytest.raises(ValueError):
        prune_groups(w, 1.0)


def test_block_layout_round_trip_and_compression():
    rng = _rng("layout")
    w = rng.standard_normal((9, 20)).astype(np.float32)
    w[:4, 3] = 0  # one whole group of block 0
    w[4:8, :10] = 0  # ten groups of block 1
    vals, idx, ptr, b = block_layout(w)
    assert len(ptr) == 4 and ptr[-1] == len(idx) == 3 * 20 - 11
    assert vals.shape == (len(idx), GROUP) and idx.dtype == np.int32 and ptr.dtype == np.int32
    np.testing.assert_array_equal(dense_from_blocks(vals, idx, ptr, 20, 9), w)
