"""Quant block formats against the gguf package (llama.cpp's reference layouts and math)."""
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402

from edgert.kernels import formats  # noqa: E402

GGML = {"q4_0": T.Q4_0, "q4_1": T.Q4_1, "q8_0": T.Q8_0}


def tricky_weights():
    """f32 [6, 256]: random scales plus blocks that hit the edge cases of the quantizers."""
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((6, 256)) * rng.uniform(1e-3, 5, (6, 1))).astype(np.float32)
    w[0, :32] = 0                                        # all-zero block
    w[0, 32:64] = 0.25                                   # constant block (q4_1: d = 0)
    w[1, :32] = np.arange(32) - 15.5                     # +-max tie: the first one wins
    w[1, 32:64] = np.r_[127, -127, np.arange(30) - 14.5]  # q8_0: d = 1, halves round away from 0
    w[2, :32] *= 1e-6                                    # fp16 subnormal scales
    w[3, :32] = -np.abs(w[3, :32])                       # all negative
    return w


def assert_same_parts(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k].view(np.uint8), b[k].view(np.uint8), err_msg=k)


@pytest.mark.parametrize("fmt", list(formats.FORMATS))
def test_quantize_matches_gguf(fmt):
    w = tricky_weights()
    raw = gguf.quants.quantize(w, GGML[fmt])
    parts = formats.from_gguf_blocks(raw, fmt, *w.shape)
    assert_same_parts(formats.quantize(w, fmt), parts)
    np.testing.assert_array_equal(formats.dequantize(parts, fmt), gguf.quants.dequantize(raw, GGML[fmt]))
    specs = formats.part_specs(fmt, *w.shape)
    assert [(k, v.dtype, v.shape) for k, v in parts.items()] == specs


def test_bad_input():
    with pytest.raises(ValueError, match="unknown quant format 'q5_0'; supported: q4_0, q4_1, q8_0"):
        formats.part_specs("q5_0", 4, 64)
    with pytest.raises(ValueError, match="not a multiple of 32"):
        formats.quantize(np.zeros((2, 40), np.float32), "q8_0")
    with pytest.raises(ValueError, match="expected 72 bytes, got 71"):
        formats.from_gguf_blocks(np.zeros(71, np.uint8), "q4_0", 2, 64)


def real_tensors(path, types, max_rows=8192):
    """(name, fmt, N, K, raw uint8 rows) for each tensor of `types` in a GGUF file, at most
    max_rows rows each."""
    names = {v: k for k, v in GGML.items()}
    for t in gguf.GGUFReader(path).tensors:
        if t.tensor_type in types and len(t.shape) == 2:
            K, N = (int(s) for s in t.shape)
            rows = min(N, max_rows)
            yield t.name, names[t.tensor_type], rows, K, np.asarray(t.data[:rows])


def check_real(path, types):
    seen = set()
    for name, fmt, N, K, raw in real_tensors(path, types):
        parts = formats.from_gguf_blocks(raw, fmt, N, K)
        w = formats.dequantize(parts, fmt)
        np.testing.assert_array_equal(w, gguf.quants.dequantize(raw, GGML[fmt]), err_msg=name)
        seen.add(fmt)
        if fmt == "q4_1" and "q4_0" not in seen:  # a realistic weight through all three quantizers
            for f in GGML:
                assert_same_parts(formats.quantize(w, f), formats.from_gguf_blocks(
                    gguf.quants.quantize(w, GGML[f]), f, N, K))
            seen.add("q4_0")
    return seen


@pytest.mark.slow
def test_real_smollm2(smollm2_gguf):
    assert check_real(smollm2_gguf, (T.Q4_1, T.Q8_0)) == {"q4_0", "q4_1", "q8_0"}


@pytest.mark.slow
def test_real_qwen(qwen05_gguf):
    assert check_real(qwen05_gguf, (T.Q8_0,)) == {"q8_0"}
