"""Converters: trained model files -> one .edge file. Needs the conversion extras (gguf, tqdm)."""
from __future__ import annotations

import os

from edgert.errors import EdgeError


def convert(src: str, out: str, quant: str = "q4_1", force: bool = False, progress: bool = True,
            sparsify: float | None = None, pure: bool = False, **onnx_options) -> dict:
    """Convert `src` (a GGUF file, or an .onnx graph: onnx_options prune=, labels=, preprocess=
    of convert.onnx_graph.convert_onnx) to the .edge file `out`; returns a summary dict.
    sparsify: GGUF LLMs only, a target activation sparsity: FFNs bundled per neuron with
    calibrated thresholds for sparse windowing (convert.sparsify). pure: GGUF LLMs only, every
    matrix in `quant` (no 8-bit roles: a smaller, less accurate model, e.g. a draft model)."""
    if not os.path.isfile(src):
        raise EdgeError(f"no such file: {src}")
    if src.lower().endswith(".onnx"):
        if sparsify is not None or pure:
            raise EdgeError("--bundle-ffn/--sparsify and --pure apply to GGUF language models")
        from .onnx_graph import convert_onnx

        return convert_onnx(src, out, force=force, progress=progress, **onnx_options)
    from .gguf_file import is_gguf

    if is_gguf(src):
        from .gguf_llm import convert_gguf

        return convert_gguf(src, out, quant=quant, force=force, progress=progress, sparsify=sparsify,
                            pure=pure)
    raise EdgeError(f"{src}: unrecognised model format; edgert converts GGUF files and .onnx graphs")
