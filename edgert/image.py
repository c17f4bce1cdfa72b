"""Image input for CNN models: decode (Pillow, imported when needed), resize, centre crop and
normalise as the model's header says (config["preprocess"], written at conversion):

    {"size": [H, W], "resize": shorter side before the crop (or null: straight to H x W),
     "mean": [3], "std": [3] on the 0..255 scale, "channels": "RGB" | "BGR",
     "interpolation": "bilinear" | "bicubic" | "lanczos" | "nearest"}

The result is float32 [1, C, H, W] = (pixel - mean) / std, channel-major.
"""
from __future__ import annotations

import os

import numpy as np

from .errors import EdgeError


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise EdgeError("reading images needs Pillow: pip install Pillow") from None
    return Image


def open_image(src):
    """A path, a PIL image or an array [H, W, 3|4] / [H, W] (uint8, or float on 0..255) -> RGB PIL image."""
    Image = _pil()
    if isinstance(src, (str, os.PathLike)):
        try:
            with Image.open(src) as im:
                return im.convert("RGB")
        except (OSError, ValueError) as e:
            raise EdgeError(f"cannot read image {src}: {e}") from None
    if isinstance(src, Image.Image):
        return src.convert("RGB")
    arr = np.asarray(src)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise EdgeError(f"an image array must be [H, W], [H, W, 3] or [H, W, 4]; got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(arr).convert("RGB")


def preprocess(src, pre: dict) -> np.ndarray:
    """Image (see open_image) -> float32 [1, C, H, W] following `pre` (module docstring)."""
    Image = _pil()
    im = open_image(src)
    h, w = pre["size"]
    resample = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                "lanczos": Image.LANCZOS}[pre.get("interpolation", "bilinear")]
    if pre.get("resize"):
        scale = pre["resize"] / min(im.size)
        size = (max(w, int(round(im.width * scale))), max(h, int(round(im.height * scale))))
        im = im.resize(size, resample)
        left, top = (im.width - w) // 2, (im.height - h) // 2
        im = im.crop((left, top, left + w, top + h))
    else:
        im = im.resize((w, h), resample)
    x = np.asarray(im, np.float32)
    if pre.get("channels", "RGB") == "BGR":
        x = x[:, :, ::-1]
    x = (x - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])
