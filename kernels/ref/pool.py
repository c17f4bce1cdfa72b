"""Pooling over N-D windows, NumPy (both backends use it: not on any hot path of the models
edgert targets, whose pooling is global); and the NumPy twin of global average pooling."""
import itertools

import numpy as np


def pool(x, mode, kernel, strides, dilations, pads, count_include_pad, out):
    """out f32[N, C, *O] = max or mean ("max" | "avg") of x f32[N, C, *S] over windows of
    `kernel` taps (dilated) every `strides`, after padding each spatial dim d by pads[d] before
    and pads[nd + d] after (ONNX order). Windows may run past the end pad (ceil mode): those
    positions never count. avg divides by the taps inside the image, or with
    count_include_pad by those inside image + pads."""
    nd = len(kernel)
    spatial, outs = x.shape[2:], out.shape[2:]
    need = [(o - 1) * s + (k - 1) * d + 1 for o, s, k, d in zip(outs, strides, kernel, dilations)]
    size = [max(p + n, q) for p, n, q in zip(pads[:nd], spatial, need)]
    fill = -np.inf if mode == "max" else 0.0
    xp = np.full(x.shape[:2] + tuple(size), fill, np.float32)
    inner = tuple(slice(p, p + n) for p, n in zip(pads[:nd], spatial))
    xp[(slice(None), slice(None)) + inner] = x
    if mode == "avg":
        counted = np.zeros(size, np.float32)
        if count_include_pad:
            counted[tuple(slice(0, min(sz, p + n + e)) for sz, p, n, e
                          in zip(size, pads[:nd], spatial, pads[nd:]))] = 1
        else:
            counted[inner] = 1
        count = np.zeros(outs, np.float32)
    acc = np.full(out.shape, fill, np.float32)
    for tap in itertools.product(*(range(k) for k in kernel)):
        win = tuple(slice(t * d, t * d + (o - 1) * s + 1, s) for t, d, o, s in zip(tap, dilations, outs, strides))
        if mode == "max":
            np.maximum(acc, xp[(slice(None), slice(None)) + win], out=acc)
        else:
            acc += xp[(slice(None), slice(None)) + win]
            count += counted[win]
    if mode == "avg":
        acc /= np.maximum(count, 1)
    np.copyto(out, acc)


def global_avg_pool(x, out):
    """out f32[C, 1] = the mean of x f32[C, P] over its pixels (a product with 1/P weights:
    einsum, no BLAS under Pyodide, 3x faster than np.mean here on [1280, 49])."""
    np.einsum("cp,p->c", x, np.full(x.shape[1], 1 / x.shape[1], np.float32), out=out.reshape(-1))
