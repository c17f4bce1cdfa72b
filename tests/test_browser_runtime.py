"""The runtime in the browser, for real (slow; CI runs them):

- under Pyodide 0.27.7 in Node, greedy decoding of SmolLM2-135M gives the same tokens as
  CPython with the NumPy kernels, for every weight form the page uses (f32, int8, stored);
- the built site in headless Chromium (Debian's chromium through playwright-core), served on
  localhost with a local Pyodide copy and nothing else reachable: the model loads with a
  progress bar, a prompt streams text while the page stays responsive, Stop stops, a reload takes the
  model from the browser cache, a bad file gives a clear message; a screenshot is saved
  (also into $EDGERT_ARTIFACTS when set).

Tools: node (and npm, to install playwright-core into ~/.cache/edgert/node when missing),
/usr/bin/chromium, and ../shared/web/fetch_pyodide.sh, which assembles the Pyodide copy in
~/.cache/edgert/pyodide-0.27.7 (from the npm and PyPI registries, sha256-checked). A missing
tool skips with the reason, unless EDGERT_REQUIRE_BROWSER=1 (CI sets it): then it fails.
"""
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import edgert
from edgert.web.build import PYODIDE_VERSION, build_site

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
WEB = TESTS / "web"
FETCH_PYODIDE = TESTS.parent.parent / "shared" / "web" / "fetch_pyodide.sh"
CACHE = Path(os.environ.get("EDGERT_CACHE", Path.home() / ".cache" / "edgert"))
PLAYWRIGHT = "playwright-core@1.65.1"
CHROMIUM = "/usr/bin/chromium"


def _missing(what):
    """Fail (EDGERT_REQUIRE_BROWSER=1, as in CI) or skip, saying what is missing."""
    if os.environ.get("EDGERT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{what} (EDGERT_REQUIRE_BROWSER=1: the browser tests must run)")
    pytest.skip(what)


@pytest.fixture(scope="module")
def node():
    path = shutil.which("node")
    if not path:
        _missing("node is not installed (the Pyodide tests run in Node 18+)")
    return path


@pytest.fixture(scope="module")
def pyodide_dir(node):
    dest = CACHE / f"pyodide-{PYODIDE_VERSION}"
    if not FETCH_PYODIDE.is_file():
        pytest.fail(f"cannot assemble Pyodide: {FETCH_PYODIDE} not found")
    run = subprocess.run(["bash", str(FETCH_PYODIDE), str(dest)], capture_output=True, text=True)
    if run.returncode != 0:
        pytest.fail(f"fetch_pyodide.sh failed (exit {run.returncode}): {run.stderr.strip()[-2000:]}")
    return dest


@pytest.fixture(scope="module")
def smollm2_edge(smollm2_gguf, tmp_path_factory):
    from edgert.convert import convert

    path = tmp_path_factory.mktemp("browser") / "smollm2.edge"
    convert(smollm2_gguf, str(path), progress=False)
    return str(path)


@pytest.fixture(scope="module")
def site(smollm2_edge, pyodide_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    build_site(str(out), [smollm2_edge], pyodide_dir=str(pyodide_dir), force=True)
    return out


# --- Node: the same tokens as CPython ------------------------------------------------------------

FORMS = ["f32", "int8", "stored"]
MAX_TOKENS = 12


def test_pyodide_matches_cpython(node, site, smollm2_edge, prompts):
    chosen = [prompts[0], prompts[5], prompts[9]]
    args = {"weights": FORMS, "prompts": chosen, "max_tokens": MAX_TOKENS}
    run = subprocess.run([node, str(WEB / "pyodide_generate.mjs"), str(site), str(site / "models" / "smollm2.edge"),
                          json.dumps(args)], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])["runs"]
    assert [(r["weights"], r["prompt"]) for r in got] == [(f, p) for f in FORMS for p in chosen]
    for form in FORMS:
        m = edgert.load(smollm2_edge, backend="ref", weights=None if form == "stored" else form, context=2048)
        for r in (r for r in got if r["weights"] == form):
            assert r["info"]["weights"] == form
            want = list(m.generate(r["prompt"], max_tokens=MAX_TOKENS, temperature=0.0, stop_at_eot=False))
            assert r["tokens"] == m.last_tokens, (form, r["prompt"], r["text"], "".join(want))
            assert r["text"] == "".join(want)


# --- Chromium: the page, end to end --------------------------------------------------------------

@pytest.fixture(scope="module")
def playwright(node):
    if not Path(CHROMIUM).is_file():
        _missing(f"{CHROMIUM} is not installed (apt-get install chromium)")
    modules = Path(os.environ.get("EDGERT_NODE_MODULES", CACHE / "node" / "node_modules"))
    if not (modules / "playwright-core").is_dir():
        npm = shutil.which("npm")
        if not npm:
            _missing(f"playwright-core is not in {modules} and npm is not installed to fetch it")
        run = subprocess.run([npm, "install", "--prefix", str(modules.parent), "--silent", "--no-audit", "--no-fund",
                              PLAYWRIGHT], capture_output=True, text=True)
        if run.returncode != 0:
            pytest.fail(f"npm install {PLAYWRIGHT} failed: {run.stderr.strip()[-2000:]}")
    return modules


@contextlib.contextmanager
def serve(root):
    """python -m http.server on a free localhost port; yields the site's URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "-d", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_page_in_chromium(node, playwright, site, tmp_path):
    shot = tmp_path / "browser-e2e.png"
    with serve(site) as url:
        args = {"url": url, "mode": "e2e", "screenshot": str(shot), "prompt": "Write one sentence about the sea.",
                "max_tokens": 24, "timeout_s": 300}
        run = subprocess.run([node, str(WEB / "chromium_page.mjs"), json.dumps(args)], capture_output=True, text=True,
                             timeout=900, env=dict(os.environ, NODE_PATH=str(playwright)))
    assert run.stdout.strip(), run.stderr[-3000:]
    r = json.loads(run.stdout.strip().splitlines()[-1])
    assert run.returncode == 0, (r.get("failure"), run.stderr[-3000:])
    if os.environ.get("EDGERT_ARTIFACTS"):
        os.makedirs(os.environ["EDGERT_ARTIFACTS"], exist_ok=True)
        shutil.copy(shot, os.environ["EDGERT_ARTIFACTS"])
    first = r["first_load"]
    assert first["ready"] and not first["error"], first
    assert first["cached"] is False and first["info"]["weights"] == "f32"
    assert r["external_requests"] == []  # offline: Pyodide, numpy, wheels and model all from localhost
    # Generated text appeared on the page, streamed from the worker.
    assert not r["error"] and r["stats"]["generated_tokens"] > 0
    assert len(r["text"].strip()) >= 10 and r["output_text"].strip() == r["text"].strip()
    assert "decode" in r["stats_text"] and "tok/s" in r["stats_text"]
    # The page's own thread kept ticking (a 50 ms timer) while the model ran: no freeze.
    assert r["max_gap_ms"] < 1000, r["max_gap_ms"]
    assert shot.stat().st_size > 10_000
    # Stop ends a 400-token generation early.
    assert not r["stopped"]["error"] and r["stopped"]["stats"]["generated_tokens"] < 100, r["stopped"]
    assert "stopped" in r["stopped"]["stats_text"]
    # Reloaded: ready again, the model from the browser's cache, not downloaded again.
    assert r["reload"]["ready"] and r["reload"]["cached"] is True and r["reload"]["model_requests"] == 0
    # A file that is not a model: one clear line on the page.
    bad = r["bad_file"]
    assert bad["visible"] and bad["error"] == bad["shown"]
    assert bad["error"].startswith("broken.edge is not an .edge file"), bad
    assert not [e for e in r["console_errors"] if "404" in e or "Uncaught" in e], r["console_errors"]
