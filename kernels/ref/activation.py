"""NumPy activation kernels."""
import numpy as np


def silu_mul(g, u, out):
    """out f32[n, F] = g * sigmoid(g) * u; out may be g or u."""
    with np.errstate(over="ignore"):
        den = np.exp(-g)
    den += np.float32(1)
    np.multiply(g, u, out=out)
    out /= den


def softmax(x, out):
    """out f32[n, V] = softmax of each row of x (max-subtracted); out may be x."""
    np.subtract(x, x.max(axis=-1, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=-1, keepdims=True)
