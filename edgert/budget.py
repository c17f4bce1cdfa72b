"""The memory cost model: for a budget, what stays resident and what streams from storage.

plan_memory(header, budget, ...) -> Plan. The budget covers the whole process (peak resident
set size): the runtime itself (measured when the plan is made, plus the machine code of the
Numba kernels, loaded at first use), the KV cache for the whole context, the activation
buffers of the prefill and decode steps, and the weights. Weights are either

- resident: copied once into anonymous memory (small tensors always: norms, biases), or
- read by rows: the embedding lookup reads only the rows of the step's tokens, or
- streamed: read in program order through a pool of `slots` buffers of `slot_bytes` each,
  the next one prefetched while the current one computes (edgert.weightstore).

Every streamed byte is read once per step, so each resident byte saves one byte of reading
per token whatever tensor it belongs to: the planner keeps two or three slots (enough to
overlap reading and computing) and fills the rest of the room with whole tensors, largest
first. A sparse model (edgert.sparse_ffn) also gets a neuron cache per layer. A budget below
what the smallest window needs is refused with the minimum that would work.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from .errors import EdgeError
from .format import tensor_nbytes, tensor_parts
from .program import concrete, plan_buffers

MB = 1 << 20
JIT_CODE = 72 * MB        # machine code and data of the Numba kernels, paged in at first use
MARGIN = 24 * MB          # allocator slack, thread stacks, Python objects made while running
MIN_SLOT = 2 * MB         # smallest streaming slot worth a read
SLOT_TARGET = 16 * MB     # reads this large run near the storage's sequential speed
SMALL = 64 << 10         # tensors below this (and all 1-D ones) are always resident
STEPS_KEPT = 4            # the interpreter keeps this many bound steps (arenas) at once
CONTEXTS = (4096, 2048, 1024, 512, 256)
MIN_NEURONS = 64          # smallest neuron cache per sparse layer
CACHE_SHARE = 0.5         # of the weights' room, what sparse layers' neuron caches get


def parse_size(text) -> int:
    """'400MB', '1.5GB', '512M', '300mib' or a plain number of bytes -> bytes (1 MB = 2**20)."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise EdgeError(f"cannot read the size {text!r}; write it like 400MB or 1.5GB")
    scale = {"": 1, "k": 1 << 10, "m": MB, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def fmt_mb(n: int) -> str:
    return f"{math.ceil(n / MB)} MB"


@dataclass
class Plan:
    budget: int
    context: int
    prefill_chunk: int            # tokens per prefill step (rows="last")
    score_chunk: int              # tokens per teacher-forced step (rows="all")
    resident: list = field(default_factory=list)   # tensor names copied into memory
    stream: list = field(default_factory=list)     # tensor names streamed, in first-use order
    slots: int = 0
    slot_bytes: int = 0
    neuron_cache: dict = field(default_factory=dict)  # sparse layers: {layer: neurons kept}
    estimate: dict = field(default_factory=dict)   # component -> bytes


def weight_order(program: dict, skip=()) -> list:
    """Tensor names in order of first use by the program's ops (ops named in `skip` ignored)."""
    seen = {}
    for op in program["ops"]:
        if op["op"] in skip:
            continue
        for name in op["w"].values():
            seen.setdefault(name, None)
    return list(seen)


def rows_only(program: dict) -> set:
    """Names of the tensors only embedding lookups read: a step touches just its tokens' rows."""
    return {op["w"]["weight"] for op in program["ops"] if op["op"] == "embed"} - set(weight_order(program, skip=("embed",)))


def row_bytes(t: dict) -> int:
    """Bytes of one row over all parts of a 2-D tensor (the unit a stream may split at)."""
    return sum(dt.itemsize * int(math.prod(shape[1:])) for _, dt, shape, _ in tensor_parts(t["dtype"], t["shape"]))


def arena_bytes(program: dict, dims: dict, act_bytes: int = 2) -> int:
    """float32 arena + inputs + activation scratch (act_bytes per element: int16 2, int8 1) of
    one bound step."""
    _, cap = plan_buffers(program, dims)
    total = 4 * sum(cap) + 16 * dims.get("n", 1)
    shapes = set()
    for op in program["ops"]:
        if op["op"] == "linear":
            rows, k = concrete(program["values"][op["in"][0]], dims)
            shapes.add((rows, k))
    total += sum(r * k * act_bytes + 2 * r * (k // 32) * 4 for r, k in shapes)  # xq; xd and xs float32
    return total


def kv_bytes(cfg: dict, context: int) -> int:
    return 2 * cfg["n_layers"] * cfg["n_kv_head"] * cfg["head_dim"] * 4 * context


def budget_context(cfgs: list, budget: int) -> int:
    """Default context under a budget: the largest of CONTEXTS whose KV caches, over the models
    of `cfgs` (a target and its draft model, which share the context), take at most 15% of
    the budget; capped at the first model's context length."""
    context = next((c for c in CONTEXTS if sum(kv_bytes(cfg, c) for cfg in cfgs) <= 0.15 * budget), CONTEXTS[-1])
    return min(context, int(cfgs[0]["context_length"]))


def _chunk(program: dict, allowance: int, rows_all: bool) -> int:
    """Largest power-of-two chunk (<= 256 tokens) whose STEPS_KEPT arenas fit the allowance."""
    for n in (256, 128, 64, 32, 16, 8, 4, 2, 1):
        if STEPS_KEPT * arena_bytes(program, {"n": n, "m": n if rows_all else 1}) <= allowance or n == 1:
            return n
    return 1


def plan_memory(header: dict, budget: int, baseline: int, jit: bool = True, context: int | None = None,
                sparse: dict | None = None) -> Plan:
    """Plan the weights of the model in `header` for a process budget of `budget` bytes, the
    runtime already holding `baseline` bytes (its resident set now). context: KV cache length
    (None: budget_context). sparse: the
    header's "sparse_ffn" section when the FFN runs sparse (its bundles are left to the
    neuron cache, which gets what the window does not need)."""
    cfg, program, tensors = header["config"], header["program"], header["tensors"]
    if context is None:
        context = budget_context([cfg], budget)
    allowance = max(int(0.03 * budget), 4 * MB)
    prefill_chunk = _chunk(program, allowance, rows_all=False)
    score_chunk = _chunk(program, allowance, rows_all=True)
    arena = max(STEPS_KEPT * arena_bytes(program, {"n": prefill_chunk, "m": 1}),
                STEPS_KEPT * arena_bytes(program, {"n": score_chunk, "m": score_chunk}))
    logits = 4 * cfg["vocab_size"] * 2  # the copy generate keeps, and the sampler's work array
    est = {"runtime": baseline, "kernels": JIT_CODE if jit else 0, "kv_cache": kv_bytes(cfg, context),
           "activations": arena + logits, "margin": MARGIN}
    fixed = sum(est.values())

    bundles = set(sparse["bundles"]) if sparse else set()
    # streamed tensors in the order the ops that read them whole run (embedding lookups read
    # rows: a tied embedding streams where the output head needs it, at the end)
    order = [n for n in weight_order(program, skip=("embed",)) if n not in bundles]
    embed_only = rows_only(program)
    size = {n: tensor_nbytes(tensors[n]["dtype"], tensors[n]["shape"]) for n in set(order) | bundles | embed_only}
    small = [n for n in order if size[n] < SMALL or len(tensors[n]["shape"]) < 2]
    big = [n for n in order if n not in small and n not in embed_only]
    small_bytes = sum(size[n] for n in small)
    max_row = max((row_bytes(tensors[n]) for n in big), default=0)
    min_slot = max(MIN_SLOT, max_row)
    cache_min = MIN_NEURONS * sparse["record_bytes"] * len(sparse["layers"]) if sparse else 0
    stream_total = sum(size[n] for n in big)
    need_min = fixed + small_bytes + cache_min + (2 * min_slot if stream_total else 0)
    if budget < need_min:
        parts = ", ".join(f"{k} {fmt_mb(v)}" for k, v in est.items())
        raise EdgeError(f"memory budget {fmt_mb(budget)} is too small for this model: the minimum is "
                        f"{fmt_mb(need_min)} ({parts}, context {context} tokens, small weights "
                        f"{fmt_mb(small_bytes)}, smallest streaming window {fmt_mb(2 * min_slot if stream_total else 0)}"
                        f"{', neuron cache ' + fmt_mb(cache_min) if cache_min else ''}); "
                        "pass a larger --memory-budget (or a smaller --ctx)")
    room = budget - fixed - small_bytes
    plan = Plan(budget=budget, context=context, prefill_chunk=prefill_chunk, score_chunk=score_chunk)
    if sparse:  # the neuron caches first: they save the most reading per byte (only active neurons move)
        cache_room = max(cache_min, int(CACHE_SHARE * (room - 2 * min_slot)))
        plan.neuron_cache = _neuron_caches(sparse, cache_room)
        widest = max(plan.neuron_cache.values())
        temps = 2 * widest * cfg["d_model"] * 4 + 3 * prefill_chunk * cfg["d_ff"] * 4  # dequantized rows, act masks
        room -= sum(plan.neuron_cache.values()) * sparse["record_bytes"] + temps
        est["neuron_cache"] = sum(plan.neuron_cache.values()) * sparse["record_bytes"]
        est["activations"] += temps
    if stream_total + sum(size[n] for n in embed_only) <= room:  # everything fits: no streaming
        resident = small + big + sorted(embed_only)
    else:
        slots = 3 if room >= 5 * SLOT_TARGET else 2
        slot = max(min_slot, min(SLOT_TARGET, (room // 2) // slots))
        plan.slots, plan.slot_bytes = slots, slot
        left = room - slots * slot
        keep = []
        for n in sorted(big, key=lambda n: -size[n]):  # largest first: fills the room closely
            if size[n] <= left:
                keep.append(n)
                left -= size[n]
        resident = small + keep
        plan.stream = [n for n in big if n not in keep]
        if not plan.stream:
            plan.slots = plan.slot_bytes = 0
        est["window"] = plan.slots * plan.slot_bytes
    plan.resident = [n for n in order + sorted(embed_only) if n in set(resident)]
    est["resident_weights"] = sum(size[n] for n in plan.resident)
    plan.estimate = est
    return plan


def _neuron_caches(sparse: dict, room: int) -> dict:
    """Neurons cached per sparse layer: the room split evenly, capped at the layer's width."""
    layers = sparse["layers"]
    per = room // max(1, len(layers)) // sparse["record_bytes"]
    return {layer: int(min(info["neurons"], max(MIN_NEURONS, per))) for layer, info in layers.items()}


def rss_now() -> int:
    """This process's resident set size in bytes (0 where /proc is missing)."""
    return _status("VmRSS")


def peak_rss() -> int:
    """This process's peak resident set size (VmHWM) in bytes (0 where /proc is missing)."""
    return _status("VmHWM")


def _status(key: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
