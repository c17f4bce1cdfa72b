"""Numba normalization kernels."""
import numpy as np
from numba import njit


@njit(cache=True, nogil=True, fastmath=True)
def rms_norm(x, w, eps, out):
    """out f32[n, d] = x / sqrt(mean(x**2) + eps) * w (w f32[d]); out may be x."""
    n, dim = x.shape
    for i in range(n):
        ss = np.float32(0)
        for j in range(dim):
            ss += x[i, j] * x[i, j]
        scale = np.float32(1) / np.sqrt(ss / np.float32(dim) + np.float32(eps))
        for j in range(dim):
            out[i, j] = x[i, j] * scale * w[j]
