"""Models of kind "cnn" (converted ONNX graphs): run any graph by input name, classify images.

    m = edgert.load("effnet.edge")
    m.classify("cat.jpg", top=5)        # [(label or class index, probability), ...]
    m.run({"input": array})             # {output name: array}
"""
from __future__ import annotations

import numpy as np

from . import kernels
from .errors import EdgeError
from .format import EdgeFile
from .interpreter import Interpreter


class Classifier:
    """A converted graph. threads: compute threads (default: all cores but one); backend:
    "jit" (Numba) or "ref" (NumPy)."""

    def __init__(self, path: str, threads: int | None = None, backend: str | None = None):
        self.edge = EdgeFile(path)
        h = self.edge.header
        if h.get("kind") != "cnn":
            raise EdgeError(f"{path} holds a {h.get('kind')!r} model, not a converted ONNX graph")
        self.config = h["config"]
        self.program = h["program"]
        kernels.set_threads(threads or kernels.default_threads())
        self.interp = Interpreter(self.program, self.edge, backend)
        self.labels = self.config.get("labels")
        self.inputs = {name: spec["shape"] for name, spec in self.program["inputs"].items()}

    def run(self, feeds: dict) -> dict:
        """feeds {input name: array}; returns {output name: float32 array}. An input whose
        first dimension was dynamic in the ONNX graph takes any batch size (one image at a time)."""
        feeds = {k: np.asarray(v, np.float32) for k, v in feeds.items()}
        batched = [k for k, dims in self.config.get("dynamic_dims", {}).items() if dims == [0]]
        n = {feeds[k].shape[0] for k in batched if k in feeds and feeds[k].ndim == len(self.inputs[k])}
        if len(n) == 1 and (size := n.pop()) != 1:
            parts = [self.run({k: (v[i:i + 1] if k in batched else v) for k, v in feeds.items()})
                     for i in range(size)]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        outs = self.interp.run(feeds)
        return {name: o.copy() for name, o in zip(self.config["outputs"], outs)}

    def preprocess(self, image) -> np.ndarray:
        """Image path / PIL image / [H, W, 3] array -> the float32 [1, C, H, W] input tensor."""
        pre = self.config.get("preprocess")
        if pre is None:
            raise EdgeError("this model takes no image input (no preprocessing in its header); use run()")
        from .image import preprocess

        return preprocess(image, pre)

    def probabilities(self, image) -> np.ndarray:
        """Class probabilities float32 [classes] of one image (path, PIL image, [H, W, 3] array,
        or an already preprocessed [1, C, H, W] float array)."""
        arr = np.asarray(image) if not isinstance(image, str) and hasattr(image, "__array__") else None
        name = next(iter(self.inputs))
        x = arr if arr is not None and arr.ndim == 4 else self.preprocess(image)
        y = self.run({name: x})[self.config["outputs"][0]].reshape(-1).astype(np.float64)
        if not self.config.get("output_is_probability"):
            y = np.exp(y - y.max())
            y /= y.sum()
        return y.astype(np.float32)

    def classify(self, image, top: int = 5) -> list:
        """The `top` most probable classes of one image: [(label or class index, probability)]."""
        p = self.probabilities(image)
        order = np.argsort(-p, kind="stable")[:top]
        return [(self.labels[i] if self.labels else int(i), float(p[i])) for i in order]
