"""NumPy kernels for weights kept as int8 per row (one float32 scale per output row): the
browser's low-memory form, expanded once at load from the stored 4/8-bit blocks."""
import numpy as np


def quantize_rows_i8(w, q, scale):
    """w f32[r, K] -> q i8[r, K], scale f32[r] with scale = amax / 127 per row and
    q = rint(w * (127 / amax)) (a zero row gives scale 0, q 0)."""
    amax = np.abs(w).max(axis=1)
    inv = np.zeros_like(amax)
    np.divide(np.float32(127), amax, out=inv, where=amax > 0)
    np.divide(amax, np.float32(127), out=scale)
    q[...] = np.rint(w * inv[:, None])


def matmul_rows_i8(x, q, scale, out):
    """out f32[n, N] = (x f32[n, K] @ q i8[N, K].T) * scale f32[N]. One einsum straight on the
    int8 codes (NumPy casts them in buffered chunks: no float copy of the matrix); under Pyodide
    this runs about as fast as a float32 einsum."""
    if x.shape[0] == 1:
        np.einsum("rk,k->r", q, x[0], out=out[0])
    else:
        np.einsum("nk,rk->nr", x, q, out=out)
    out *= scale
