"""The program: a flat op list over named values, and its liveness-based buffer plan.

A program (stored in the .edge header under "program") is

    {"inputs":  {name: {"dtype": "i64", "shape": ["n"]}},
     "values":  {name: shape},          # shapes of every op output; "n" = new tokens, "m" = output rows
     "ops":     [{"op": str, "in": [value...], "out": [value...],
                  "w": {role: tensor name}, "attrs": {...}}],
     "outputs": [value...]}

Values are written once (SSA). ProgramBuilder makes such lists; plan_buffers assigns each
value a slot of a reusable arena so that values whose lifetimes do not overlap share memory.
"""
from __future__ import annotations

from .errors import EdgeError

# ops whose kernel may write its output over its first input
INPLACE_OPS = frozenset({"rms_norm", "rope", "add", "silu_mul"})


class ProgramBuilder:
    """Collects ops; emit() returns the output value's name (fresh, SSA)."""

    def __init__(self):
        self.inputs, self.values, self.ops, self._count = {}, {}, [], {}

    def input(self, name: str, dtype: str, shape: list) -> str:
        self.inputs[name] = {"dtype": dtype, "shape": list(shape)}
        return name

    def emit(self, op: str, inputs: list[str], shape: list, w: dict | None = None, stem: str | None = None,
             **attrs) -> str:
        stem = stem or op
        k = self._count[stem] = self._count.get(stem, -1) + 1
        out = f"{stem}{k}"
        self.values[out] = list(shape)
        self.ops.append({"op": op, "in": list(inputs), "out": [out], "w": dict(w or {}), "attrs": attrs})
        return out

    def build(self, outputs: list[str]) -> dict:
        return {"inputs": self.inputs, "values": self.values, "ops": self.ops, "outputs": list(outputs)}


def validate(program: dict, tensors, known_ops) -> None:
    """Check that every op is known, reads defined values and names existing tensors."""
    try:
        defined = set(program["inputs"])
        for i, op in enumerate(program["ops"]):
            if op["op"] not in known_ops:
                raise EdgeError(f"unsupported op {op['op']!r} (op {i}); this edgert runs: {', '.join(sorted(known_ops))}")
            for v in op["in"]:
                if v not in defined:
                    raise EdgeError(f"corrupt program: op {i} ({op['op']}) reads undefined value {v!r}")
            for t in op["w"].values():
                if t not in tensors:
                    raise EdgeError(f"corrupt program: op {i} ({op['op']}) names missing tensor {t!r}")
            for v in op["out"]:
                if v not in program["values"]:
                    raise EdgeError(f"corrupt program: value {v!r} has no shape")
                defined.add(v)
        for v in program["outputs"]:
            if v not in defined:
                raise EdgeError(f"corrupt program: output {v!r} is never computed")
    except (KeyError, TypeError, AttributeError) as e:
        raise EdgeError(f"corrupt program in header: {e!r}") from None


def concrete(shape: list, dims: dict) -> tuple:
    return tuple(dims[s] if isinstance(s, str) else int(s) for s in shape)


def plan_buffers(program: dict, dims: dict) -> tuple[dict, list]:
    """Assign every op output a slot: returns ({value: slot}, [slot capacity in elements]).

    Greedy in op order: an output takes over its first input's slot when the op may run in
    place, that input dies here and has the output's shape; otherwise the smallest free slot that fits (grown if none
    fits). Outputs named in program["outputs"] are never freed; values never read are freed
    at once.
    """
    last_use = {}
    for i, op in enumerate(program["ops"]):
        for v in op["in"]:
            last_use[v] = i
    keep = set(program["outputs"])
    slot_of, cap, free = {}, [], []
    for i, op in enumerate(program["ops"]):
        dying = [v for v in dict.fromkeys(op["in"]) if v in slot_of and last_use.get(v) == i and v not in keep]
        for out in op["out"]:
            size = 1
            for s in concrete(program["values"][out], dims):
                size *= s
            first = op["in"][0] if op["in"] else None
            if (op["op"] in INPLACE_OPS and first in dying and op["in"].count(first) == 1
                    and program["values"][first] == program["values"][out]):
                slot = slot_of[first]
                dying.remove(first)
            elif free:
                fits = [s for s in free if cap[s] >= size]
                slot = min(fits, key=lambda s: cap[s]) if fits else max(free, key=lambda s: cap[s])
                free.remove(slot)
            else:
                slot = len(cap)
                cap.append(0)
            cap[slot] = max(cap[slot], size)
            slot_of[out] = slot
        dead = [v for v in op["out"] if v not in last_use and v not in keep]  # written, never read
        free.extend(slot_of[v] for v in dying + dead)
    return slot_of, cap
