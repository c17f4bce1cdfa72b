"""NumPy sparse FFN: only the active neurons' up rows and down columns take part."""
import numpy as np

from .quant import dequant_rows


def sparse_ffn(fmt, x, act, idx, slots, up_d, up_m, up_qs, down_d, down_qs, out):
    """out f32[n, D] += sum over j of (act[:, idx[j]] * (x @ up_j)) * down_j, where neuron
    idx[j]'s up row (format `fmt`: up_d, up_m uint16 fp16 bits [C, B] (up_m (0, 0) unless q4_1),
    up_qs [C, B, 16 or 32]) and down column (q8_0: down_d [C, B], down_qs int8 [C, B, 32]) sit
    in cache slot slots[j]. x f32[n, D], act f32[n, F] (gate activations, zero where inactive),
    idx, slots int64 [a]."""
    if idx.size == 0:
        return
    up = np.empty((idx.size, x.shape[1]), np.float32)
    dequant_rows(fmt, up_d, up_m, up_qs, slots, up)
    coef = act[:, idx] * (x @ up.T)  # [n, a]
    down = np.empty((idx.size, out.shape[1]), np.float32)
    dequant_rows(2, down_d, np.zeros((0, 0), np.uint16), down_qs, slots, down)
    out += coef @ down
