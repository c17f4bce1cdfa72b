"""The buffer plan: values alive at the same time never share memory; in-place reuse only
where the op allows it and the input dies there."""
import itertools

import numpy as np
import pytest

from edgert.program import INPLACE_OPS, ProgramBuilder, plan_buffers


def _random_program(seed, n_ops=60):
    rng = np.random.default_rng(seed)
    b = ProgramBuilder()
    live = [b.input("tokens", "i64", ["n"])]
    live = [b.emit("embed", live, ["n", 8])]
    for _ in range(n_ops):
        op = rng.choice(["rms_norm", "linear", "add", "silu_mul", "rope"])
        arity = 2 if op in ("add", "silu_mul") else 1
        ins = [live[int(i)] for i in rng.integers(max(0, len(live) - 6), len(live), arity)]
        live.append(b.emit(str(op), ins, ["n", int(rng.choice([8, 16, 32]))]))
    return b.build([live[-1]])


def _intervals(prog):
    """value -> (op index that writes it, last op index that reads it)."""
    born, last = {}, {}
    for i, op in enumerate(prog["ops"]):
        for v in op["in"]:
            last[v] = i
        for v in op["out"]:
            born[v] = i
    return {v: (born[v], last.get(v, born[v])) for v in born}


@pytest.mark.parametrize("seed", range(20))
def test_live_values_never_share_a_slot(seed):
    prog = _random_program(seed)
    dims = {"n": 3, "m": 1}
    slot_of, cap = plan_buffers(prog, dims)
    spans = _intervals(prog)
    writer = {v: prog["ops"][i] for v, (i, _) in spans.items()}
    for a, b in itertools.combinations(slot_of, 2):
        if slot_of[a] != slot_of[b]:
            continue
        (a0, a1), (b0, b1) = sorted([spans[a], spans[b]])
        later = b if spans[b][0] > spans[a][0] else a
        earlier = a if later is b else b
        if b0 < a1:  # overlapping lives
            pytest.fail(f"{a} and {b} share slot {slot_of[a]} while both alive")
        if b0 == a1:  # the later one is written by the op that last reads the earlier one
            op = writer[later]
            assert op["op"] in INPLACE_OPS and op["in"][0] == earlier, (earlier, later, op)
    for v, s in slot_of.items():
        need = int(np.prod([dims.get(x, x) if isinstance(x, str) else x for x in prog["values"][v]]))
        assert cap[s] >= need


def test_reuse_saves_memory():
    prog = _random_program(1, n_ops=200)
    slot_of, cap = plan_buffers(prog, {"n": 4, "m": 1})
    assert len(cap) < len(slot_of) / 5
