"""Numba sparse FFN: only the active neurons' up rows and down columns take part."""
import numpy as np
from numba import njit, prange

from ..formats import Q4_1, Q8_0
from .quant import _f16


@njit(cache=True, nogil=True, fastmath=True, parallel=True)
def sparse_ffn(fmt, x, act, idx, slots, up_d, up_m, up_qs, down_d, down_qs, out):
    """out f32[n, D] += sum over j of (act[:, idx[j]] * (x @ up_j)) * down_j, where neuron
    idx[j]'s up row (format `fmt`: up_d, up_m uint16 fp16 bits [C, B] (up_m (0, 0) unless q4_1),
    up_qs [C, B, 16 or 32]) and down column (q8_0: down_d [C, B], down_qs int8 [C, B, 32]) sit
    in cache slot slots[j]. x f32[n, D], act f32[n, F] (gate activations, zero where inactive),
    idx, slots int64 [a]. Two passes: the up dots per neuron (parallel over neurons), then the
    down columns accumulated per block of 32 outputs (parallel over blocks)."""
    n, D = x.shape
    a = idx.size
    nb = D // 32
    coef = np.empty((a, n), np.float32)  # np.zeros here would be a parallel region of its own
    for j in prange(a):
        s = slots[j]
        for t in range(n):
            if act[t, idx[j]] == 0:
                coef[j, t] = 0
                continue
            acc = np.float32(0)
            for b in range(nb):
                scale = _f16(up_d[s, b])
                part = np.float32(0)
                if fmt == Q8_0:
                    for i in range(32):
                        part += np.float32(up_qs[s, b, i]) * x[t, b * 32 + i]
                    acc += scale * part
                else:
                    xsum = np.float32(0)
                    for i in range(16):
                        q = up_qs[s, b, i]
                        part += np.float32(q & np.uint8(15)) * x[t, b * 32 + i] + \
                            np.float32(q >> np.uint8(4)) * x[t, b * 32 + 16 + i]
                        xsum += x[t, b * 32 + i] + x[t, b * 32 + 16 + i]
                    base = _f16(up_m[s, b]) if fmt == Q4_1 else np.float32(-8) * scale
                    acc += scale * part + base * xsum
            coef[j, t] = act[t, idx[j]] * acc
    for b in prange(nb):
        for j in range(a):
            s = slots[j]
            scale = _f16(down_d[s, b])
            for t in range(n):
                c = coef[j, t] * scale
                if c == 0:
                    continue
                for i in range(32):
                    out[t, b * 32 + i] += c * np.float32(down_qs[s, b, i])
