"""Numba activation kernels.

Without SVML, ``np.exp`` is a scalar libm call that blocks vectorization; ``_exp`` is a
vectorizable float32 exp (Cephes expf: exp(x) = 2**n * p(r), |r| <= ln2 / 2; relative error
about 1e-7; inputs clamped to [-87.3, 88.7], so it never returns 0 or inf).
"""
import numpy as np
from numba import njit


@njit(inline="always", fastmath=True)
def _exp(x):
    x = min(max(x, np.float32(-87.3)), np.float32(88.7))
    n = np.rint(x * np.float32(1.4426950408889634))
    r = x - n * np.float32(0.693359375) + n * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    two_n = np.int32((np.int32(n) + np.int32(127)) << np.int32(23)).view(np.float32)
    return (p * r * r + r + np.float32(1)) * two_n


# error_model="numpy": no ZeroDivisionError check in the loop, which would block vectorization.
# No "arcp"/"reassoc" fast-math: with them a row's result depended on how many rows shared the
# call (1-ulp differences), and token trees need each row exactly as alone.
@njit(cache=True, nogil=True, fastmath={"nnan", "ninf", "nsz", "contract", "afn"}, error_model="numpy")
def silu_mul(g, u, out):
    """out f32[n, F] = g * sigmoid(g) * u; out may be g or u."""
    n, f = g.shape
    for i in range(n):
        for j in range(f):
            out[i, j] = g[i, j] * u[i, j] / (np.float32(1) + _exp(-g[i, j]))


@njit(cache=True, nogil=True, fastmath=True)
def softmax(x, out):
    """out f32[n, V] = softmax of each row of x (max-subtracted); out may be x."""
    n, v = x.shape
    for i in range(n):
        mx = x[i, 0]
        for j in range(v):
            mx = max(mx, x[i, j])
        s = np.float32(0)
        for j in range(v):
            e = _exp(x[i, j] - mx)
            out[i, j] = e
            s += e
        inv = np.float32(1) / s
        for j in range(v):
            out[i, j] *= inv
