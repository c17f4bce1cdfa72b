"""Numba kernels (same names and signatures as edgert.kernels.ref).

Threading: the OpenMP layer is selected when Numba has it (a parallel region launches in a
few microseconds, against tens with workqueue), unless NUMBA_THREADING_LAYER chose one.
GOMP_SPINCOUNT (how long an idle OpenMP worker spins before it sleeps; libgomp reads it once,
when this module first loads it) is chosen per process by the kind of its first model
(kernels.prefer_spin_count, called by edgert.load; 1000 if nothing chose). Measured on a
2-vCPU EPYC VM:
- libgomp's own default, 300000 (about 15 ms of spinning after each region): idle workers
  kept spinning while OpenBLAS ran float matmuls in the same process, which then ran 10-40x
  slower. 30 depthwise convs on 2 threads, each followed by a [1, 576] x [576, 1536] float
  np.matmul: 307 ms at 300000, 31 ms at 10000, 4.6 ms at 1000 (the matmuls alone 0.9 ms). So
  language models, whose float weights take np.matmul, get 1000.
- At 1000, though, a worker often falls asleep between two regions and takes 100-300 us to
  wake: a 256 x 14 x 14 5x5 depthwise conv on 2 threads ran in 92-186 us in most seconds of a
  minute instead of 24-41 us (1 thread: 42 us), PP-LCNet in 3.2-7.2 ms instead of 2.2-3.7.
  So CNNs, which run one short kernel after another and no BLAS, get 10000 (about 0.5 ms).
"""
import os

import numba

from .. import SPIN_COUNTS

if numba.config.THREADING_LAYER == "default":
    os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNTS["llm"])
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
