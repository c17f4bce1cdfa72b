"""Quantized block formats (groups of 32 along K), NumPy only.

A quantized [N, K] tensor (K % 32 == 0, B = K // 32) is a dict of parts:

- ``d``  float16 [N, B]      scale
- ``m``  float16 [N, B]      min (q4_1 only)
- ``qs`` q4_*: uint8 [N, B, 16], byte j = element j (low nibble) | element j + 16 (high nibble),
         as llama.cpp stores it; q8_0: int8 [N, B, 32]

Values: q4_0 ``(q - 8) * d``; q4_1 ``q * d + m``; q8_0 ``q * d``.
GGUF blocks: Q4_0 = d, qs (18 bytes); Q4_1 = d, m, qs (20 bytes); Q8_0 = d, 32 x int8 (34 bytes).
"""
import numpy as np

BLOCK = 32
Q4_0, Q4_1, Q8_0 = 0, 1, 2
FORMATS = {"q4_0": Q4_0, "q4_1": Q4_1, "q8_0": Q8_0}


def _check(fmt_name, K):
    if fmt_name not in FORMATS:
        raise ValueError(f"unknown quant format {fmt_name!r}; supported: {', '.join(FORMATS)}")
    if K % BLOCK:
        raise ValueError(f"{fmt_name}: K = {K} is not a multiple of {BLOCK}")
    return K // BLOCK


def part_specs(fmt_name, N, K):
    """[(part name, dtype, shape)] of an [N, K] tensor in ``fmt_name``, in storage order d, m, qs."""
    B = _check(fmt_name, K)
    specs = [("d", np.dtype(np.float16), (N, B))]
    if fmt_name == "q4_1":
        specs.append(("m", np.dtype(np.float16), (N, B)))
    if fmt_name == "q8_0":
        specs.append(("qs", np.dtype(np.int8), (N, B, BLOCK)))
    else:
        specs.append(("qs", np.dtype(np.uint8), (N, B, BLOCK // 2)))
    return specs


def _inverse(d):
    """1 / d in float32, 0 where d == 0 (as llama.cpp's ``d ? 1.0f/d : 0.0f``)."""
    inv = np.zeros_like(d)
    np.divide(np.float32(1), d, out=inv, where=d != 0)
    return inv


def quantize(w, fmt_name):
    """f32 [N, K] -> parts; the float32 math of llama.cpp's quantize_row_{q4_0,q4_1,q8_0}_ref."""
    w = np.asarray(w, dtype=np.float32)
    N, K = w.shape
    B = _check(fmt_name, K)
    x = w.reshape(N, B, BLOCK)
    if fmt_name == "q8_0":
        d = np.abs(x).max(axis=-1) / np.float32(127)
        v = x * _inverse(d)[..., None]
        a = np.abs(v)
        r = np.floor(a)
        r += a - r >= np.float32(0.5)  # roundf: halves away from zero
        return {"d": d.astype(np.float16), "qs": np.copysign(r, v).astype(np.int8)}
    if fmt_name == "q4_0":
        imax = np.abs(x).argmax(axis=-1)[..., None]
        d = np.take_along_axis(x, imax, axis=-1)[..., 0] / np.float32(-8)
        q = np.trunc(x * _inverse(d)[..., None] + np.float32(8.5))
        parts = {"d": d.astype(np.float16)}
    else:
        lo, hi = x.min(axis=-1), x.max(axis=-1)
        d = (hi - lo) / np.float32(15)
        q = np.trunc((x - lo[..., None]) * _inverse(d)[..., None] + np.float32(0.5))
        parts = {"d": d.astype(np.float16), "m": lo.astype(np.float16)}
    q = np.minimum(q, 15).astype(np.uint8)
    parts["qs"] = q[..., :16] | (q[..., 16:] << np.uint8(4))
    return parts


def dequantize(parts, fmt_name):
    """parts -> f32 [N, K]."""
    qs = parts["qs"]
    N, B = qs.shape[:2]
    _check(fmt_name, B * BLOCK)
    d = parts["d"].astype(np.float32)[..., None]
    if fmt_name == "q8_0":
        q = qs.astype(np.float32)
    else:
        q = np.concatenate([qs & np.uint8(15), qs >> np.uint8(4)], axis=-1).astype(np.float32)
    if fmt_name == "q4_0":
        w = (q - np.float32(8)) * d
    elif fmt_name == "q4_1":
        w = q * d + parts["m"].astype(np.float32)[..., None]
    else:
        w = q * d
    return w.reshape(N, B * BLOCK)


def from_gguf_blocks(raw, fmt_name, N, K):
    """GGUF tensor data (uint8, N * B blocks, row-major) -> parts, bit for bit."""
    B = _check(fmt_name, K)
    specs = part_specs(fmt_name, N, K)
    size = sum(dt.itemsize * int(np.prod(shape[2:], dtype=np.int64)) for _, dt, shape in specs)
    raw = np.asarray(raw, dtype=np.uint8).reshape(-1)
    if raw.size != N * B * size:
        raise ValueError(f"{fmt_name} [{N}, {K}]: expected {N * B * size} bytes, got {raw.size}")
    blocks = raw.reshape(N, B, size)
    parts, off = {}, 0
    for name, dt, shape in specs:
        nbytes = dt.itemsize * int(np.prod(shape[2:], dtype=np.int64))
        part = np.ascontiguousarray(blocks[:, :, off:off + nbytes]).view(dt)
        parts[name] = part.reshape(shape)
        off += nbytes
    return parts
