"""Numba kernels for weights kept as int8 per row (one float32 scale per output row)."""
import numpy as np
from numba import njit, prange


@njit(cache=True, nogil=True, fastmath=True, parallel=True)
def quantize_rows_i8(w, q, scale):
    """w f32[r, K] -> q i8[r, K], scale f32[r] with scale = amax / 127 per row and
    q = rint(w * (127 / amax)) (a zero row gives scale 0, q 0)."""
    r, k = w.shape
    for i in prange(r):
        amax = np.float32(0)
        for j in range(k):
            amax = max(amax, abs(w[i, j]))
        inv = np.float32(127) / amax if amax > 0 else np.float32(0)
        scale[i] = amax / np.float32(127)
        for j in range(k):
            q[i, j] = np.int8(np.rint(w[i, j] * inv))


@njit(cache=True, nogil=True, fastmath=True, parallel=True)
def matmul_rows_i8(x, q, scale, out):
    """out f32[n, N] = (x f32[n, K] @ q i8[N, K].T) * scale f32[N]."""
    n, k = x.shape
    rows = q.shape[0]
    for r in prange(rows):
        for i in range(n):
            acc = np.float32(0)
            for j in range(k):
                acc += x[i, j] * np.float32(q[r, j])
            out[i, r] = acc * scale[r]
