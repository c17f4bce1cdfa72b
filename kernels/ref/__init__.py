"""NumPy twins of the Numba kernels (same names and signatures); they run under Pyodide
(no BLAS there, 32-bit intp): einsum rather than @, few large calls."""
from .activation import silu_mul, softmax
from .attention import attention
from .conv import conv_direct, conv_gemm, conv_gemm_dw, dense, depthwise_conv, gemm_dw_scratch
from .norm import rms_norm
from .pool import global_avg_pool
from .quant import dequant_rows, qmatmul, quantize_act
from .rope import rope
from .rows_i8 import matmul_rows_i8, quantize_rows_i8
from .sparse_ffn import sparse_ffn
from .squeeze_excite import squeeze_excite

__all__ = ["quantize_act", "qmatmul", "dequant_rows", "rms_norm", "rope", "attention", "silu_mul", "softmax",
           "quantize_rows_i8", "matmul_rows_i8", "sparse_ffn", "conv_gemm", "conv_gemm_dw",
           "gemm_dw_scratch", "depthwise_conv", "conv_direct", "dense", "squeeze_excite", "global_avg_pool"]
