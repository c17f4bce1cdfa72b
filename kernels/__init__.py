"""Compute kernels: pure compute, no I/O, no model knowledge.

``load()`` returns a backend module with the kernels (``jit``: Numba, ``ref``: NumPy twins
with the same names and signatures, which also run under Pyodide).
"""
import importlib
import os
import sys
from contextlib import contextmanager

BACKENDS = ("jit", "ref")
SPIN_COUNTS = {"llm": "1000", "cnn": "10000"}  # GOMP_SPINCOUNT per model kind: see jit/__init__.py


def prefer_spin_count(kind: str) -> None:
    """Set GOMP_SPINCOUNT for a process whose first model is of `kind` ("llm" | "cnn"), unless
    the user set it or the OpenMP runtime is loaded already (libgomp reads it once, when the
    jit backend first imports): CNNs want their workers to spin between kernels, float LLM
    weights (np.matmul, OpenBLAS's own threads) want them asleep."""
    if f"{__name__}.jit" not in sys.modules:
        os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNTS[kind])


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


def cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads() -> int:
    """All cores this process may use but one, at least one. On 2 shared cores a second
    thread that the OS deschedules stalls every parallel region: with another busy process
    here, SmolLM2 decode fell from about 70 tok/s on 1 thread to 1-35 tok/s on 2."""
    return max(1, cores() - 1)


def set_threads(n):
    """Use n threads in the Numba kernels (capped at the cores Numba sees); no-op without numba."""
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    numba = _numba()
    if numba is not None:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


@contextmanager
def threads(n):
    """Run this thread's kernels on n threads inside the with-block, then restore the count
    it had (Numba's count is per calling thread)."""
    numba = _numba()
    before = numba.get_num_threads() if numba is not None else 1
    set_threads(n)
    try:
        yield
    finally:
        set_threads(before)
