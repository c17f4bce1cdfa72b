"""GGUF chat model -> .edge: config, tokenizer, program and weights.

Tensors whose GGUF type edgert runs natively (Q4_0, Q4_1, Q8_0) are kept bit for bit, only
split into the .edge part layout. Other types (Q4_K, Q5_0, Q6_K, F16, ...) are dequantized
with the gguf package and requantized by convert/requant.py: an error-minimising search in
the user's format, with the roles that 4 bits hurt most (attention, ffn_up/down, output
head) in q8_0; each tensor's error is reported. 1-D tensors (norms, biases) stay float32.
Per layer, q/k/v and gate/up weights of one dtype are stored concatenated by rows
(attn_qkv, ffn_gate_up; biases likewise), so that one kernel call computes them together.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from edgert import __version__
from edgert.errors import EdgeError
from edgert.format import write_edge
from edgert.kernels import formats
from edgert.tokenizer import tokenizer_dict_from_gguf

from . import requant
from .gguf_file import open_gguf
from .models import llama

NATIVE = {"Q4_0": "q4_0", "Q4_1": "q4_1", "Q8_0": "q8_0"}
QUANT_CHOICES = tuple(formats.FORMATS)


def _plan_tensor(t, quant: str, pure: bool = False):
    """(name, edge dtype, shape, producer, note) for one GGUF tensor (pure: see
    requant.target_format; a native type other than `quant` is then requantized too)."""
    import gguf

    gtype = t.tensor_type.name
    shape = [int(s) for s in reversed([int(x) for x in t.shape])]  # GGUF lists ne0 (row length) first
    if len(shape) == 1 or gtype == "F32":
        if gtype not in ("F32", "F16", "BF16") and len(shape) == 1:
            raise EdgeError(f"tensor {t.name}: 1-D tensor of type {gtype} is not supported")
        return t.name, "f32", shape, lambda: gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape), None
    if len(shape) != 2:
        raise EdgeError(f"tensor {t.name}: {len(shape)}-D weights are not supported")
    n, k = shape
    if gtype in NATIVE and not (pure and NATIVE[gtype] != quant):
        return t.name, NATIVE[gtype], shape, lambda: formats.from_gguf_blocks(t.data, NATIVE[gtype], n, k), "kept"
    try:
        qtype = gguf.GGMLQuantizationType[gtype]
        gguf.quants.dequantize(t.data[:1], qtype)
    except (KeyError, NotImplementedError, ValueError) as e:
        raise EdgeError(f"tensor {t.name}: GGUF type {gtype} is not supported ({e}); "
                        f"edgert keeps {', '.join(NATIVE)} and requantizes what the gguf package can dequantize") from None
    if k % formats.BLOCK:
        return t.name, "f32", shape, lambda: gguf.quants.dequantize(t.data, qtype).reshape(shape), f"{gtype} -> f32"

    def requantize():
        w = gguf.quants.dequantize(t.data, qtype).reshape(shape).astype(np.float32)
        _, parts, requantize.stats = requant.requantize(t.name, gtype, w, quant, pure)
        return parts
    return t.name, requant.target_format(t.name, gtype, quant, pure), shape, requantize, "requantize"


# tensors stored concatenated by rows, so that one product serves them all
FUSED = {"attn_qkv": ("attn_q", "attn_k", "attn_v"), "ffn_gate_up": ("ffn_gate", "ffn_up")}


def _concat(producers):
    """Producer of the row concatenation of float arrays or quantized parts dicts."""
    def produce():
        got = [p() for p in producers]
        notes = [str(p.stats) for p in producers if getattr(p, "stats", None)]
        if notes:
            produce.stats = "; ".join(notes)
        if isinstance(got[0], dict):
            return {k: np.concatenate([g[k] for g in got]) for k in got[0]}
        return np.concatenate(got)
    return produce


def _fuse(plans: list) -> list:
    """Replace each layer's q/k/v (and gate/up) weight plans by one concatenated plan when they
    share a dtype, and their biases (if any) by one bias; the fused plan takes the place of
    the first member."""
    by_name = {p[0]: p for p in plans}
    replace, drop = {}, set()
    for name in by_name:
        parts = name.split(".")
        if parts[0] != "blk" or len(parts) != 4 or parts[3] != "weight":
            continue
        for fused, members in FUSED.items():
            if parts[2] != members[0]:
                continue
            stem = f"blk.{parts[1]}."
            ws = [by_name.get(f"{stem}{m}.weight") for m in members]
            if any(w is None for w in ws) or len({(w[1], w[2][1]) for w in ws}) != 1:
                continue
            rows = sum(w[2][0] for w in ws)
            replace[ws[0][0]] = (f"{stem}{fused}.weight", ws[0][1], [rows, ws[0][2][1]],
                                 _concat([w[3] for w in ws]), ws[0][4])
            drop.update(w[0] for w in ws[1:])
            bs = [by_name.get(f"{stem}{m}.bias") for m in members]
            if any(bs):
                zeros = [(lambda r=w[2][0]: np.zeros(r, np.float32)) for w in ws]
                present = [b for b in bs if b is not None]
                replace[present[0][0]] = (f"{stem}{fused}.bias", "f32", [rows],
                                          _concat([b[3] if b else z for b, z in zip(bs, zeros)]), None)
                drop.update(b[0] for b in present[1:])
    return [replace.get(p[0], p) for p in plans if p[0] not in drop]


def convert_gguf(src: str, out: str, quant: str = "q4_1", force: bool = False, progress: bool = True,
                 sparsify: float | None = None, pure: bool = False) -> dict:
    """Convert a GGUF LLM to .edge at `out`; returns a summary dict. pure: every matrix in
    `quant` (requant.target_format). sparsify: a target
    activation sparsity -- the dense conversion goes to a temporary file beside `out`, then
    convert.sparsify bundles its FFNs per neuron and calibrates thresholds into `out`."""
    if sparsify is not None:
        from .sparsify import sparsify_edge

        if os.path.exists(out) and not force:
            raise EdgeError(f"{out} exists; pass --force to overwrite it")
        dense = f"{out}.dense-tmp"
        try:
            summary = convert_gguf(src, dense, quant=quant, force=True, progress=progress, pure=pure)
            summary.update(sparsify_edge(dense, out, sparsify, force=force, progress=progress), output=out)
        finally:
            if os.path.exists(dense):
                os.remove(dense)
        from edgert.format import EdgeFile

        counts: dict = {}
        for t in EdgeFile(out).header["tensors"].values():
            counts[t["dtype"]] = counts.get(t["dtype"], 0) + 1
        summary["tensors"] = counts
        return summary
    if quant not in QUANT_CHOICES:
        raise EdgeError(f"unknown --quant {quant!r}; choose one of {', '.join(QUANT_CHOICES)}")
    if os.path.exists(out) and not force:
        raise EdgeError(f"{out} exists; pass --force to overwrite it")
    reader, meta = open_gguf(src)
    cfg = llama.config_from_gguf(meta, [t.name for t in reader.tensors])
    plans = _fuse([_plan_tensor(t, quant, pure) for t in reader.tensors])
    names = [p[0] for p in plans]
    header = {
        "kind": "llm",
        "config": cfg,
        "tokenizer": tokenizer_dict_from_gguf(meta),
        "chat_template": meta.get("tokenizer.chat_template"),
        "program": llama.build_program(cfg, names),
        "source": {"format": "gguf", "file": os.path.basename(src), "name": meta.get("general.name"),
                   "quant": quant, "pure": pure, "converter": f"edgert {__version__}"},
    }
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(plans), unit="tensor", desc=f"converting {os.path.basename(src)}",
                   file=sys.stderr, dynamic_ncols=True)
    by_name = {p[0]: p for p in plans}
    counts: dict = {}

    def done(name):
        _, dtype, _, produce, note = by_name[name]
        counts[dtype] = counts.get(dtype, 0) + 1
        stats = getattr(produce, "stats", None)
        if stats and bar is not None:
            bar.write(f"  {name}: {stats}", file=sys.stderr)
        if bar is not None:
            bar.update(1)

    try:
        size = write_edge(out, header, [p[:4] for p in plans], force=force, progress=done)
    finally:
        if bar is not None:
            bar.close()
    return {"output": out, "bytes": size, "tensors": counts, "arch": cfg["arch"]}
