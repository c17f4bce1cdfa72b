"""NumPy rotary position embedding."""
import numpy as np


def rope(x, pos, theta, neox, out):
    """Rotate x f32[n, H, D] by position pos i64[n] into out (may be x). Pair i (i < D/2) is
    (x[2i], x[2i+1]) (neox=False, llama.cpp NORM mode) or (x[i], x[i + D/2]) (neox=True),
    rotated by angle pos * theta**(-2i/D), computed in float64."""
    dim = x.shape[-1]
    half = dim // 2
    ang = np.asarray(pos, np.float64)[:, None] * theta ** (-2.0 * np.arange(half) / dim)
    c = np.cos(ang).astype(np.float32)[:, None, :]
    s = np.sin(ang).astype(np.float32)[:, None, :]
    a, b = (slice(0, half), slice(half, dim)) if neox else (slice(0, dim, 2), slice(1, dim, 2))
    x0, x1 = x[..., a], x[..., b]
    y0 = x0 * c - x1 * s
    y1 = x0 * s + x1 * c
    out[..., a] = y0
    out[..., b] = y1
