"""Group sparsity for convolution weights (SparseByteNN-style fine-grained groups).

A weight matrix W [Cout, K] (K = Cin for a 1x1 convolution, Cin*kh*kw after im2col) is cut
into groups of GROUP consecutive output channels at one input column: the unit that the CHW
GEMM kernel (edgert.kernels conv_gemm) loads once and multiplies into GROUP accumulator rows,
so a zero group is skipped whole (its activation load and its GROUP vector FMAs). Pruning
zeroes the groups of smallest L2 norm, per layer; block_layout stores what remains.
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


def prune_groups(w: np.ndarray, sparsity: float, col_scale: np.ndarray | None = None) -> np.ndarray:
    """W f32[Cout, K] with the fraction `sparsity` of its (GROUP x 1) groups of smallest L2
    norm set to zero (a copy). sparsity in [0, 1). col_scale f[K] (e.g. the RMS of each input
    channel over calibration inputs) weighs the norms: |W x| rather than |W| decides (Wanda)."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    cout = w.shape[0]
    wp = _padded(np.array(w, np.float32))
    blocks = wp.reshape(-1, GROUP, wp.shape[1])  # [nb, GROUP, K]
    scaled = blocks.astype(np.float64) * (1.0 if col_scale is None else np.asarray(col_scale, np.float64))
    norms = np.sqrt((scaled ** 2).sum(axis=1))  # [nb, K]
    n_zero = int(round(sparsity * norms.size))
    if n_zero:
        order = np.argsort(norms, axis=None, kind="stable")[:n_zero]
        mask = np.ones(norms.size, bool)
        mask[order] = False
        blocks *= mask.reshape(norms.shape)[:, None, :]
    return wp[:cout]


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
