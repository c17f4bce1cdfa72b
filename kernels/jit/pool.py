"""Numba global average pooling (x [C, P], P = H * W pixels, channel-major)."""
import numpy as np
from numba import njit, prange

POOL_ITEMS = 8  # parallel work items of channels


@njit(inline="always")
def channel_means(x, out, c0, c1):
    """out[c, 0] = mean of x[c, :] for c0 <= c < c1; x f32[C, P], out f32[C, 1]."""
    inv = np.float32(1.0 / x.shape[1])
    for c in range(c0, c1):
        s = np.float32(0.0)
        for j in range(x.shape[1]):
            s += x[c, j]
        out[c, 0] = s * inv


@njit(cache=True, nogil=True, fastmath=True, parallel=True)
def global_avg_pool(x, out):
    """out f32[C, 1] = the mean of x f32[C, P] over its pixels, in POOL_ITEMS runs of channels
    (on two threads each reads the channels its core wrote, where the op before split them
    alike). C-contiguous."""
    C = x.shape[0]
    if out.shape[0] != C or out.shape[1] != 1:
        raise ValueError("global_avg_pool: shapes do not match")
    items = min(C, POOL_ITEMS)
    for item in prange(items):
        channel_means(x, out, item * C // items, (item + 1) * C // items)
