"""The sparse FFN kernel, both backends, against a float64 reference written here."""
import numpy as np
import pytest
from test_kernels import BACKENDS, _rng, random_parts

from edgert import kernels


@pytest.fixture(params=BACKENDS)
def K(request):
    return kernels.load(request.param)


@pytest.mark.parametrize("fmt", ["q4_0", "q4_1", "q8_0"])
@pytest.mark.parametrize("n", [1, 3])
def test_sparse_ffn(K, fmt, n):
    rng = _rng("sparse_ffn", fmt, n)
    D, F, C = 96, 40, 24  # model width, neurons, cache slots
    (f, ud, um, uqs), up = random_parts(rng, fmt, C, D)
    (_, dd, _, dqs), down = random_parts(rng, "q8_0", C, D)
    x = rng.standard_normal((n, D)).astype(np.float32)
    act = rng.standard_normal((n, F)).astype(np.float32)
    act[rng.random((n, F)) < 0.5] = 0
    idx = np.sort(rng.choice(F, 15, replace=False)).astype(np.int64)
    slots = rng.choice(C, 15, replace=False).astype(np.int64)
    out = rng.standard_normal((n, D)).astype(np.float32)
    want = out.astype(np.float64) + (act[:, idx] * (x.astype(np.float64) @ up[slots].T)) @ down[slots]
    K.sparse_ffn(f, x, act, idx, slots, ud, um, uqs, dd, dqs, out)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-3)
    K.sparse_ffn(f, x, act, idx[:0], slots[:0], ud, um, uqs, dd, dqs, out)  # no active neuron: unchanged
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-3)
