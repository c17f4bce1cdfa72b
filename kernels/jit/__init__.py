"""Numba kernels (same names and signatures as edgert.kernels.ref).

Threading: the OpenMP layer is selected when Numba has it (a parallel region launches in a
few microseconds, against tens with workqueue), unless NUMBA_THREADING_LAYER chose one.
GOMP_SPINCOUNT defaults to 1000 (libgomp's own is 300000, about 15 ms of spinning after each
region here): with libgomp's default, idle OpenMP workers kept spinning while OpenBLAS ran
float matmuls in the same process, which then ran 10-40x slower. With 1000, though, a worker
often falls asleep between two regions and takes 100-300 us to wake on this shared VM: a 256
x 14 x 14 5x5 depthwise conv on 2 threads ran in 92-186 us in most seconds of a minute
instead of 24-41 us (1 thread: 42 us), PP-LCNet on 2 threads in 3.2-7.2 ms instead of
2.2-3.7. GOMP_SPINCOUNT=10000 (about 0.5 ms) gives the latter, and is worth setting for CNNs
on 2 or more threads; it is not the default because it costs elsewhere: 30 depthwise convs
each followed by a [1, 576] x [576, 1536] float np.matmul took 31 ms instead of 4.6 (the
matmuls alone 0.9 ms). Both settings take effect only if libgomp is not loaded yet in the
process.
"""
import os

import numba

if numba.config.THREADING_LAYER == "default":
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")
    try:
        from numba.np.ufunc import omppool  # noqa: F401  (loads libgomp; raises if missing)

        numba.config.THREADING_LAYER = "omp"
    except ImportError:
        pass

from .activation import silu_mul, softmax  # noqa: E402
from .attention import attention  # noqa: E402
from .conv import conv_direct, conv_gemm, conv_gemm_dw, dense, depthwise_conv, gemm_dw_scratch  # noqa: E402
from .norm import rms_norm  # noqa: E402
from .pool import global_avg_pool  # noqa: E402
from .quant import QMATMUL, dequant_rows, isa, quantize_act  # noqa: E402
from .rope import rope  # noqa: E402
from .rows_i8 import matmul_rows_i8, quantize_rows_i8  # noqa: E402
from .sparse_ffn import sparse_ffn  # noqa: E402
from .squeeze_excite import squeeze_excite  # noqa: E402

ISA = isa()
qmatmul = QMATMUL[ISA]

__all__ = ["quantize_act", "qmatmul", "dequant_rows", "rms_norm", "rope", "attention", "silu_mul", "softmax",
           "quantize_rows_i8", "matmul_rows_i8", "sparse_ffn", "conv_gemm", "conv_gemm_dw",
           "gemm_dw_scratch", "depthwise_conv", "conv_direct", "dense", "squeeze_excite", "global_avg_pool"]
