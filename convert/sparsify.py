"""Sparse FFN windowing at conversion: a dense .edge LLM -> one with neuron-bundled FFNs and
calibrated activation thresholds (CATS; LLM in a flash's row-column bundling).

sparsify_edge(src, out, sparsity) runs the dense model on a calibration text, and per layer:

- sets the threshold t so that a `sparsity` fraction of |silu(gate)| values fall below it
  (CATS: those neurons count as inactive; their up and down products are skipped);
- orders the neurons by how often they were active (hottest first), so that active neurons
  cluster at low indices and reads of neighbours merge;
- keeps the gate rows as a plain weight `blk.N.ffn_gate.weight` [F, d] (needed for every
  token, to know which neurons are active), and bundles for each neuron its up row (as stored)
  and its down column (requantized to q8_0 along d) into one record, so that one contiguous
  read fetches a neuron: `blk.N.ffn_bundle` [F, record_bytes / 4], dtype i32 holding raw bytes
  (layout in docs/FORMAT.md and the header's "sparse_ffn" section).

The program's gate_up / silu_mul / down ops become `linear` (gate) + `sparse_ffn`.
"""
from __future__ import annotations

import os

import numpy as np
from edgert.kernels import formats

from edgert.errors import EdgeError
from edgert.format import EdgeFile, write_edge
from edgert.sparse_ffn import record_layout

DEFAULT_TEXT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "english.txt")
CALIBRATION_TOKENS = 384


def _parts(edge: EdgeFile, name: str, rows: slice | None = None) -> dict:
    t = edge.tensor(name)
    return {k: (v if rows is None else v[rows]) for k, v in t.items()}


def _ffn_ops(program: dict, layer: int):
    """Indices of the layer's gate/up linear(s), silu_mul and down linear."""
    p = f"blk.{layer}."
    found = {}
    for i, op in enumerate(program["ops"]):
        w = op["w"].get("weight", "")
        if op["op"] == "linear" and w in (p + "ffn_gate_up.weight", p + "ffn_gate.weight", p + "ffn_up.weight"):
            found.setdefault("gu", []).append(i)
        elif op["op"] == "linear" and w == p + "ffn_down.weight":
            found["down"] = i
    if "gu" not in found or "down" not in found:
        raise EdgeError(f"layer {layer}: no gated FFN (ffn_gate_up or ffn_gate/ffn_up, ffn_down) to sparsify")
    silu = [i for i in range(found["gu"][-1] + 1, found["down"]) if program["ops"][i]["op"] == "silu_mul"]
    if len(silu) != 1 or any("bias" in program["ops"][i]["w"] for i in found["gu"] + [found["down"]]):
        raise EdgeError(f"layer {layer}: FFN shape not supported for sparsification (needs silu(gate) * up, no biases)")
    return found["gu"], silu[0], found["down"]


def calibrate(src: str, text: str, sparsity: float, n_tokens: int = CALIBRATION_TOKENS):
    """Per layer: threshold of |silu(gate)| at the `sparsity` quantile, and each neuron's
    activity rate above it, from the dense model run on `text`."""
    import edgert
    from edgert.interpreter import Interpreter

    model = edgert.load(src, threads=None, context=n_tokens + 8)
    F = model.config["d_ff"]
    samples: list = [[] for _ in range(model.config["n_layers"])]

    class Recorder(Interpreter):
        def bind(self, op, st):
            call = super().bind(op, st)
            if op["op"] != "silu_mul":
                return call
            layer = sum(1 for o in self.program["ops"][:self.program["ops"].index(op)] if o["op"] == "silu_mul")
            g = st.env[op["in"][0]][:, :F]

            def run():
                samples[layer].append(np.abs(g / (1 + np.exp(-np.clip(g, -80, 80)))).astype(np.float16))
                call()
            return run

    model.interpreter = Recorder(model.edge.header["program"], model.edge)
    ids = model.tokenizer.encode(text)[:min(n_tokens, model.context)]
    if len(ids) < 32:
        raise EdgeError("calibration text too short (needs at least 32 tokens)")
    model.logits(ids)
    thresholds, rates = [], []
    for s in samples:
        a = np.concatenate(s).astype(np.float32)
        t = float(np.quantile(a, sparsity))
        thresholds.append(t)
        rates.append((a > t).mean(axis=0))
    return thresholds, rates, len(ids)


def sparsify_edge(src: str, out: str, sparsity: float, text: str | None = None, force: bool = False,
                  progress: bool = True) -> dict:
    """Write the sparse-windowing form of the dense .edge LLM `src` to `out`; returns a summary."""
    if not 0.0 < sparsity < 1.0:
        raise EdgeError(f"--sparsify takes a fraction in (0, 1); got {sparsity}")
    if os.path.exists(out) and not force:
        raise EdgeError(f"{out} exists; pass --force to overwrite it")
    edge = EdgeFile(src)
    h = edge.header
    if h.get("kind") != "llm" or "sparse_ffn" in h:
        raise EdgeError(f"{src}: needs a dense language model")
    with open(text or DEFAULT_TEXT, encoding="utf-8") as f:
        calib_text = f.read()
    thresholds, rates, n_calib = calibrate(src, calib_text, sparsity)
    cfg, program = h["config"], h["program"]
    F, d, L = cfg["d_ff"], cfg["d_model"], cfg["n_layers"]
    tensors_in = h["tensors"]
    ops, values = list(program["ops"]), dict(program["values"])
    drop_ops, new_tensors, layers, dropped = set(), {}, {}, set()
    record = None
    for layer in range(L):
        gu, silu, down = _ffn_ops(program, layer)
        p = f"blk.{layer}."
        order = np.argsort(-rates[layer], kind="stable")
        fused = p + "ffn_gate_up.weight" in tensors_in
        gate_name, up_name = (p + "ffn_gate_up.weight",) * 2 if fused else (p + "ffn_gate.weight", p + "ffn_up.weight")
        gate_dtype, up_dtype = tensors_in[gate_name]["dtype"], tensors_in[up_name]["dtype"]
        if gate_dtype not in formats.FORMATS or up_dtype not in formats.FORMATS:
            raise EdgeError(f"layer {layer}: sparse FFN needs quantized gate/up weights")
        fields, rec_bytes = record_layout(up_dtype, d)
        if record is not None and rec_bytes != record:
            raise EdgeError("sparse FFN needs the same up format in every layer")
        record = rec_bytes
        up_off = F if fused else 0
        gate_rows, up_rows = order, order + up_off

        def gate(name=gate_name, rows=gate_rows):
            return _parts(edge, name, rows)

        def bundle(name=up_name, rows=up_rows, down=p + "ffn_down.weight", fields=fields, size=rec_bytes,
                   fmt=up_dtype, order=order):
            up = _parts(edge, name, rows)
            dt = tensors_in[down]
            dw = formats.dequantize(_parts(edge, down), dt["dtype"])  # [d, F]
            dq = formats.quantize(np.ascontiguousarray(dw.T[order]), "q8_0")  # neuron-major, blocks along d
            raw = np.zeros((F, size), np.uint8)
            src_parts = {"up_d": up["d"], "up_m": up.get("m"), "up_qs": up["qs"], "down_d": dq["d"], "down_qs": dq["qs"]}
            for fname, fdt, shape, off in fields:
                n = int(np.prod(shape)) * fdt.itemsize
                raw[:, off:off + n] = np.ascontiguousarray(src_parts[fname]).view(np.uint8).reshape(F, n)
            return raw.view(np.int32)

        new_tensors[p + "ffn_gate.weight"] = (gate_dtype, [F, d], gate)
        new_tensors[p + "ffn_bundle"] = ("i32", [F, rec_bytes // 4], bundle)
        dropped.update({gate_name, up_name, p + "ffn_down.weight"})
        h_in = ops[gu[0]]["in"][0]
        g_val = ops[gu[0]]["out"][0]
        values[g_val] = ["n", F]
        ops[gu[0]] = {"op": "linear", "in": [h_in], "out": [g_val], "w": {"weight": p + "ffn_gate.weight"}, "attrs": {}}
        ops[down] = {"op": "sparse_ffn", "in": [h_in, g_val], "out": ops[down]["out"],
                     "w": {"bundle": p + "ffn_bundle"},
                     "attrs": {"layer": layer, "threshold": thresholds[layer], "up_format": up_dtype}}
        drop_ops.update(gu[1:] + [silu])
        layers[str(layer)] = {"threshold": thresholds[layer], "neurons": F,
                              "activity": float(rates[layer].mean())}
    new_ops = [op for i, op in enumerate(ops) if i not in drop_ops]
    used = {v for op in new_ops for v in op["in"] + op["out"]}
    new_program = dict(program, ops=new_ops, values={k: v for k, v in values.items() if k in used or k in program["inputs"]})
    header = {k: v for k, v in h.items() if k not in ("tensors", "data_size")}
    header["program"] = new_program
    header["sparse_ffn"] = {"sparsity": sparsity, "calibration_tokens": n_calib, "record_bytes": record,
                            "down_format": "q8_0", "layers": layers,
                            "bundles": [f"blk.{i}.ffn_bundle" for i in range(L)]}
    plans = []
    for name, t in tensors_in.items():
        if name in dropped:
            continue
        plans.append((name, t["dtype"], t["shape"], lambda name=name: _copy(edge, name)))
    for name, (dtype, shape, produce) in new_tensors.items():
        plans.append((name, dtype, shape, produce))
    size = write_edge(out, header, plans, force=force)
    return {"output": out, "bytes": size, "sparsity": sparsity, "thresholds": thresholds}


def _copy(edge: EdgeFile, name: str):
    t = edge.tensor(name)
    return {k: np.array(v) for k, v in t.items()} if isinstance(t, dict) else np.array(t)
