"""`edgert web build`: a static site running edgert in the browser under Pyodide.

    build_site("site/", models=["smollm2.edge"])                 # Pyodide from the public CDN
    build_site("site/", models=[...], pyodide_dir="~/.cache/edgert/pyodide")   # offline copy

The site holds the page (static/: index.html, app.js, worker.js, style.css), config.json (the
Pyodide base URL, the bundled models with their size and sha256), the pure-Python wheels the
worker installs (edgert without its Numba kernels and converters; jinja2 and markupsafe, taken
from this Python's installed copies, for chat templates) and models/*.edge. Serve it with any
static file server, e.g. `python -m http.server -d site 8000`.
"""
from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import io
import json
import os
import shutil
import zipfile
from pathlib import Path

from ..errors import EdgeError

PYODIDE_VERSION = "0.27.7"
PYODIDE_CDN = f"https://cdn.jsdelivr.net/pyodide/v{PYODIDE_VERSION}/full/"
STATIC = Path(__file__).with_name("static")
PAGE_FILES = ("index.html", "app.js", "worker.js", "style.css")
# What a local Pyodide copy must hold (bash ../shared/web/fetch_pyodide.sh DIR assembles one).
PYODIDE_FILES = ("pyodide.js", "pyodide.mjs", "pyodide.asm.js", "pyodide.asm.wasm", "python_stdlib.zip", "pyodide-lock.json")
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)  # fixed timestamps: the same sources give the same wheel bytes


def _sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def wheel_bytes(name: str, version: str, files: dict[str, bytes]) -> bytes:
    """A pure-Python wheel (py3-none-any) holding files {path inside site-packages: bytes}."""
    info = f"{name}-{version}.dist-info"
    files = dict(sorted(files.items()))
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    files[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: edgert.web.build\nRoot-Is-Purelib: true\n"
                              b"Tag: py3-none-any\n")
    record = [f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b'=').decode()},{len(b)}"
              for p, b in files.items()]
    files[f"{info}/RECORD"] = ("\n".join(record + [f"{info}/RECORD,,"]) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for path, data in files.items():
            z.writestr(zipfile.ZipInfo(path, _ZIP_TIME), data, zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def _py_files(root: Path, prefix: str, skip=()) -> dict[str, bytes]:
    """{prefix/relative path: bytes} of the .py files under root, minus the subfolders in skip."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in skip or "__pycache__" in rel.parts:
            continue
        out[f"{prefix}/{rel.as_posix()}"] = path.read_bytes()
    return out


def edgert_wheel() -> tuple[str, bytes]:
    """(file name, bytes) of the edgert wheel for Pyodide: the runtime and the NumPy kernels,
    without the Numba kernels (kernels/jit) and the converters (they need numba, gguf)."""
    import edgert
    from edgert import kernels

    files = _py_files(Path(edgert.__file__).parent, "edgert", skip=("kernels", "convert"))
    files.update(_py_files(Path(kernels.__file__).parent, "edgert/kernels", skip=("jit",)))
    return f"edgert-{edgert.__version__}-py3-none-any.whl", wheel_bytes("edgert", edgert.__version__, files)


def installed_wheel(dist: str, package: str) -> tuple[str, bytes]:
    """(file name, bytes) of a py3-none-any wheel of the .py files of an installed distribution
    (pure-Python fallbacks only: markupsafe runs without its C speedups)."""
    try:
        d = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        raise EdgeError(f"`edgert web build` bundles {dist} for chat templates: pip install {dist}") from None
    root = Path(d.locate_file(package))
    return f"{package}-{d.version}-py3-none-any.whl", wheel_bytes(package, d.version, _py_files(root, package))


def _check_model(path: str) -> dict:
    from ..format import EdgeFile

    edge = EdgeFile(path)
    if edge.header.get("kind") != "llm":
        raise EdgeError(f"{path} holds a {edge.header.get('kind')!r} model; the page runs language models")
    c = edge.header.get("config", {})
    return {"arch": c.get("arch"), "n_layers": c.get("n_layers"), "vocab_size": c.get("vocab_size")}


def build_site(out: str, models=(), pyodide_url: str | None = None, pyodide_dir: str | None = None,
               force: bool = False) -> dict:
    """Write the site into `out` (which must be empty or absent, unless force); returns config.

    pyodide_url: where the page loads Pyodide from (default: the public CDN); pyodide_dir: a
    local Pyodide copy (runtime + numpy) copied into out/pyodide/ and used instead, for
    offline use and tests.
    """
    out_p = Path(out)
    if pyodide_url and pyodide_dir:
        raise EdgeError("give either --pyodide-url or --pyodide-dir, not both")
    if out_p.exists() and not out_p.is_dir():
        raise EdgeError(f"{out} exists and is not a directory")
    if out_p.is_dir() and any(out_p.iterdir()) and not force:
        raise EdgeError(f"{out} is not empty; pass --force to write the site into it")
    entries = []
    for path in models:
        info = _check_model(path)
        name = Path(path).stem
        if any(e["name"] == name for e in entries):
            raise EdgeError(f"two models are named {name!r}; rename one of the files")
        entries.append({"name": name, "file": f"models/{Path(path).name}", "bytes": os.path.getsize(path),
                        "sha256": _sha256(path), **info})
    if pyodide_dir:
        src = Path(os.path.expanduser(pyodide_dir))
        missing = [f for f in PYODIDE_FILES if not (src / f).is_file()]
        if missing:
            raise EdgeError(f"{src} is not a Pyodide copy (missing {', '.join(missing)}); "
                            "use an unpacked Pyodide 0.27.7 release that includes numpy")
        lock = json.loads((src / "pyodide-lock.json").read_text())
        numpy_whl = lock.get("packages", {}).get("numpy", {}).get("file_name", "")
        if not (src / numpy_whl).is_file():
            raise EdgeError(f"{src} has no numpy wheel ({numpy_whl or 'not in pyodide-lock.json'})")
        if lock.get("info", {}).get("version") not in (None, PYODIDE_VERSION):
            raise EdgeError(f"{src} holds Pyodide {lock['info']['version']}; the page needs {PYODIDE_VERSION}")

    out_p.mkdir(parents=True, exist_ok=True)
    for name in PAGE_FILES:
        shutil.copyfile(STATIC / name, out_p / name)
    wheels = [edgert_wheel(), installed_wheel("jinja2", "jinja2"), installed_wheel("markupsafe", "markupsafe")]
    (out_p / "wheels").mkdir(exist_ok=True)
    for name, data in wheels:
        (out_p / "wheels" / name).write_bytes(data)
    if entries:
        (out_p / "models").mkdir(exist_ok=True)
    for path, e in zip(models, entries):
        shutil.copyfile(path, out_p / e["file"])
    if pyodide_dir:
        dest = out_p / "pyodide"
        dest.mkdir(exist_ok=True)
        for f in (*PYODIDE_FILES, numpy_whl):
            shutil.copyfile(src / f, dest / f)
        pyodide_url = "pyodide/"
    config = {"pyodide": pyodide_url or PYODIDE_CDN, "pyodide_version": PYODIDE_VERSION,
              "wheels": [f"wheels/{name}" for name, _ in wheels], "models": entries}
    (out_p / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return config
