"""Compute kernels: pure compute, no I/O, no model knowledge.

``load()`` returns a backend module with the kernels (``jit``: Numba, ``ref``: NumPy twins
with the same names and signatures, which also run under Pyodide). ``qmatmul`` is the
NumPy-level prefill product shared by both backends.
"""
import importlib
import os
import sys

import numpy as np

BACKENDS = ("jit", "ref")
_PYODIDE = sys.platform == "emscripten"


def _numba():
    try:
        import numba
    except ImportError:
        return None
    return numba


def load(backend=None):
    """Kernel module for `backend` ("jit" | "ref"); None: $EDGERT_KERNELS if set, else "jit" when
    numba imports, else "ref"."""
    if backend is None:
        backend = os.environ.get("EDGERT_KERNELS") or ("jit" if _numba() else "ref")
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; supported: {', '.join(BACKENDS)}")
    if backend == "jit" and _numba() is None:
        raise ImportError("kernel backend 'jit' needs numba (pip install numba); or use backend 'ref'")
    return importlib.import_module(f".{backend}", __name__)


def set_threads(n):
    """Use n threads in the Numba kernels (capped at the cores Numba sees); no-op without numba."""
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    numba = _numba()
    if numba is not None:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def qmatmul(K, fmt, x, d, m, qs, out, tile=None):
    """out f32[n, N] = x f32[n, K] @ W.T for quantized W [N, K] (fmt, d, m, qs as in qmatvec):
    `tile` rows at a time (default: about 2**20 weights, a 4 MB scratch) are dequantized with
    K.dequant_rows into one scratch, then multiplied with np.matmul (BLAS in CPython; einsum
    under Pyodide). The prefill path (n > 1)."""
    N = d.shape[0]
    tile = tile or max(1, (1 << 20) // x.shape[1])
    scratch = np.empty((min(tile, N), x.shape[1]), np.float32)
    rows = np.arange(N, dtype=np.int64)
    for r0 in range(0, N, tile):
        w = scratch[: min(tile, N - r0)]
        K.dequant_rows(fmt, d, m, qs, rows[r0 : r0 + len(w)], w)
        if _PYODIDE:  # no BLAS there: einsum is about 2x faster than matmul
            np.einsum("nk,tk->nt", x, w, out=out[:, r0 : r0 + len(w)])
        else:
            np.matmul(x, w.T, out=out[:, r0 : r0 + len(w)])
