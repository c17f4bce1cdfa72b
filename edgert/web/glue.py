"""The Python side of the page's Web Worker, run inside Pyodide (NumPy kernels, no threads).

    info = open_model("/models/smollm2.edge", weights="auto", memory_mb=2048, progress=cb)
    for piece in generate("Hello", max_tokens=64): ...
    stats()      # the last generate()'s prompt/generated tokens and tok/s

Weights arrive as stored in the .edge file (4/8-bit blocks) and are expanded once at load to
the fastest form the memory budget allows: float32 (about 8x the 4-bit size), else int8 per
row (2x), else kept as stored (slowest); weights="f32" | "int8" | "stored" forces one. A
MemoryError while expanding falls back to the next form (under "auto") or becomes a clear
EdgeError.
"""
from __future__ import annotations

import gc

import numpy as np

from ..errors import EdgeError
from ..format import FLOAT_DTYPES, EdgeFile
from ..model import Model

FORMS = ("f32", "int8", "stored")
BYTES_PER_WEIGHT = {"f32": 4, "int8": 1}
DEFAULT_MEMORY_MB = 2048  # what a desktop browser tab reliably gives a wasm32 heap
_state: dict = {"model": None}


def plan(path: str, context: int, memory_mb: float | None = None) -> dict:
    """Resident megabytes of each weight form ({form: MB}, file and KV cache included) and the
    form "auto" picks: the first of f32, int8, stored that fits memory_mb."""
    edge = EdgeFile(path)
    h = edge.header
    quantized = sum(int(np.prod(t["shape"])) for t in h["tensors"].values() if t["dtype"] not in FLOAT_DTYPES)
    c = h.get("config", {})
    kv = 2 * c.get("n_layers", 0) * c.get("n_kv_head", 0) * c.get("head_dim", 0) * 4 * context
    base = edge.size + kv
    need = {form: (base + quantized * BYTES_PER_WEIGHT.get(form, 0)) / 1e6 for form in FORMS}
    budget = memory_mb or DEFAULT_MEMORY_MB
    auto = next((f for f in FORMS if need[f] <= budget), "stored")
    return {"need_mb": need, "auto": auto, "budget_mb": budget}


def open_model(path: str, weights: str = "auto", context: int = 2048, memory_mb: float | None = None,
               progress=None, name: str | None = None) -> dict:
    """Load the model at `path` and expand its weights (progress(done, total) after each
    tensor). Returns a JSON-friendly description of what was loaded."""
    close()
    if weights not in (*FORMS, "auto"):
        raise EdgeError(f"unknown weight form {weights!r}; supported: auto, {', '.join(FORMS)}")
    p = plan(path, context, memory_mb)
    forms = FORMS[FORMS.index(p["auto"]):] if weights == "auto" else (weights,)
    for form in forms:
        try:
            m = _load(path, form, context, progress)
            break
        except MemoryError:
            _state["model"] = m = None
            gc.collect()
            if form == forms[-1]:
                raise EdgeError(f"not enough memory to load {name or path} with {form} weights "
                                f"(needs about {p['need_mb'][form]:.0f} MB); close other tabs, pick int8 "
                                "weights or a smaller model") from None
    _state["model"] = m
    c = m.config
    return {"name": name or path, "arch": c["arch"], "layers": c["n_layers"], "vocab": c["vocab_size"],
            "context": m.context, "weights": form, "resident_mb": round(p["need_mb"][form]),
            "chat_template": bool(m.chat_template)}


def _load(path, form, context, progress):
    m = Model(path, backend="ref", context=context, weights=None if form == "stored" else form)
    names = [n for n, t in m.edge.header["tensors"].items() if t["dtype"] not in FLOAT_DTYPES]
    for i, n in enumerate(names):
        m.interpreter.weights.get(n)
        if progress is not None:
            progress(i + 1, len(names))
    return m


def model() -> Model:
    if _state["model"] is None:
        raise EdgeError("no model loaded")
    return _state["model"]


def close() -> None:
    """Drop the loaded model (its memory is reused by the next one)."""
    _state["model"] = None
    gc.collect()


def generate(prompt: str, chat: bool = False, max_tokens: int = 128, temperature: float = 0.0,
             top_k: int = 40, top_p: float = 0.95, seed: int | None = None, ignore_eot: bool = False):
    """Iterator of text pieces: the continuation of prompt, or with chat=True the model's reply
    to it as a user message (the model's chat template). ignore_eot: run to max_tokens."""
    m = model()
    kw = dict(max_tokens=int(max_tokens), temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
              seed=None if seed is None else int(seed), stop_at_eot=not ignore_eot)
    if chat:
        return m.chat([{"role": "user", "content": prompt}], stream=True, **kw)
    return m.generate(prompt, **kw)


def stats() -> dict:
    """The last generate()'s figures (prompt_tokens, generated_tokens, prefill/decode tok/s, stop)."""
    return dict(model().stats)
