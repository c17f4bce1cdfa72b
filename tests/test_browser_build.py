"""The browser build's pieces that run without a browser: the int8-per-row kernels (both
backends, against float64 references written here), weights expanded at load (f32, int8)
through the interpreter, the memory plan of the page's glue, and `edgert web build` (site
layout, the wheels, bad input)."""
import base64
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest

from edgert import kernels
from edgert.cli import main
from edgert.format import EdgeFile, write_edge
from edgert.interpreter import Interpreter, RowsI8
from edgert.kernels import formats
from edgert.program import ProgramBuilder
from edgert.web import build, glue

HAS_NUMBA = importlib.util.find_spec("numba") is not None
BACKENDS = ["ref", pytest.param("jit", marks=pytest.mark.skipif(not HAS_NUMBA, reason="numba not installed"))]


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


@pytest.fixture(params=BACKENDS)
def K(request):
    return kernels.load(request.param)


# --- kernels ------------------------------------------------------------------------------------

@pytest.mark.parametrize("r, k", [(1, 1), (3, 7), (17, 33), (64, 576)])
def test_quantize_rows_i8(K, r, k):
    w = _rng("q8r", r, k).standard_normal((r, k)).astype(np.float32) * 2
    w[0] = 0  # a zero row
    q, scale = np.full((r, k), 99, np.int8), np.full(r, np.nan, np.float32)
    K.quantize_rows_i8(w, q, scale)
    amax = np.abs(w.astype(np.float64)).max(axis=1)
    np.testing.assert_allclose(scale, amax / 127, rtol=1e-6)
    assert scale[0] == 0 and not q[0].any()
    assert np.abs(q.astype(np.int32)).max() <= 127
    err = np.abs(q * scale.astype(np.float64)[:, None] - w)
    assert np.all(err <= scale[:, None] * (0.5 + 1e-5))  # round to nearest


def test_quantize_rows_i8_backends_agree():
    if not HAS_NUMBA:
        pytest.skip("numba not installed: only the NumPy twin exists here")
    w = _rng("q8r-agree").standard_normal((300, 576)).astype(np.float32)
    outs = []
    for name in ("ref", "jit"):
        q, scale = np.empty(w.shape, np.int8), np.empty(300, np.float32)
        kernels.load(name).quantize_rows_i8(w, q, scale)
        outs.append((q.astype(np.int32), scale))
    np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-6)
    diff = np.abs(outs[0][0] - outs[1][0])
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # at most float rounding at exact halves


@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("N, k", [(1, 32), (7, 33), (130, 576)])
def test_matmul_rows_i8(K, n, N, k):
    rng = _rng("mm8", n, N, k)
    q = rng.integers(-127, 128, (N, k)).astype(np.int8)
    scale = rng.uniform(0.001, 0.05, N).astype(np.float32)
    x = rng.standard_normal((n, k)).astype(np.float32)
    out = np.full((n, N), np.nan, np.float32)
    K.matmul_rows_i8(x, q, scale, out)
    want = x.astype(np.float64) @ (q.astype(np.float64) * scale.astype(np.float64)[:, None]).T
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


# --- weights expanded at load, through the interpreter -------------------------------------------

def _tiny_model(path, fmt, rng, V=40, D=64, N=96):
    """An .edge file with a quantized embedding [V, D] and a quantized linear [N, D] (program:
    embed -> linear, both outputs kept) and the float64 dequantized weights (formats.dequantize)."""
    emb = formats.quantize(rng.standard_normal((V, D)).astype(np.float32), fmt)
    lin = formats.quantize(rng.standard_normal((N, D)).astype(np.float32) * 0.1, fmt)
    b = ProgramBuilder()
    tokens = b.input("tokens", "i64", ["n"])
    x = b.emit("embed", [tokens], ["n", D], w={"weight": "emb"})
    y = b.emit("linear", [x], ["n", N], w={"weight": "lin"})
    header = {"kind": "llm", "config": {"arch": "llama", "n_layers": 1, "n_kv_head": 1, "head_dim": D,
                                        "vocab_size": V}, "program": b.build([x, y])}
    write_edge(path, header, [("emb", fmt, [V, D], lambda: emb), ("lin", fmt, [N, D], lambda: lin)])
    return (header["program"], formats.dequantize(emb, fmt).astype(np.float64),
            formats.dequantize(lin, fmt).astype(np.float64))


@pytest.mark.parametrize("fmt", list(formats.FORMATS))
def test_expanded_weights_compute_the_same_model(tmp_path, K, fmt):
    program, emb, lin = _tiny_model(tmp_path / "m.edge", fmt, _rng("tiny", fmt))
    edge = EdgeFile(tmp_path / "m.edge")
    tokens = np.array([3, 0, 39, 3, 17])
    want_x = emb[tokens]
    want_y = want_x @ lin.T
    backend = K.__name__.rsplit(".", 1)[1]
    results = {}
    for form in (None, "f32", "int8"):
        it = Interpreter(program, edge, backend, weights=form)
        x, y = (a.copy() for a in it.run({"tokens": tokens}, {"n": tokens.size}))
        results[form] = (x, y)
    w = Interpreter(program, edge, backend, weights="f32").weights.get("lin")
    assert w.dtype == np.float32 and w.shape == lin.shape
    np.testing.assert_array_equal(w, lin.astype(np.float32))  # dequant_rows is exact
    np.testing.assert_array_equal(results["f32"][0], want_x.astype(np.float32))
    np.testing.assert_allclose(results["f32"][1], want_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(results[None][1], want_y, rtol=1e-3, atol=1e-3)  # int16 activations
    # int8 per row: each weight within half a step (scale / 2) of the expanded value.
    w8 = Interpreter(program, edge, backend, weights="int8").weights.get("lin")
    assert isinstance(w8, RowsI8) and w8.q.dtype == np.int8
    step = np.abs(lin).max(axis=1) / 127
    x8, y8 = results["int8"]
    np.testing.assert_allclose(x8, want_x, atol=float(np.abs(emb).max() / 127 * 0.51))
    bound = np.abs(x8.astype(np.float64)) @ (step[None, :] * 0.51 * np.ones_like(lin).T) + 1e-4
    assert np.all(np.abs(y8 - x8.astype(np.float64) @ lin.T) <= bound)


def test_unknown_expansion(tmp_path):
    program, _, _ = _tiny_model(tmp_path / "m.edge", "q8_0", _rng("bad"))
    with pytest.raises(Exception, match="unknown weight expansion 'f16'"):
        Interpreter(program, EdgeFile(tmp_path / "m.edge"), "ref", weights="f16")


def test_memory_plan_picks_by_budget(tmp_path):
    _tiny_model(tmp_path / "m.edge", "q4_0", _rng("plan"))
    size = os.path.getsize(tmp_path / "m.edge")
    weights = 40 * 64 + 96 * 64
    kv = 2 * 1 * 1 * 64 * 4 * 100
    p = glue.plan(str(tmp_path / "m.edge"), context=100, memory_mb=1000)
    assert p["need_mb"] == pytest.approx({"f32": (size + kv + 4 * weights) / 1e6, "int8": (size + kv + weights) / 1e6,
                                          "stored": (size + kv) / 1e6})
    assert p["auto"] == "f32"
    assert glue.plan(str(tmp_path / "m.edge"), 100, memory_mb=p["need_mb"]["int8"] + 1e-6)["auto"] == "int8"
    assert glue.plan(str(tmp_path / "m.edge"), 100, memory_mb=p["need_mb"]["stored"] + 1e-6)["auto"] == "stored"


# --- edgert web build ---------------------------------------------------------------------------

@pytest.fixture
def tiny_llm(tmp_path):
    path = tmp_path / "tiny.edge"
    _tiny_model(path, "q4_1", _rng("site"))
    return str(path)


def _check_wheel(path):
    """Names in a wheel whose RECORD lists every file with its right sha256 and size."""
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        record = next(n for n in names if n.endswith(".dist-info/RECORD"))
        rows = [line.split(",") for line in z.read(record).decode().splitlines()]
        assert sorted(r[0] for r in rows) == sorted(names)
        for name, digest, size in rows:
            if name == record:
                continue
            data = z.read(name)
            want = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert digest == f"sha256={want}" and int(size) == len(data), name
        assert "Tag: py3-none-any" in z.read(record.replace("RECORD", "WHEEL")).decode()
    return names


def test_build_site(tmp_path, tiny_llm, capsys):
    out = tmp_path / "site"
    assert main(["web", "build", "--model", tiny_llm, "-o", str(out)]) == 0
    assert "python -m http.server -d" in capsys.readouterr().err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["pyodide"] == "https://cdn.jsdelivr.net/pyodide/v0.27.7/full/"
    (model,) = cfg["models"]
    assert model["name"] == "tiny" and (out / model["file"]).read_bytes() == open(tiny_llm, "rb").read()
    assert model["sha256"] == hashlib.sha256(open(tiny_llm, "rb").read()).hexdigest()
    for name in ("index.html", "app.js", "worker.js", "style.css"):
        assert (out / name).stat().st_size > 0
    assert not (out / "pyodide").exists()
    wheels = {os.path.basename(w).split("-")[0]: out / w for w in cfg["wheels"]}
    assert set(wheels) == {"edgert", "jinja2", "markupsafe"}
    names = _check_wheel(wheels["edgert"])
    for want in ("edgert/__init__.py", "edgert/model.py", "edgert/web/glue.py", "edgert/kernels/ref/quant.py",
                 "edgert/kernels/formats.py"):
        assert want in names
    assert not [n for n in names if "/jit/" in n or "/convert/" in n or n.endswith(".pyc")]
    ms = _check_wheel(wheels["markupsafe"])
    assert "markupsafe/_native.py" in ms and not [n for n in ms if n.endswith((".so", ".pyd"))]
    _check_wheel(wheels["jinja2"])
    # The same sources give the same wheel bytes (the browser's cache keys stay valid).
    assert build.edgert_wheel()[1] == wheels["edgert"].read_bytes()


def test_wheel_runs_without_numba(tmp_path):
    """The edgert wheel alone, numba unimportable (as under Pyodide): the NumPy kernels load."""
    name, data = build.edgert_wheel()
    with zipfile.ZipFile(__import__("io").BytesIO(data)) as z:
        z.extractall(tmp_path)
    code = ("import sys; sys.modules['numba'] = None; import edgert; from edgert import kernels; "
            "from edgert.web import glue; print(edgert.__file__); print(kernels.load().__name__)")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    env.pop("EDGERT_KERNELS", None)
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    path, backend = run.stdout.split()
    assert path.startswith(str(tmp_path)) and backend == "edgert.kernels.ref"


def test_build_with_local_pyodide(tmp_path, tiny_llm):
    fake = tmp_path / "pyodide"
    fake.mkdir()
    for f in build.PYODIDE_FILES:
        (fake / f).write_text("x")
    (fake / "pyodide-lock.json").write_text(json.dumps({"info": {"version": "0.27.7"},
                                                        "packages": {"numpy": {"file_name": "numpy-x.whl"}}}))
    with pytest.raises(Exception, match="has no numpy wheel"):
        build.build_site(str(tmp_path / "a"), [tiny_llm], pyodide_dir=str(fake))
    (fake / "numpy-x.whl").write_text("w")
    cfg = build.build_site(str(tmp_path / "b"), [tiny_llm], pyodide_dir=str(fake))
    assert cfg["pyodide"] == "pyodide/" and (tmp_path / "b" / "pyodide" / "numpy-x.whl").is_file()
    cfg = build.build_site(str(tmp_path / "c"), [], pyodide_url="/static/pyodide/")
    assert cfg["pyodide"] == "/static/pyodide/" and cfg["models"] == []


def test_build_bad_input(tmp_path, tiny_llm, capsys):
    out = tmp_path / "site"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["web", "build", "--model", tiny_llm, "-o", str(out)]) == 1
    assert "is not empty; pass --force" in capsys.readouterr().err
    assert main(["web", "build", "--model", tiny_llm, "-o", str(out), "--force"]) == 0
    assert (out / "keep.txt").read_text() == "mine"
    capsys.readouterr()
    other = tmp_path / "x.edge"
    write_edge(other, {"kind": "cnn"}, [])
    cases = [(["--model", str(other)], "holds a 'cnn' model"),
             (["--model", str(tmp_path / "missing.edge")], "cannot open"),
             (["--pyodide-dir", str(tmp_path)], "is not a Pyodide copy"),
             (["--pyodide-dir", str(tmp_path), "--pyodide-url", "x/"], "either --pyodide-url or --pyodide-dir")]
    for args, message in cases:
        assert main(["web", "build", "-o", str(tmp_path / "new"), *args]) == 1
        err = capsys.readouterr().err
        assert err.startswith("edgert: error:") and message in err, err
        assert not (tmp_path / "new").exists()
