"""The llama decoder family: llama (SmolLM2) and qwen2 (Qwen2.5: QKV bias, NEOX rope).

config_from_gguf reads the GGUF metadata into a config dict; build_program lowers one
decoder step over n new tokens to an op list. Where the converter fused q/k/v (attn_qkv) or
gate/up (ffn_gate_up) into one tensor, one product serves them; the ops that follow read the
fused value's column ranges.
"""
from __future__ import annotations

import math

from edgert.errors import EdgeError
from edgert.program import ProgramBuilder

# GGUF llama stores Q/K rows permuted for rope on adjacent pairs (llama.cpp's NORM mode);
# qwen2 keeps Hugging Face's order and rotates halves (NEOX mode).
ARCHS = {"llama": {"rope_neox": False}, "qwen2": {"rope_neox": True}}


def config_from_gguf(meta: dict, tensor_names) -> dict:
    arch = meta.get("general.architecture")
    if arch not in ARCHS:
        raise EdgeError(f"unsupported architecture {arch!r}; edgert converts: {', '.join(ARCHS)}")

    def key(name, default=None):
        v = meta.get(f"{arch}.{name}", default)
        if v is None:
            raise EdgeError(f"GGUF metadata lacks {arch}.{name}")
        return v

    n_head = int(key("attention.head_count"))
    d_model = int(key("embedding_length"))
    head_dim = int(key("rope.dimension_count", d_model // n_head))
    if head_dim * n_head != d_model:
        raise EdgeError(f"head size {head_dim} x {n_head} heads != embedding {d_model}: not supported yet")
    return {
        "arch": arch,
        "n_layers": int(key("block_count")),
        "d_model": d_model,
        "d_ff": int(key("feed_forward_length")),
        "n_head": n_head,
        "n_kv_head": int(key("attention.head_count_kv", n_head)),
        "head_dim": head_dim,
        "rope_theta": float(key("rope.freq_base", 10000.0)),
        "rope_neox": ARCHS[arch]["rope_neox"],
        "norm_eps": float(key("attention.layer_norm_rms_epsilon")),
        "context_length": int(key("context_length")),
        "vocab_size": len(meta["tokenizer.ggml.tokens"]),
        "tied_embeddings": "output.weight" not in tensor_names,
    }


def build_program(cfg: dict, tensor_names) -> dict:
    """One step over n new tokens -> logits [m, vocab] (m = 1 for generation, n for scoring)."""
    names = set(tensor_names)
    d, hd = cfg["d_model"], cfg["head_dim"]
    qdim, kvdim = cfg["n_head"] * hd, cfg["n_kv_head"] * hd
    b = ProgramBuilder()
    tokens = b.input("tokens", "i64", ["n"])
    b.input("pos", "i64", ["n"])

    def linear(x, stem, tensor, width, rows="n"):
        w = {"weight": f"{tensor}.weight"}
        if f"{tensor}.bias" in names:
            w["bias"] = f"{tensor}.bias"
        return b.emit("linear", [x], [rows, width], w=w, stem=stem)

    def norm(x, tensor, rows="n"):
        return b.emit("rms_norm", [x], [rows, d], w={"weight": tensor}, stem="h", eps=cfg["norm_eps"])

    rope = dict(head_dim=hd, theta=cfg["rope_theta"], neox=cfg["rope_neox"])
    heads = dict(n_head=cfg["n_head"], n_kv_head=cfg["n_kv_head"])
    x = b.emit("embed", [tokens], ["n", d], w={"weight": "token_embd.weight"}, stem="x")
    for layer in range(cfg["n_layers"]):
        p = f"blk.{layer}."
        h = norm(x, p + "attn_norm.weight")
        att = dict(layer=layer, head_dim=hd, scale=1.0 / math.sqrt(hd), **heads)
        if p + "attn_qkv.weight" in names:  # fused at conversion: one product, rope on q and k in place
            qkv = linear(h, "qkv", p + "attn_qkv", qdim + 2 * kvdim)
            qkv = b.emit("rope", [qkv], ["n", qdim + 2 * kvdim], stem="qkv", heads=cfg["n_head"] + cfg["n_kv_head"],
                         **rope)
            a = b.emit("attention", [qkv], ["n", qdim], stem="a", **att)
        else:
            q = b.emit("rope", [linear(h, "q", p + "attn_q", qdim)], ["n", qdim], stem="q", **rope)
            k = b.emit("rope", [linear(h, "k", p + "attn_k", kvdim)], ["n", kvdim], stem="k", **rope)
            a = b.emit("attention", [q, k, linear(h, "v", p + "attn_v", kvdim)], ["n", qdim], stem="a", **att)
        x = b.emit("add", [x, linear(a, "o", p + "attn_output", d)], ["n", d], stem="x")
        h = norm(x, p + "ffn_norm.weight")
        if p + "ffn_gate_up.weight" in names:
            gate_up = [linear(h, "gu", p + "ffn_gate_up", 2 * cfg["d_ff"])]
        else:
            gate_up = [linear(h, "g", p + "ffn_gate", cfg["d_ff"]), linear(h, "u", p + "ffn_up", cfg["d_ff"])]
        g = b.emit("silu_mul", gate_up, ["n", cfg["d_ff"]], stem="g")
        x = b.emit("add", [x, linear(g, "o", p + "ffn_down", d)], ["n", d], stem="x")
    x = b.emit("output_rows", [x], ["m", d], stem="x")
    h = norm(x, "output_norm.weight", rows="m")
    head = "token_embd" if cfg["tied_embeddings"] else "output"
    logits = linear(h, "logits", head, cfg["vocab_size"], rows="m")
    return b.build([logits])
