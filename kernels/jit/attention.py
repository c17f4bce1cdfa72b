"""Numba attention over a KV cache."""
import numpy as np
from numba import njit, prange

from .activation import _exp


@njit(cache=True, nogil=True)
def _sum_nonzero(a, n):
    """Sum of a[:n] (float32, >= 0) in 8 partial sums taken by the rank of the nonzero entries:
    the same result bit for bit whatever zeros (masked positions) lie between them. No
    fast-math here, so the order is kept."""
    acc = np.zeros(8, np.float32)
    r = 0
    for t in range(n):
        if a[t] != 0:
            acc[r & 7] += a[t]
            r += 1
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))


@njit(cache=True, nogil=True, fastmath=True, parallel=True)
def attention(q, k, v, k_cache, v_cache, n_past, mask, scale, out):
    """Store the n new tokens' k, v f32[n, Hkv, D] at cache positions n_past..n_past+n-1 of
    k_cache, v_cache f32[Hkv, T, D], then out f32[n, H, D] = softmax(q k^T * scale) v for
    q f32[n, H, D]. Query i sees every position < n_past and new position n_past + j iff
    j <= i (mask of shape (0, 0)) or mask[i, j] (bool[n, n]). Head h reads kv head
    h // (H // Hkv). q, k, v may be strided views (of one fused qkv row); out must not alias
    them. Work items are (token, kv head): the query heads sharing a kv head read each cached
    row once; two passes (scores, then softmax-weighted sum of v rows)."""
    n, heads, dim = q.shape
    hkv = k_cache.shape[0]
    group = heads // hkv
    causal = mask.shape[0] == 0
    for i in range(n):
        for h in range(hkv):
            for e in range(dim):
                k_cache[h, n_past + i, e] = k[i, h, e]
                v_cache[h, n_past + i, e] = v[i, h, e]
    sc = np.float32(scale)
    for item in prange(n * hkv):
        i, kh = item // hkv, item % hkv
        length = n_past + i + 1 if causal else n_past + n
        s = np.empty((group, length), np.float32)
        qi = np.empty((group, dim), np.float32)  # contiguous copy: q may be a strided view
        for g in range(group):
            for e in range(dim):
                qi[g, e] = q[i, kh * group + g, e] * sc
        # masked positions are tested by the mask itself (fast-math assumes no infinities, so a
        # -inf score cannot mark them) and get probability exactly 0
        for t in range(length):
            visible = causal or t < n_past or mask[i, t - n_past]
            for g in range(group):
                acc = np.float32(0)
                for e in range(dim):
                    acc += qi[g, e] * k_cache[kh, t, e]
                s[g, t] = acc if visible else np.float32(-3e38)
        for g in range(group):
            mx = s[g, 0]
            for t in range(1, length):
                mx = max(mx, s[g, t])
            for t in range(length):
                visible = causal or t < n_past or mask[i, t - n_past]
                s[g, t] = _exp(s[g, t] - mx) if visible else np.float32(0)
            # a token-tree node must match the same path decoded token by token: a vectorized sum
            # would group the visible terms differently around the masked ones
            inv = np.float32(1) / _sum_nonzero(s[g], length)
            for t in range(length):
                s[g, t] *= inv
        for g in range(group):
            for e in range(dim):
                out[i, kh * group + g, e] = 0
        for t in range(length):
            for g in range(group):
                p = s[g, t]
                if p != 0:
                    for e in range(dim):
                        out[i, kh * group + g, e] += p * v_cache[kh, t, e]
