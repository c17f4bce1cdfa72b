"""Sparse neuron windowing: the converter's bundles and thresholds, the neuron cache, and the
sparse FFN op against the dense model and against itself under a memory budget."""
import numpy as np
import pytest
from edgert.convert.sparsify import sparsify_edge
from edgert.kernels import formats
from tiny_llm import make_tiny_llm

import edgert
from edgert.budget import Plan
from edgert.format import EdgeFile
from edgert.interpreter import Interpreter
from edgert.sparse_ffn import bundle_views
from edgert.weightstore import WeightStore

D, FF = 64, 160


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sparse")
    dense = make_tiny_llm(tmp / "dense.edge", seed=9, vocab=96, d=D, n_layers=2, d_ff=FF, fmt="q4_1")
    sparse = str(tmp / "sparse.edge")
    sparsify_edge(dense, sparse, 0.5, progress=False)
    return dense, sparse


def test_bundles_and_thresholds(pair):
    """Each record holds the neuron's up row as stored and its down column (q8_0 along d), in
    the header's hottest-first order; thresholds put about half the calibration activations below."""
    dense, sparse = pair
    de, se = EdgeFile(dense), EdgeFile(sparse)
    info = se.header["sparse_ffn"]
    assert info["sparsity"] == 0.5 and set(info["layers"]) == {"0", "1"}
    assert "sparse_ffn" in {op["op"] for op in se.header["program"]["ops"]}
    gate_up = formats.dequantize(de.tensor("blk.0.ffn_gate_up.weight"), "q4_1")
    down = formats.dequantize(de.tensor("blk.0.ffn_down.weight"), "q4_1")  # [d, F]
    gate = formats.dequantize(se.tensor("blk.0.ffn_gate.weight"), "q4_1")
    order = [int(np.flatnonzero((gate_up[:FF] == row).all(1))[0]) for row in gate]  # the permutation, recovered
    assert sorted(order) == list(range(FF))
    v = bundle_views(se.tensor("blk.0.ffn_bundle").view(np.uint8), "q4_1", D)
    up = formats.dequantize({"d": v["up_d"].view(np.float16), "m": v["up_m"].view(np.float16), "qs": v["up_qs"]}, "q4_1")
    np.testing.assert_array_equal(up, gate_up[FF:][order])
    down_t = formats.dequantize({"d": v["down_d"].view(np.float16), "qs": v["down_qs"]}, "q8_0")
    np.testing.assert_allclose(down_t, down.T[order], atol=np.abs(down).max() / 127)
    assert 0.3 < info["layers"]["0"]["activity"] < 0.7


def test_no_sparsity_matches_dense(pair, tmp_path):
    """With a near-zero threshold every neuron is active: the sparse op then computes the dense
    FFN (up to the down weights' q8_0 requantization)."""
    dense, _ = pair
    full = str(tmp_path / "full.edge")
    sparsify_edge(dense, full, 1e-6, progress=False)
    ids = np.random.default_rng(2).integers(0, 96, 30)
    for backend in ("ref", "jit"):
        want = edgert.load(dense, backend=backend).logits(ids)
        got = edgert.load(full, backend=backend).logits(ids)
        np.testing.assert_allclose(got, want, atol=0.02 * np.abs(want).max())


@pytest.mark.parametrize("backend", ["ref", "jit"])
def test_neuron_cache_exact(pair, backend):
    """Neuron caches of 8 slots (of 160 neurons: batches, evictions, reads every step) give the
    same logits (up to the order neurons are summed in) and greedy tokens as the fully mapped bundle."""
    _, sparse = pair
    ref = edgert.load(sparse, backend=backend, threads=1)
    m = edgert.load(sparse, backend=backend, threads=1)
    h = m.edge.header
    plan = Plan(budget=0, context=m.context, prefill_chunk=256, score_chunk=256,
                resident=[n for n in h["tensors"] if "bundle" not in n], neuron_cache={"0": 8, "1": 8})
    m.store = WeightStore(m.edge, plan)
    m.interpreter = Interpreter(h["program"], m.edge, backend, store=m.store)
    ids = np.random.default_rng(3).integers(0, 96, 24)
    np.testing.assert_allclose(m.logits(ids), ref.logits(ids), rtol=1e-3, atol=1e-3)  # batch order: rounding
    assert list(m.generate(list(ids[:5]), max_tokens=10, temperature=0)) == \
        list(ref.generate(list(ids[:5]), max_tokens=10, temperature=0))
    cache = m.store._neuron_caches["blk.0.ffn_bundle"]
    assert cache.misses > 8
    raw = m.edge.tensor("blk.0.ffn_bundle").view(np.uint8)
    held = cache.neuron_of >= 0
    np.testing.assert_array_equal(cache.buf[held], raw[cache.neuron_of[held]])  # slots hold their neurons


def test_neuron_cache_keeps_recent(pair):
    """Fetching keeps the neurons used most recently: a set fetched again costs no read."""
    _, sparse = pair
    m = edgert.load(sparse, backend="ref")
    plan = Plan(budget=0, context=64, prefill_chunk=8, score_chunk=8, neuron_cache={"0": 10})
    store = WeightStore(m.edge, plan)
    cache = store.neuron_cache("blk.0.ffn_bundle", "q4_1", D)
    cache.fetch(np.array([1, 2, 3, 4, 5]))
    cache.fetch(np.array([10, 11, 12, 13, 14]))
    b0 = store.bytes_read
    cache.fetch(np.array([1, 2, 3, 12]))  # all cached
    assert store.bytes_read == b0
    cache.fetch(np.array([20, 21]))  # evicts the two least recently used: 4 and 5
    assert cache.slot_of[4] < 0 and cache.slot_of[5] < 0 and (cache.slot_of[[1, 2, 3, 12, 20, 21]] >= 0).all()
    assert store.bytes_read - b0 == 2 * cache.record


@pytest.mark.slow
def test_cli_sparse_convert_and_budget_run(tmp_path, smollm2_gguf, english_text):
    """`edgert convert --bundle-ffn --sparsify` then `edgert run --memory-budget`: the sparse
    model converts, runs within a budget that forces streaming, prints what it read, and its
    perplexity stays near the dense model's at a mild sparsity."""
    from edgert.cli import main

    out = str(tmp_path / "s.edge")
    assert main(["convert", smollm2_gguf, "-o", out, "--bundle-ffn", "--sparsify", "0.2"]) == 0
    assert "sparse_ffn" in EdgeFile(out).header
    assert main(["convert", smollm2_gguf, "-o", out, "--sparsify", "0.2", "--force"]) == 1  # needs --bundle-ffn too
    dense = str(tmp_path / "d.edge")
    assert main(["convert", smollm2_gguf, "-o", dense]) == 0
    d, s = edgert.load(dense), edgert.load(out)
    ids = d.tokenizer.encode(english_text)[:200]
    assert s.perplexity(ids) < 1.1 * d.perplexity(ids)
    import re
    import subprocess
    import sys

    # the budget covers the whole process: a fresh one (this one holds the models above)
    r = subprocess.run([sys.executable, "-m", "edgert", "run", out, "--memory-budget", "280MB", "--threads", "1",
                        "--prompt", "The capital of France is", "-n", "6", "--temperature", "0"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = re.search(r"memory budget 280 MB: peak memory (\d+) MB · read from storage ([\d.]+) MB per token", r.stderr)
    assert got and int(got.group(1)) <= 280 and float(got.group(2)) > 0, r.stderr
