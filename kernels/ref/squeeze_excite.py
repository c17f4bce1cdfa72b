"""NumPy twin of the squeeze-and-excite kernel (one image: x [C, P])."""
import numpy as np

from .conv import GROUP, conv_gemm
from .pool import global_avg_pool


def squeeze_excite(x, vals1, idx1, ptr1, bias1, act1, vals2, idx2, ptr2, bias2, act2, out):
    """out f32[C, P] = x * s[:, None] for s = act2(W2 @ act1(W1 @ mean(x, axis=1) + bias1) +
    bias2), W1 [M, C] and W2 [C, M] in conv_gemm's block layout; act1, act2 f32[5]."""
    c = x.shape[0]
    pooled = np.empty((c, 1), np.float32)
    global_avg_pool(x, pooled)
    mid = np.empty(((len(ptr1) - 1) * GROUP, 1), np.float32)
    conv_gemm(pooled, vals1, idx1, ptr1, bias1, act1, mid)
    scale = np.empty((c, 1), np.float32)
    conv_gemm(mid, vals2, idx2, ptr2, bias2, act2, scale)
    np.multiply(x, scale, out=out)
