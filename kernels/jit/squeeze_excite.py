"""Numba squeeze-and-excite block (one image: x [C, P], P = H * W pixels, channel-major)."""
import numpy as np
from numba import njit, prange

from ..ref.conv import GROUP
from .conv import GEMV_ACCS, _gemv_block
from .pool import POOL_ITEMS, channel_means


@njit(cache=True, nogil=True, fastmath=True, parallel=True)
def squeeze_excite(x, vals1, idx1, ptr1, bias1, act1, vals2, idx2, ptr2, bias2, act2, out):
    """out f32[C, P] = x * s[:, None] for s = act2(W2 @ act1(W1 @ mean(x, axis=1) + bias1) +
    bias2): W1 [M, C] and W2 [C, M] in conv_gemm's block layout (vals f32[nnz, GROUP], idx i32
    in [0, C) and [0, M), ptr i32[nb + 1], bias f32[nb * GROUP]), act1, act2 f32[5]; x, out
    C-contiguous. One op for what the graph spells as a global average pool, two 1x1 convs on
    the 1 x 1 map and a broadcast multiply. Channels are pooled and scaled in the same
    POOL_ITEMS runs, so on two threads each reads the channels its core pooled; the two
    products (PP-LCNet's largest: 131k multiply-adds dense) run on one thread between them."""
    C, P = x.shape
    nb1, nb2 = ptr1.shape[0] - 1, ptr2.shape[0] - 1
    if (out.shape[0] != C or out.shape[1] != P or vals1.shape[1] != GROUP or vals2.shape[1] != GROUP
            or C > nb2 * GROUP or bias1.shape[0] < nb1 * GROUP or bias2.shape[0] < nb2 * GROUP):
        raise ValueError("squeeze_excite: shapes do not match")
    pooled = np.empty((C, 1), np.float32)
    items = min(C, POOL_ITEMS)
    for item in prange(items):
        channel_means(x, pooled, item * C // items, (item + 1) * C // items)
    mid = np.empty((nb1 * GROUP, 1), np.float32)
    for b in range(nb1):
        _gemv_block(GEMV_ACCS, pooled, vals1, idx1, ptr1[b], ptr1[b + 1], bias1, act1, mid, b * GROUP)
    scale = np.empty((C, 1), np.float32)
    for b in range(nb2):
        _gemv_block(GEMV_ACCS, mid, vals2, idx2, ptr2[b], ptr2[b + 1], bias2, act2, scale, b * GROUP)
    for item in prange(items):
        for c in range(item * C // items, (item + 1) * C // items):
            s = scale[c, 0]
            for j in range(P):
                out[c, j] = x[c, j] * s
