"""convert.requant: the block search against round-to-nearest and against known grids, the parts
against gguf's dequantizers, and the mixed-precision policy."""
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402

from edgert.convert import requant  # noqa: E402
from edgert.kernels import formats  # noqa: E402
from test_formats import GGML, tricky_weights  # noqa: E402

FMTS = list(formats.FORMATS)


def weights(kind, shape=(64, 512)):
    """f32 test weights: Gaussian rows of varied scale, heavy-tailed (Student t, 2 dof) or the
    edge-case blocks of test_formats."""
    rng = np.random.default_rng(3)
    if kind == "tricky":
        return tricky_weights()
    scale = rng.uniform(1e-3, 1, (shape[0], 1))
    w = rng.standard_normal(shape) if kind == "gaussian" else rng.standard_t(2, shape)
    return (w * scale).astype(np.float32)


def rmse(parts, fmt, w):
    return float(np.sqrt(np.mean((formats.dequantize(parts, fmt) - w).astype(np.float64) ** 2)))


def to_gguf_blocks(parts, fmt):
    """parts -> GGUF tensor data (uint8 [N, B * block bytes]): per block d, (m), qs."""
    N, B = parts["d"].shape
    names = [k for k, _, _ in formats.part_specs(fmt, N, B * formats.BLOCK)]
    return np.concatenate([parts[k].view(np.uint8).reshape(N, B, -1) for k in names], axis=-1).reshape(N, -1)


@pytest.mark.parametrize("kind", ["gaussian", "heavy", "tricky"])
@pytest.mark.parametrize("fmt", FMTS)
def test_search_never_worse_than_round_to_nearest(fmt, kind):
    w = weights(kind)
    ours, rtn = rmse(requant.quantize(w, fmt), fmt, w), rmse(formats.quantize(w, fmt), fmt, w)
    assert ours <= rtn
    if kind == "gaussian" and fmt != "q8_0":
        assert ours < 0.97 * rtn  # the search buys something on ordinary weights


@pytest.mark.parametrize("kind", ["gaussian", "tricky"])
@pytest.mark.parametrize("fmt", FMTS)
def test_parts_are_valid(fmt, kind):
    w = weights(kind)
    parts = requant.quantize(w, fmt)
    assert [(k, v.dtype, v.shape) for k, v in parts.items()] == formats.part_specs(fmt, *w.shape)
    ours = formats.dequantize(parts, fmt)
    assert np.isfinite(ours).all()
    np.testing.assert_array_equal(ours, gguf.quants.dequantize(to_gguf_blocks(parts, fmt), GGML[fmt]))
    if fmt == "q8_0":
        assert np.abs(parts["qs"].astype(int)).max() <= 127


def test_5bit_source_to_q8_0_is_almost_exact():
    """A Q5_0 tensor (made by gguf's quantizer) lands on q8_0's grid: 127 - 15 = 7 * 16."""
    src = gguf.quants.dequantize(gguf.quants.quantize(weights("gaussian"), T.Q5_0), T.Q5_0)
    rel = rmse(requant.quantize(src, "q8_0"), "q8_0", src) / np.sqrt(np.mean(src.astype(np.float64) ** 2))
    rtn = rmse(formats.quantize(src, "q8_0"), "q8_0", src) / np.sqrt(np.mean(src.astype(np.float64) ** 2))
    assert rel < 1e-3 < 3e-3 < rtn


def test_4bit_affine_source_to_q4_1_is_exact():
    """Blocks q * d + m (fp16 d, m) whose codes span 0..12, as a Q4_K sub-block may: min-max
    rounding (over 15 steps) misses their grid; the search lands on it."""
    rng = np.random.default_rng(5)
    q = rng.integers(0, 13, (32, 16, 32)).astype(np.float32)
    q[..., 0], q[..., 1] = 0, 12
    d = rng.uniform(1e-3, 1e-1, (32, 16, 1)).astype(np.float16).astype(np.float32)
    m = rng.uniform(-1, 0, (32, 16, 1)).astype(np.float16).astype(np.float32)
    src = (q * d + m).reshape(32, 512)
    got = formats.dequantize(requant.quantize(src, "q4_1"), "q4_1")
    np.testing.assert_allclose(got, src, rtol=0, atol=1e-6)  # float32 least squares, then fp16
    assert rmse(formats.quantize(src, "q4_1"), "q4_1", src) > 1e-3


@pytest.mark.parametrize("name, src, quant, want", [
    ("blk.0.attn_q.weight", "Q5_0", "q4_0", "q8_0"),
    ("blk.7.attn_k.weight", "F16", "q4_1", "q8_0"),
    ("blk.7.attn_v.weight", "Q6_K", "q4_1", "q8_0"),
    ("blk.7.attn_output.weight", "Q5_0", "q4_1", "q8_0"),
    ("blk.7.ffn_up.weight", "Q5_0", "q4_1", "q8_0"),
    ("blk.7.ffn_down.weight", "Q6_K", "q4_0", "q8_0"),
    ("output.weight", "Q6_K", "q4_0", "q8_0"),
    ("blk.7.ffn_gate.weight", "Q5_0", "q4_0", "q4_0"),
    ("blk.7.ffn_gate.weight", "BF16", "q4_1", "q4_1"),
    ("token_embd.weight", "Q5_0", "q4_1", "q4_1"),
    ("blk.7.ffn_gate.weight", "Q5_0", "q8_0", "q8_0"),
    ("token_embd.weight", "F16", "q8_0", "q8_0"),
    ("blk.7.ffn_down.weight", "Q4_K", "q4_0", "q4_1"),   # 4-bit sources stay 4-bit, as q4_1
    ("blk.7.ffn_down.weight", "Q4_K", "q8_0", "q4_1"),
    ("token_embd.weight", "Q3_K", "q4_0", "q4_1"),
])
def test_policy(name, src, quant, want):
    assert requant.target_format(name, src, quant) == want
    w = weights("gaussian", (8, 64))
    fmt, parts, stats = requant.requantize(name, src, w, quant)
    assert fmt == want
    assert [(k, v.dtype, v.shape) for k, v in parts.items()] == formats.part_specs(want, 8, 64)
    assert stats.startswith(f"{src} -> {want}: rel RMS error ")


@pytest.mark.parametrize("name,src,quant", [
    ("blk.7.attn_q.weight", "Q5_0", "q4_1"),
    ("output.weight", "Q6_K", "q4_0"),
    ("blk.7.ffn_down.weight", "Q4_K", "q4_0"),
    ("token_embd.weight", "F16", "q8_0"),
])
def test_pure_keeps_every_role_in_the_format_asked_for(name, src, quant):
    """convert --pure: no 8-bit roles and no q4_1 for 4-bit sources, `quant` everywhere."""
    assert requant.target_format(name, src, quant, pure=True) == quant
    fmt, parts, _ = requant.requantize(name, src, weights("gaussian", (8, 64)), quant, pure=True)
    assert fmt == quant and [(k, v.dtype, v.shape) for k, v in parts.items()] == formats.part_specs(quant, 8, 64)
