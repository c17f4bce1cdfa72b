"""NumPy attention over a KV cache."""
import numpy as np


def attention(q, k, v, k_cache, v_cache, n_past, mask, scale, out):
    """Store the n new tokens' k, v f32[n, Hkv, D] at cache positions n_past..n_past+n-1 of
    k_cache, v_cache f32[Hkv, T, D], then out f32[n, H, D] = softmax(q k^T * scale) v for
    q f32[n, H, D]. Query i sees every position < n_past and new position n_past + j iff
    j <= i (mask of shape (0, 0)) or mask[i, j] (bool[n, n]). Head h reads kv head
    h // (H // Hkv)."""
    n, heads, dim = q.shape
    hkv = k_cache.shape[0]
    k_cache[:, n_past:n_past + n] = k.transpose(1, 0, 2)
    v_cache[:, n_past:n_past + n] = v.transpose(1, 0, 2)
    length = n_past + n
    new = np.tril(np.ones((n, n), np.bool_)) if mask.shape[0] == 0 else mask
    visible = np.concatenate([np.ones((n, n_past), np.bool_), new], axis=1)
    qg = q.reshape(n, hkv, heads // hkv, dim)
    s = np.einsum("nkgd,ktd->kgnt", qg, k_cache[:, :length]) * np.float32(scale)
    s[..., ~visible] = -np.inf
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    out[...] = np.einsum("kgnt,ktd->nkgd", s, v_cache[:, :length]).reshape(n, heads, dim)
