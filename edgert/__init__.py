"""edgert: run trained models on the devices people already have.

    import edgert
    m = edgert.load("model.edge")
    for piece in m.generate("Hello", max_tokens=32, temperature=0.0):
        print(piece, end="")
"""
__version__ = "0.2.0"

from .errors import EdgeError  # noqa: E402


def load(path: str, **kwargs):
    """Open an .edge file: a language model (edgert.model.Model) or, for kind "cnn", a
    converted ONNX graph (edgert.classifier.Classifier: threads=, backend=); see those for
    the keyword arguments."""
    from . import kernels
    from .format import EdgeFile

    cnn = EdgeFile(path).header.get("kind") == "cnn"
    kernels.prefer_spin_count("cnn" if cnn else "llm")
    if cnn:
        from .classifier import Classifier

        return Classifier(path, **kwargs)
    from .model import Model

    return Model(path, **kwargs)


__all__ = ["load", "EdgeError", "__version__"]
