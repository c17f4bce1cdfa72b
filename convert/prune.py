"""Group sparsity for convolution weights (SparseByteNN-style fine-grained groups).

A weight matrix W [Cout, K] (K = Cin for a 1x1 convolution, Cin*kh*kw after im2col) is cut
into groups of GROUP consecutive output channels at one input column: the unit that the CHW
GEMM kernel (edgert.kernels conv_gemm) loads once and multiplies into GROUP accumulator rows,
so a zero group is skipped whole (its activation load and its GROUP vector FMAs). Pruning
zeroes the groups of smallest (weighted) L2 norm, per layer; reconstruct refits the rest by
least squares on calibration inputs; block_layout stores what remains.
"""
from __future__ import annotations

import numpy as np

from edgert.kernels.ref.conv import GROUP


def _padded(w: np.ndarray) -> np.ndarray:
    rows = -(-w.shape[0] // GROUP) * GROUP
    if rows == w.shape[0]:
        return w
    out = np.zeros((rows, w.shape[1]), w.dtype)
    out[: w.shape[0]] = w
    return out


def group_mask(w: np.ndarray, sparsity: float, col_scale: np.ndarray | None = None) -> np.ndarray:
    """bool[nb, K]: which (GROUP x 1) groups of W f32[Cout, K] (rows zero-padded to nb*GROUP)
    to keep when the fraction `sparsity` in [0, 1) of them, of smallest L2 norm, goes. col_scale
    f[K] weighs the norms: |W x| rather than |W| decides (Wanda: the RMS of each input column;
    OBS: 1 / sqrt([H^-1]_jj), see obs_scale)."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    blocks = _padded(np.asarray(w, np.float64)).reshape(-1, GROUP, w.shape[1])  # [nb, GROUP, K]
    scaled = blocks * (1.0 if col_scale is None else np.asarray(col_scale, np.float64))
    norms = np.sqrt((scaled ** 2).sum(axis=1))  # [nb, K]
    keep = np.ones(norms.size, bool)
    keep[np.argsort(norms, axis=None, kind="stable")[:int(round(sparsity * norms.size))]] = False
    return keep.reshape(norms.shape)


def prune_groups(w: np.ndarray, sparsity: float, col_scale: np.ndarray | None = None) -> np.ndarray:
    """W f32[Cout, K] with the fraction `sparsity` of its (GROUP x 1) groups of smallest L2
    norm set to zero (a copy); sparsity and col_scale as in group_mask."""
    keep = group_mask(w, sparsity, col_scale)
    return (np.asarray(w, np.float32) * np.repeat(keep, GROUP, axis=0)[: w.shape[0]]).astype(np.float32)


def _damped(h: np.ndarray, damp: float) -> np.ndarray:
    return h + damp * np.mean(np.diag(h)) * np.eye(len(h))


def obs_scale(h: np.ndarray, damp: float = 0.01) -> np.ndarray:
    """col_scale f64[K] for group_mask from the Gram matrix h f64[K+1, K+1] of the layer's
    inputs with a constant 1 appended (see reconstruct): 1 / sqrt([H^-1]_jj) of the damped H,
    so that a group's score is its OBS saliency sum_r w_rj^2 / [H^-1]_jj (the output error of
    removing it when the other weights, the bias included, compensate)."""
    return 1 / np.sqrt(np.diag(np.linalg.inv(_damped(h, damp)))[:-1])


def reconstruct(w: np.ndarray, bias: np.ndarray, keep: np.ndarray, h: np.ndarray, g: np.ndarray | None = None,
                damp: float = 0.01):
    """Least-squares refit of a group-pruned layer (OBS / SparseGPT without the column order):
    W f32[Cout, K], bias f32[Cout], keep bool[nb, K] (group_mask), h f64[K+1, K+1] = sum of
    [x; 1] [x; 1]^T over calibration inputs x f[K] of this layer, g f64[K+1, K+1] = sum of
    [x; 1] [x_dense; 1]^T when the dense layer's own inputs x_dense differ (an upstream layer
    pruned already; default h). Each row block (GROUP rows, kept columns S plus the bias)
    minimises |w_S.[x; 1]_S - w.[x_dense; 1]|^2 summed over the inputs, plus
    lam |w_S - w_S(dense)|^2 with lam = damp * mean diag(h) (towards the dense weights where
    the inputs say nothing). Returns (W f32[Cout, K] zero outside keep, bias f32[Cout])."""
    cout, k = w.shape
    wb = _padded(np.hstack([np.asarray(w, np.float64), np.asarray(bias, np.float64).reshape(-1, 1)]))
    lam = damp * np.mean(np.diag(h))
    target = wb @ (h if g is None else g).T + lam * wb  # [rows, K+1]: (G w + lam w) per row
    hd = _damped(h, damp)
    out = np.zeros_like(wb)
    for b, kept in enumerate(keep):
        s = np.append(np.flatnonzero(kept), k)
        r = slice(b * GROUP, (b + 1) * GROUP)
        out[r, s] = np.linalg.solve(hd[np.ix_(s, s)], target[r, s].T).T
    return out[:cout, :k].astype(np.float32), out[:cout, k].astype(np.float32)


def group_sparsity(w: np.ndarray) -> float:
    """Fraction of all-zero (GROUP x 1) groups of W [Cout, K]."""
    blocks = _padded(np.asarray(w)).reshape(-1, GROUP, w.shape[1])
    return float((~np.any(blocks != 0, axis=1)).mean()) if blocks.size else 0.0


def block_layout(w: np.ndarray, bias: np.ndarray | None = None):
    """W f32[Cout, K] -> (vals f32[nnz, GROUP], idx i32[nnz], ptr i32[nb + 1], bias f32[nb*GROUP]):
    block b (rows b*GROUP .. b*GROUP + GROUP - 1, the last zero-padded) keeps the columns where
    any of its rows is non-zero; its entries are ptr[b] .. ptr[b + 1] - 1 (column idx[k], the
    block's rows vals[k]). A dense W keeps every column."""
    wp = _padded(np.asarray(w, np.float32))
    blocks = wp.reshape(-1, GROUP, wp.shape[1])
    keep = np.any(blocks != 0, axis=1)  # [nb, K]
    nb_idx, cols = np.nonzero(keep)
    vals = np.ascontiguousarray(blocks[nb_idx, :, cols], np.float32).reshape(-1, GROUP)
    ptr = np.zeros(blocks.shape[0] + 1, np.int32)
    np.cumsum(keep.sum(axis=1), out=ptr[1:])
    b = np.zeros(wp.shape[0], np.float32)
    if bias is not None:
        b[: w.shape[0]] = bias
    return vals, cols.astype(np.int32), ptr, b


def dense_from_blocks(vals, idx, ptr, k: int, rows: int) -> np.ndarray:
    """Inverse of block_layout: W f32[rows, k]."""
    nb = len(ptr) - 1
    out = np.zeros((nb, k, GROUP), np.float32)
    owner = np.repeat(np.arange(nb), np.diff(ptr))
    out[owner, idx] = vals
    return out.transpose(0, 2, 1).reshape(nb * GROUP, k)[:rows]
