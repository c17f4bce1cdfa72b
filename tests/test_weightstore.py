"""Weight streaming under a memory budget: the cost model, the weight store's unit cycle, and
outputs identical to the unconstrained run (same kernels, same bytes: exact equality)."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from test_kernels import BACKENDS
from tiny_llm import make_tiny_llm

import edgert
from edgert import EdgeError
from edgert.budget import MB, Plan, parse_size, plan_memory, rss_now
from edgert.format import EdgeFile, tensor_nbytes, tensor_parts
from edgert.interpreter import Interpreter
from edgert.weightstore import WeightStore


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_llm(tmp_path_factory.mktemp("ws") / "tiny.edge", seed=5, vocab=96, d=64, n_layers=3, d_ff=160)


def streamed_model(path, backend, slot_bytes, slots=2, prefetch=True, context=64):
    """A Model whose 2-D weights (embedding included) all stream through `slots` slots."""
    m = edgert.load(path, backend=backend, context=context, threads=1)
    tensors = m.edge.header["tensors"]
    big = [n for n in tensors if len(tensors[n]["shape"]) == 2]
    order = [n for op in m.edge.header["program"]["ops"] for n in op["w"].values()]
    plan = Plan(budget=0, context=context, prefill_chunk=256, score_chunk=256,
                resident=[n for n in tensors if n not in big],
                stream=[n for n in dict.fromkeys(order) if n in big and n != "token_embd.weight"],
                slots=slots, slot_bytes=slot_bytes)
    m.store = WeightStore(m.edge, plan, prefetch=prefetch)
    m.interpreter = Interpreter(m.edge.header["program"], m.edge, backend, store=m.store)
    return m


def test_parse_size():
    assert parse_size("400MB") == 400 * MB
    assert parse_size("1.5GB") == int(1.5 * 1024 * MB)
    assert parse_size("512m") == 512 * MB
    assert parse_size("300MiB") == 300 * MB
    assert parse_size("4096") == 4096
    with pytest.raises(EdgeError, match="cannot read the size"):
        parse_size("lots")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("slot_bytes,slots,prefetch", [(3000, 2, True), (9000, 3, True), (20000, 1, False)])
def test_streaming_is_exact(tiny, backend, slot_bytes, slots, prefetch):
    """Tiny slots cut every tensor into row pieces across many units (and make the unit count
    a multiple of the slots): logits of prefill, decode and teacher-forced steps equal the
    unconstrained model's -- exactly with the Numba kernels (each output row is computed on
    its own); the NumPy twin multiplies several rows with BLAS, whose blocking follows the
    piece sizes, so there only up to float rounding."""
    ref = edgert.load(tiny, backend=backend, context=64, threads=1)
    m = streamed_model(tiny, backend, slot_bytes, slots, prefetch)
    assert len(m.store.units) % slots == 0 and len(m.store.units) > 4
    assert any(len(p) > 1 for p in m.store.pieces.values())  # some tensors split across units
    ids = np.random.default_rng(1).integers(0, 96, 40)
    if backend == "jit":
        np.testing.assert_array_equal(m.logits(ids), ref.logits(ids))
    else:
        np.testing.assert_allclose(m.logits(ids), ref.logits(ids), rtol=1e-4, atol=1e-3)
    out_ref = list(ref.generate(list(ids[:7]), max_tokens=12, temperature=0))
    out = list(m.generate(list(ids[:7]), max_tokens=12, temperature=0))
    assert out == out_ref and ref.last_tokens == m.last_tokens


def test_bytes_read_per_step(tiny):
    """Each decode step reads every streamed tensor's parts once (reads that meet in the file and
    the slot are merged, padding between them included), plus the token's embedding row."""
    m = streamed_model(tiny, "ref", 5000)
    edge = EdgeFile(tiny)
    tensors = edge.header["tensors"]
    parts = sum(int(np.prod(s)) * dt.itemsize for n in m.store.plan.stream
                for _, dt, s, _ in tensor_parts(tensors[n]["dtype"], tensors[n]["shape"]))
    whole = sum(tensor_nbytes(tensors[n]["dtype"], tensors[n]["shape"]) for n in m.store.plan.stream)
    emb = tensors["token_embd.weight"]
    row = sum(int(np.prod(s[1:])) * dt.itemsize for _, dt, s, _ in tensor_parts(emb["dtype"], emb["shape"]))
    cache = m.new_cache()
    m.prefill([1, 2, 3], cache)
    for tok in (4, 5, 6):  # the reader runs ahead: count from "next step's first units in" to the same point
        m.store.acquire(0), m.store.acquire(1)
        b0 = m.store.bytes_read
        m.interpreter.step([tok], [cache.length], cache)
        m.store.acquire(0), m.store.acquire(1)
        got = m.store.bytes_read - b0
        assert parts + row <= got <= whole + row + 64 * len(m.store.units)  # merged reads span < 64 B of padding


def test_budget_minimum_is_exact(tiny):
    """A budget below the plan's minimum is refused naming the minimum; that minimum works."""
    header, baseline = EdgeFile(tiny).header, rss_now()
    with pytest.raises(EdgeError, match=r"memory budget 1 MB is too small for this model: the minimum is (\d+) MB") as e:
        plan_memory(header, 1 * MB, baseline)
    minimum = int(re.search(r"the minimum is (\d+) MB", str(e.value)).group(1))
    plan = plan_memory(header, minimum * MB, baseline)
    assert sum(plan.estimate.values()) <= minimum * MB


def test_model_budget_large_and_cli_error(tiny, capsys):
    """A budget that holds everything keeps every weight resident (no streaming) with the same
    output; the CLI refuses a budget that is too small in one line."""
    ref = edgert.load(tiny, backend="ref", context=64)
    # the budget counts the whole process, which may hold other tests' reference models already
    m = edgert.load(tiny, backend="ref", memory_budget=f"{rss_now() // MB + 1024}MB", context=64)
    assert not m.plan.stream and m.plan.resident
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    np.testing.assert_array_equal(m.logits(ids), ref.logits(ids))
    from edgert.cli import main

    assert main(["run", tiny, "--memory-budget", "10MB", "--prompt", "hi", "--backend", "ref"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(r"edgert: error: memory budget 10 MB is too small .* the minimum is \d+ MB", err[0])


@pytest.mark.slow
def test_qwen15_in_400mb(qwen15_edge):
    """Qwen2.5-Coder-1.5B (1.3 GB file) under --memory-budget 400MB: peak RSS <= 500 MB, greedy
    output identical to the unconstrained run. Each run in its own process (VmHWM is per process)."""
    def run(*extra):
        args = [sys.executable, "-m", "edgert", "run", qwen15_edge, "--prompt", "def quicksort(xs):",
                "-n", "12", "--temperature", "0", "--threads", "1", *extra]
        code = ("import runpy, sys; sys.argv = ['edgert'] + sys.argv[1:]\n"
                "try:\n    runpy.run_module('edgert', run_name='__main__')\n"
                "finally:\n    print('VmHWM', open('/proc/self/status').read().split('VmHWM:')[1].split()[0], file=sys.stderr)")
        r = subprocess.run([sys.executable, "-c", code, *args[3:]], capture_output=True, text=True,
                           env=dict(os.environ, PYTHONUNBUFFERED="1"))
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout, int(re.search(r"VmHWM (\d+)", r.stderr).group(1)) * 1024, r.stderr

    free_out, _, _ = run()
    out, peak, err = run("--memory-budget", "400MB")
    assert out == free_out
    assert peak <= 500 * MB, f"peak RSS {peak / MB:.0f} MB"
    assert re.search(r"memory budget 400 MB: peak memory \d+ MB · read from storage [\d.]+ MB per token", err), err
