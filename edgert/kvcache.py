"""The KV cache: per layer, keys and values as float32 [n_kv_heads, capacity, head_dim].

All layers share one anonymous memory mapping, whose pages the operating system hands out
only as positions are written, so a long context costs memory only once it is used. (Not
np.zeros: NumPy asks for transparent huge pages on large arrays, and then writing one
position of one head commits 2 MB.)
"""
from __future__ import annotations

import mmap

import numpy as np


def lazy_zeros(shape: tuple, dtype) -> np.ndarray:
    """A zero-filled array whose memory is committed page by page as it is written."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    try:
        return np.frombuffer(mmap.mmap(-1, max(nbytes, 1)), dtype, int(np.prod(shape))).reshape(shape)
    except (OSError, ValueError):  # no anonymous mappings on this platform
        return np.zeros(shape, dtype)


class KVCache:
    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, capacity: int):
        self.capacity = capacity
        self.block = lazy_zeros((2, n_layers, n_kv_heads, capacity, head_dim), np.float32)
        self.k, self.v = list(self.block[0]), list(self.block[1])
        self.length = 0

    @property
    def nbytes(self) -> int:
        return self.block.nbytes
