"""How far each engine's logits are from the float model: edgert at both activation precisions
and llama.cpp, against transformers on the same GGUF.

    python benchmarks/accuracy.py [--models smollm2-135m qwen2.5-coder-0.5b] [--tokens 640]

Prints one JSON object. Teacher-forced over the first --tokens tokens of tests/data/english.txt:
per engine the top-1 agreement with transformers (which dequantizes the GGUF to float32 and
runs its own PyTorch model) and the mean KL divergence in nats. llama.cpp quantizes activations
to 8 bits per block of 32 (q8 dot products), as edgert's int8 precision does; edgert's default
int16 keeps 15 bits. Needs the `oracle` extra (torch, transformers) and llama-cpp-python
(benchmarks/setup_llamacpp.sh). Models as in benchmarks/decode.py.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from decode import TEXT, edge_path, gguf_path  # noqa: E402


def kl_and_agreement(ref: np.ndarray, ours: np.ndarray) -> tuple[float, float]:
    """Mean KL(ref || ours) in nats and the fraction of rows with the same argmax ([n, vocab] each)."""
    ref, ours = np.asarray(ref, np.float64), np.asarray(ours, np.float64)
    lp = ref - ref.max(1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(1, keepdims=True))
    lq = ours - ours.max(1, keepdims=True)
    lq -= np.log(np.exp(lq).sum(1, keepdims=True))
    return float((np.exp(lp) * (lp - lq)).sum(1).mean()), float((ref.argmax(1) == ours.argmax(1)).mean())


def llamacpp_logits(gguf: str, ids: list[int]) -> np.ndarray:
    """llama.cpp's logits for every position of ids (no BOS added), float32 [len(ids), vocab]."""
    from llama_cpp import Llama

    llm = Llama(gguf, n_ctx=max(512, len(ids)), logits_all=True, n_threads=os.cpu_count(), verbose=False)
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)], np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "qwen2.5-coder-0.5b"])
    ap.add_argument("--tokens", type=int, default=640)
    args = ap.parse_args()

    import oracle

    import edgert

    with open(TEXT, encoding="utf-8") as f:
        text = f.read()
    out = {"benchmark": "accuracy", "tokens": args.tokens, "models": {}}
    for name in args.models:
        gguf = gguf_path(name)
        path = edge_path(name, gguf)
        ids = edgert.load(path).tokenizer.encode(text)[:args.tokens]
        ref = oracle.hf_logits(gguf, ids)
        rows = {f"edgert {act}": edgert.load(path, activations=act).logits(ids) for act in ("int16", "int8")}
        rows["llama.cpp"] = llamacpp_logits(gguf, ids)
        out["models"][name] = {engine: dict(zip(("mean_kl", "top1_agreement"), kl_and_agreement(ref, logits)))
                               for engine, logits in rows.items()}
        out["models"][name]["positions"] = len(ids)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
