"""Numba rotary position embedding."""
import numpy as np
from numba import njit


@njit(cache=True, nogil=True, fastmath=True)
def rope(x, pos, theta, neox, out):
    """Rotate x f32[n, H, D] by position pos i64[n] into out (may be x). Pair i (i < D/2) is
    (x[2i], x[2i+1]) (neox=False, llama.cpp NORM mode) or (x[i], x[i + D/2]) (neox=True),
    rotated by angle pos * theta**(-2i/D), computed in float64."""
    n, heads, dim = x.shape
    half = dim // 2
    for i in range(half):
        inv_freq = theta ** (-2.0 * i / dim)
        a = 2 * i if not neox else i
        b = a + 1 if not neox else i + half
        for t in range(n):
            ang = pos[t] * inv_freq
            c, s = np.float32(np.cos(ang)), np.float32(np.sin(ang))
            for h in range(heads):
                x0, x1 = x[t, h, a], x[t, h, b]
                out[t, h, a] = x0 * c - x1 * s
                out[t, h, b] = x0 * s + x1 * c
