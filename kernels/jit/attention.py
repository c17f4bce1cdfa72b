"""Numba attention over a KV cache."""
import numpy as np
from numba import njit, prange


@njit(cache=True, nogil=True, fastmath=True, parallel=True)
def attention(q, k_cache, v_cache, n_past, mask, scale, out):
    """out f32[n, H, D] = softmax(q k^T * scale) v for the n new tokens, whose K/V are already
    at cache positions n_past..n_past+n-1 (k_cache, v_cache f32[Hkv, T, D]). Query i sees every
    position < n_past and new position n_past + j iff j <= i (mask of shape (0, 0)) or
    mask[i, j] (bool[n, n]). Head h reads kv head h // (H // Hkv). One-pass (online) softmax
    per (token, head), accumulated in out: out must not alias q."""
    n, heads, dim = q.shape
    group = heads // k_cache.shape[0]
    causal = mask.shape[0] == 0
    sc = np.float32(scale)
    for it in prange(n * heads):
        i, h = it // heads, it % heads
        kh = h // group
        mx = np.float32(0)
        total = np.float32(0)
        for t in range(n_past + n):
            j = t - n_past
            if j >= 0 and (j > i if causal else not mask[i, j]):
                continue
            s = np.float32(0)
            for e in range(dim):
                s += q[i, h, e] * k_cache[kh, t, e]
            s *= sc
            if total == 0:  # first visible position
                mx = s
                for e in range(dim):
                    out[i, h, e] = 0
            elif s > mx:
                c = np.exp(mx - s)
                total *= c
                for e in range(dim):
                    out[i, h, e] *= c
                mx = s
            p = np.exp(s - mx)
            total += p
            for e in range(dim):
                out[i, h, e] += p * v_cache[kh, t, e]
        inv = np.float32(1) / total
        for e in range(dim):
            out[i, h, e] *= inv
