"""Tiny random llama-style .edge models for unit tests (real models prove correctness elsewhere).

make_tiny_llm(path, seed) writes a 2-layer model with random weights through the same program
builder and file writer as the converter; vocab tokens are byte-level characters, so the
tokenizer works on plain ASCII text.
"""
import numpy as np

from edgert.convert.models.llama import build_program
from edgert.format import write_edge
from edgert.kernels import formats
from edgert.tokenizer import BYTE_CHARS


def tokenizer_dict(vocab: int) -> dict:
    tokens = [BYTE_CHARS[b] for b in range(256)][:vocab] + [f"<x{i}>" for i in range(max(0, vocab - 256))]
    return {"model": "gpt2", "pre": "gpt2", "tokens": tokens, "merges": [], "control_ids": [],
            "user_defined_ids": [], "bos_id": None, "eos_id": None, "unk_id": None, "pad_id": None,
            "add_bos": False}


def make_tiny_llm(path, seed: int, vocab: int = 96, d: int = 64, n_layers: int = 2, n_head: int = 4,
                  n_kv_head: int = 2, d_ff: int = 128, fmt: str = "q8_0", temperature: float = 1.0) -> str:
    """Write a random model to `path` (returns it). `temperature` scales the output head: small
    values flatten the next-token distribution."""
    rng = np.random.default_rng(seed)
    hd = d // n_head
    cfg = {"arch": "llama", "n_layers": n_layers, "d_model": d, "d_ff": d_ff, "n_head": n_head,
           "n_kv_head": n_kv_head, "head_dim": hd, "rope_theta": 10000.0, "rope_neox": False, "norm_eps": 1e-5,
           "context_length": 256, "vocab_size": vocab, "tied_embeddings": False}
    shapes = {"token_embd.weight": (vocab, d), "output_norm.weight": (d,), "output.weight": (vocab, d)}
    for i in range(n_layers):
        p = f"blk.{i}."
        shapes.update({p + "attn_norm.weight": (d,), p + "ffn_norm.weight": (d,),
                       p + "attn_qkv.weight": ((n_head + 2 * n_kv_head) * hd, d),
                       p + "attn_output.weight": (d, n_head * hd), p + "ffn_gate_up.weight": (2 * d_ff, d),
                       p + "ffn_down.weight": (d, d_ff)})
    tensors = []
    for name, shape in shapes.items():
        if len(shape) == 1:
            w = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
            tensors.append((name, "f32", list(shape), lambda w=w: w))
        else:
            scale = temperature if name == "output.weight" else 1.0
            w = (rng.standard_normal(shape) * scale / np.sqrt(shape[1])).astype(np.float32)
            tensors.append((name, fmt, list(shape), lambda w=w: formats.quantize(w, fmt)))
    header = {"kind": "llm", "config": cfg, "tokenizer": tokenizer_dict(vocab), "chat_template": None,
              "program": build_program(cfg, list(shapes)), "source": {"format": "test"}}
    write_edge(str(path), header, tensors, force=True)
    return str(path)
