"""The sparse FFN op (sparse neuron windowing): only neurons whose gate activation passes the
layer's calibrated threshold take part, and under a memory budget only those not already in
the layer's neuron cache are read from storage.

Op "sparse_ffn" (written by convert/sparsify.py): in [h [n, d], g [n, F] gate pre-activations],
out [n, d]; w {"bundle": blk.N.ffn_bundle}; attrs {layer, threshold, up_format}. Per step:
a = silu(g), zeroed where |a| <= threshold; the active neurons (any token) are fetched into the
cache (least recently used slots evicted first, so neurons active over the last tokens stay),
then K.sparse_ffn adds their up-row / down-column products. Without a store the whole bundle
is mapped and a neuron's slot is its index.

A bundle record (record_layout): the neuron's up row as stored (d, m for q4_1, qs) then its
down column in q8_0 (d, qs), packed back to back; bytes rounded up to a multiple of 4.
"""
from __future__ import annotations

import numpy as np

from . import kernels
from .errors import EdgeError
from .interpreter import OPS
from .kernels import formats

BLAS_ROWS = 4  # steps of more tokens than this use the NumPy (BLAS) sparse_ffn


def record_layout(up_dtype: str, d: int) -> tuple[list, int]:
    """Byte layout of one neuron's record: [(field, numpy dtype, shape, offset)], total bytes
    (a multiple of 4). Fields: up_d, up_m (q4_1 only), up_qs, down_d, down_qs."""
    fields, off = [], 0
    for prefix, fmt in (("up", up_dtype), ("down", "q8_0")):
        for part, dt, shape in formats.part_specs(fmt, 1, d):
            fields.append((f"{prefix}_{part}", np.dtype(dt), tuple(shape[1:]), off))
            off += int(np.prod(shape[1:])) * np.dtype(dt).itemsize
    return fields, (off + 3) // 4 * 4


def bundle_views(raw: np.ndarray, up_dtype: str, d: int) -> dict:
    """uint8 [C, record bytes] -> {field: strided view [C, ...]}; fp16 fields as uint16 bits."""
    fields, size = record_layout(up_dtype, d)
    if raw.shape[1] != size:
        raise EdgeError(f"neuron bundle records of {raw.shape[1]} bytes; expected {size}")
    out = {"up_m": np.zeros((0, 0), np.uint16)}
    for name, dt, shape, off in fields:
        n = int(np.prod(shape)) * dt.itemsize
        view = raw[:, off:off + n].view(dt).reshape((raw.shape[0],) + shape)
        out[name] = view.view(np.uint16) if dt == np.float16 else view
    return out


class NeuronCache:
    """`capacity` neuron records of one layer's bundle in memory, least recently used evicted."""

    def __init__(self, store, name: str, up_dtype: str, d: int, capacity: int):
        t = store.edge.header["tensors"][name]
        self.store, self.capacity = store, int(capacity)
        self.neurons, words = t["shape"]
        self.record = 4 * words
        self.offset = store.edge.data_start + t["offset"]
        self.buf = np.empty((self.capacity, self.record), np.uint8)
        self.views = bundle_views(self.buf, up_dtype, d)
        self.slot_of = np.full(self.neurons, -1, np.int64)
        self.neuron_of = np.full(self.capacity, -1, np.int64)
        self.last = np.full(self.capacity, -1, np.int64)
        self.clock = 0
        self.misses = 0

    def fetch(self, need: np.ndarray) -> np.ndarray:
        """Slots of the sorted neuron ids `need` (at most capacity), reading the missing ones."""
        self.clock += 1
        slots = self.slot_of[need]
        miss = need[slots < 0]
        if miss.size:
            age = self.last.copy()
            age[slots[slots >= 0]] = np.iinfo(np.int64).max  # needed now: not evictable
            victims = np.argpartition(age, miss.size - 1)[:miss.size] if miss.size < self.capacity else \
                np.arange(self.capacity)
            old = self.neuron_of[victims]
            self.slot_of[old[old >= 0]] = -1
            self.neuron_of[victims] = miss
            self.slot_of[miss] = victims
            self.misses += miss.size
            breaks = np.flatnonzero(np.diff(miss) != 1) + 1  # runs of consecutive neurons: one read each
            runs = []
            for ids, vs in zip(np.split(miss, breaks), np.split(victims, breaks)):
                runs.append((self.offset + int(ids[0]) * self.record, [self.buf[v] for v in vs.tolist()]))
            self.store.read_runs(runs)
            slots = self.slot_of[need]
        self.last[slots] = self.clock
        return slots


def _bind_sparse_ffn(it, op, st):
    a = op["attrs"]
    threshold, up_dtype = np.float32(a["threshold"]), a["up_format"]
    fmt = formats.FORMATS[up_dtype]
    h, g = (st.env[v] for v in op["in"])
    out = st.env[op["out"][0]]
    name = op["w"]["bundle"]
    store = getattr(it, "store", None)
    cache = store.neuron_cache(name, up_dtype, h.shape[1]) if store is not None else None
    if cache is None:
        raw = it.weights.edge.tensor(name).view(np.uint8)
        views = bundle_views(raw, up_dtype, h.shape[1])
    else:
        views = cache.views
    ones = np.ones_like(g)
    act = np.empty_like(g)
    # many tokens (prefill, scoring): the NumPy twin, whose dequantized rows meet all tokens in
    # one BLAS product, beats the per-token loops of the Numba kernel
    K = it.K if h.shape[0] <= BLAS_ROWS else kernels.load("ref")
    vw = (views["up_d"], views["up_m"], views["up_qs"], views["down_d"], views["down_qs"])

    def run():
        it.K.silu_mul(g, ones, act)
        on = np.abs(act) > threshold
        act[~on] = 0
        active = np.flatnonzero(on.any(axis=0)).astype(np.int64)
        out[...] = 0
        if cache is None:
            K.sparse_ffn(fmt, h, act, active, active, *vw, out)
            return
        for s in range(0, active.size, cache.capacity):
            part = active[s:s + cache.capacity]
            K.sparse_ffn(fmt, h, act, part, cache.fetch(part), *vw, out)
    return run


OPS["sparse_ffn"] = _bind_sparse_ffn
