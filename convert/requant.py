"""Requantization of GGUF weights that edgert does not keep bit for bit (Q5_0, Q4_K, Q6_K, F16, ...).

``requantize(name, src_type, w, quant)`` picks the edge format (``target_format``) and
quantizes the dequantized float32 weights by an error-minimising search (``quantize``).

Policy. Under a 4-bit ``--quant`` the roles in SENSITIVE (attention projections, ffn_up,
ffn_down, the output head) are stored as q8_0 and the rest (ffn_gate, token_embd) in the 4-bit
format asked for: measured on Qwen2.5-Coder-0.5B (Q5_0 source), 4-bit attention and ffn_up
move the logits most per byte, and without them in q8_0 teacher-forced top-1 agreement with
the source model stays below 95% (all 4-bit: 90%). ``--quant q8_0`` stores everything as q8_0.
A source with at most 4 bits per weight (LOW_BIT) is stored as q4_1 whatever ``--quant``:
Q4_K's sub-blocks of 32 (``d * q - m``) are q4_1 blocks, so it converts almost exactly.

Search, per block of 32, as llama.cpp's make_qx_quants / make_qkx2_quants: each candidate
scale puts the block's extreme value on a code near the end of the range (q4_0: the signed
abs-max on -8 +- 0.8 or on 7 +- 0.4; q4_1: max - min over 15 +- 1, and over 11, 12 and 13 for
sources whose codes span less; q8_0: the abs-max on each code 111..127); its rounded codes get
the least-squares scale (and min); the best fit wins and is refined twice by rounding again
with its own scale; the codes are finally rounded with the fp16 scale (and min) that is
stored. The window 111..127 holds a multiple of every integer up to 17, so a source on a grid
of at most 5 bits (Q5_0: codes -16..15) converts to q8_0 almost exactly. All math is float32
NumPy over chunks of blocks; parts are laid out as in ``formats``.
"""
from __future__ import annotations

import numpy as np

from edgert.kernels import formats

BLOCK = formats.BLOCK
CHUNK = 8192  # blocks per step: the temporaries stay within a few MB
_F = np.float32
# code the block's extreme value is put on, one candidate each (see the module docstring)
_GRIDS = {
    "q4_0": np.r_[-8 + 0.2 * np.arange(-4, 5), 7 + 0.2 * np.arange(-2, 3)].astype(_F),  # signed abs-max
    "q4_1": np.r_[15 + 0.2 * np.arange(-5, 6), 11, 12, 13].astype(_F),                 # max - min
    "q8_0": (127 - np.arange(17)).astype(_F),                                           # signed abs-max
}
_CODES = {"q4_0": (-8, 7), "q4_1": (0, 15), "q8_0": (-127, 127)}
_REFINE = 2
# GGUF roles (blk.N.<role>.weight) kept at 8 bits under a 4-bit --quant
SENSITIVE = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_up", "ffn_down", "output")
# GGUF types with at most 4 bits per weight
LOW_BIT = ("Q4_K", "Q3_K", "Q2_K", "IQ4_NL", "IQ4_XS", "IQ3_S", "IQ3_XXS", "IQ2_S", "IQ2_XS", "IQ2_XXS",
           "IQ1_S", "IQ1_M", "TQ1_0", "TQ2_0")


def role(name: str) -> str:
    """'blk.3.ffn_up.weight' -> 'ffn_up', 'output.weight' -> 'output'."""
    parts = name.split(".")
    return parts[2] if parts[0] == "blk" and len(parts) > 3 else parts[0]


def target_format(name: str, src_type: str, quant: str, pure: bool = False) -> str:
    """The edge format for GGUF tensor `name` of type `src_type` when the user asked for `quant`
    (pure: `quant` for every tensor, the SENSITIVE roles too -- smaller and less accurate, for
    draft models)."""
    if pure:
        return quant
    if src_type in LOW_BIT:
        return "q4_1"
    if quant == "q8_0" or role(name) in SENSITIVE:
        return "q8_0"
    return quant


def requantize(name: str, src_type: str, w: np.ndarray, quant: str, pure: bool = False):
    """float32 w [N, K] (K % 32 == 0) -> (edge dtype, parts, stats line)."""
    fmt = target_format(name, src_type, quant, pure)
    w = np.asarray(w, dtype=_F)
    parts = quantize(w, fmt)
    err = (formats.dequantize(parts, fmt) - w).ravel()
    rel = np.sqrt(np.dot(err, err) / max(float(np.dot(w.ravel(), w.ravel())), 1e-30))
    return fmt, parts, f"{src_type} -> {fmt}: rel RMS error {rel:.4f}, max abs {float(np.abs(err).max()):.4g}"


def quantize(w: np.ndarray, fmt: str) -> dict:
    """float32 w [N, K] (K % 32 == 0) -> parts of `fmt` by the block search (module docstring)."""
    w = np.asarray(w, dtype=_F)
    N, K = w.shape
    shape = (N, K // BLOCK)
    x = w.reshape(-1, BLOCK)
    d = np.empty(len(x), _F)
    m = np.empty(len(x), _F)
    lo = _CODES[fmt][0]
    codes = np.empty(x.shape, np.int8 if fmt == "q8_0" else np.uint8)  # stored code: q - lo for 4-bit
    search = _search_q4_1 if fmt == "q4_1" else _search_sym
    for i in range(0, len(x), CHUNK):
        s = slice(i, i + CHUNK)
        d[s], m[s], q = search(np.ascontiguousarray(x[s].T), fmt)
        codes[s] = (q.T if fmt == "q8_0" else q.T - _F(lo))
    parts = {"d": d.astype(np.float16).reshape(shape)}
    if fmt == "q4_1":
        parts["m"] = m.astype(np.float16).reshape(shape)
    codes = codes.reshape(*shape, BLOCK)
    parts["qs"] = codes if fmt == "q8_0" else codes[..., :16] | (codes[..., 16:] << np.uint8(4))
    return parts


# The searches work on a chunk transposed, x [32, M] (block j is column j): NumPy then
# broadcasts per-block scalars along contiguous rows, several times faster than [M, 32].

def _round(x, d, m, lo, hi, out):
    """out = clip(rint((x - m) / d), lo, hi), 0 where d == 0; x [32, M], d, m [M] or m None (0)."""
    inv = np.divide(_F(1), d, out=np.zeros_like(d), where=d != 0)
    np.multiply(x if m is None else np.subtract(x, m, out=out), inv, out=out)
    np.rint(out, out=out)
    return np.clip(out, _F(lo), _F(hi), out=out)


def _dot(a, b):
    """Column sums of a * b: [32, M] x2 -> [M]."""
    return np.einsum("ij,ij->j", a, b)


def _search_sym(x, fmt):
    """x [32, M] -> (d, 0, codes [32, M]) minimising sum (x - d q)^2, q in the format's code range."""
    lo, hi = _CODES[fmt]
    amax = np.take_along_axis(x, np.abs(x).argmax(0)[None], 0)[0]
    xx = _dot(x, x)
    best_e, best_d = np.full(x.shape[1], np.inf, _F), np.zeros(x.shape[1], _F)
    q = np.empty_like(x)

    def consider(d):
        _round(x, d, None, lo, hi, q)
        xq, qq = _dot(x, q), _dot(q, q)
        d = xq / np.maximum(qq, _F(1))  # least squares; qq == 0 only for all-zero codes
        e = xx - d * xq
        better = e < best_e
        best_e[better], best_d[better] = e[better], d[better]

    for code in _GRIDS[fmt]:
        consider(amax / code)
    for _ in range(_REFINE):
        consider(best_d)
    d = best_d.astype(np.float16).astype(_F)
    return d, np.zeros_like(d), _round(x, d, None, lo, hi, q)


def _search_q4_1(x, fmt):
    """x [32, M] (fmt "q4_1") -> (d, m, codes [32, M] in 0..15) minimising sum (x - d q - m)^2. Works on the
    block minus its mean, so the sums keep float32 precision when a block sits far from zero."""
    mean = x.mean(0)
    xc = x - mean
    lo = xc.min(0)
    rng = xc.max(0) - lo
    xx = _dot(xc, xc)
    best_e, best_d, best_m = np.full(x.shape[1], np.inf, _F), np.zeros(x.shape[1], _F), lo.copy()
    q = np.empty_like(x)
    n = _F(BLOCK)

    def consider(d, m):
        _round(xc, d, m, 0, 15, q)
        s, qq, xq = q.sum(0), _dot(q, q), _dot(xc, q)
        det = n * qq - s * s  # 0 only when all codes are equal: then d = 0, m = mean
        d = np.where(det > 0, n * xq / np.where(det > 0, det, _F(1)), _F(0))
        e = xx - d * xq
        better = e < best_e
        best_e[better], best_d[better], best_m[better] = e[better], d[better], (-d * s / n)[better]

    for code in _GRIDS["q4_1"]:
        consider(rng / code, lo)
    for _ in range(_REFINE):
        consider(best_d, best_m)
    d = best_d.astype(np.float16).astype(_F)
    m = (best_m + mean).astype(np.float16).astype(_F)
    return d, m, _round(x, d, m, 0, 15, q)
