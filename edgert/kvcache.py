"""The KV cache: per layer, keys and values as float32 [n_kv_heads, capacity, head_dim].

Allocated with np.zeros, so the operating system hands out pages only as positions are
written: a long context costs memory only once it is used.
"""
from __future__ import annotations

import numpy as np


class KVCache:
    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, capacity: int):
        self.capacity = capacity
        self.k = [np.zeros((n_kv_heads, capacity, head_dim), np.float32) for _ in range(n_layers)]
        self.v = [np.zeros((n_kv_heads, capacity, head_dim), np.float32) for _ in range(n_layers)]
        self.length = 0

    def truncate(self, length: int) -> None:
        """Forget every position from `length` on (their slots are overwritten later)."""
        self.length = min(self.length, length)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.k) + sum(a.nbytes for a in self.v)
