"""Decode speed of SmolLM2-135M in the browser (headless Chromium, the demo page), next to
Pyodide in Node and CPython (NumPy kernels, Numba kernels), all in one run.

    python benchmarks/browser.py [--decode-tokens 64] [--forms f32 int8] [--skip-node]

Prints one JSON object. Browser figures come from the page itself (benchmark mode:
?run=1&chat=0&eot=0): decode and prefill tok/s as edgert measures them inside the worker, and
the load time to first token from navigation start in a fresh browser profile (Pyodide,
numpy and the model downloaded from localhost, weights expanded). CPython runs in
subprocesses, single-threaded like the browser (threads=1, OPENBLAS_NUM_THREADS=1). The
model is converted from the GGUF of ../shared/models/fetch_models.py into a temporary folder;
Pyodide comes from ../shared/web/fetch_pyodide.sh (cached in ~/.cache/edgert); chromium and
playwright-core as for tests/test_browser_runtime.py. Machines here are shared and noisy:
compare the ratios within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WEB_TESTS = ROOT / "tests" / "web"
sys.path.insert(0, str(ROOT / "tests"))
PROMPT = "The history of the sea is long and full of stories. In the beginning,"


def cpython(edge: str, backend: str, weights: str | None, n_decode: int) -> dict:
    code = f"""
import json, time, edgert
t0 = time.perf_counter()
m = edgert.load({edge!r}, backend={backend!r}, weights={weights!r}, threads=1, context=2048)
list(m.generate({PROMPT!r}, max_tokens=4, temperature=0.0, stop_at_eot=False))  # compile / warm up
first = time.perf_counter() - t0
list(m.generate({PROMPT!r}, max_tokens={n_decode}, temperature=0.0, stop_at_eot=False))
print(json.dumps(dict(m.stats, load_to_first_tokens_s=first)))
"""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env).stdout
    s = json.loads(out.strip().splitlines()[-1])
    return {"engine": f"cpython-{'numba' if backend == 'jit' else 'numpy'}", "weights": weights or "stored",
            "decode_tok_s": s["decode_tok_s"], "prefill_tok_s": s["prefill_tok_s"],
            "load_to_first_tokens_s": s["load_to_first_tokens_s"], "generated_tokens": s["generated_tokens"]}


def node_pyodide(node: str, site: Path, forms, n_decode: int) -> list[dict]:
    args = {"weights": list(forms), "prompts": [PROMPT], "max_tokens": n_decode}
    out = subprocess.run([node, str(WEB_TESTS / "pyodide_generate.mjs"), str(site), str(site / "models" / "smollm2.edge"),
                          json.dumps(args)], check=True, capture_output=True, text=True).stdout
    res = json.loads(out.strip().splitlines()[-1])
    return [{"engine": "pyodide-node", "weights": r["weights"], "decode_tok_s": r["stats"]["decode_tok_s"],
             "prefill_tok_s": r["stats"]["prefill_tok_s"], "load_model_s": r["load_model_s"],
             "pyodide_ready_s": res["pyodide_ready_s"]} for r in res["runs"]]


def chromium(node: str, modules: Path, site: Path, form: str, n_decode: int) -> dict:
    from test_browser_runtime import serve

    with serve(site) as url:
        args = {"url": url, "mode": "bench", "weights": form, "prompt": PROMPT, "max_tokens": n_decode,
                "timeout_s": 600}
        run = subprocess.run([node, str(WEB_TESTS / "chromium_page.mjs"), json.dumps(args)], capture_output=True,
                             text=True, env=dict(os.environ, NODE_PATH=str(modules)))
    r = json.loads(run.stdout.strip().splitlines()[-1])
    if run.returncode or r.get("error") or not r.get("stats"):
        raise RuntimeError(f"chromium run failed: {r.get('failure') or r.get('error')} {run.stderr[-2000:]}")
    t, s = r["timings"], r["stats"]
    return {"engine": "chromium", "weights": r["first_load"]["info"]["weights"], "decode_tok_s": s["decode_tok_s"],
            "prefill_tok_s": s["prefill_tok_s"], "prompt_tokens": s["prompt_tokens"],
            "generated_tokens": s["generated_tokens"], "load_to_first_token_s": t["first_token_s"],
            "ready_s": t["ready_s"], "python_s": t["python_s"], "model_download_s": t["model_s"],
            "weights_expand_s": t["weights_s"], "resident_mb": r["first_load"]["info"]["resident_mb"],
            "page_max_gap_ms": r["max_gap_ms"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--forms", nargs="+", default=["f32", "int8"], choices=["f32", "int8", "stored"])
    ap.add_argument("--skip-node", action="store_true", help="no Pyodide-in-Node figures")
    args = ap.parse_args()

    import shutil

    from conftest import fetch_model
    from test_browser_runtime import CACHE, FETCH_PYODIDE, PLAYWRIGHT

    from edgert.convert import convert
    from edgert.web.build import PYODIDE_VERSION, build_site

    node = shutil.which("node")
    modules = Path(os.environ.get("EDGERT_NODE_MODULES", CACHE / "node" / "node_modules"))
    if not (modules / "playwright-core").is_dir():
        subprocess.run(["npm", "install", "--prefix", str(modules.parent), "--silent", PLAYWRIGHT], check=True)
    pyodide = CACHE / f"pyodide-{PYODIDE_VERSION}"
    subprocess.run(["bash", str(FETCH_PYODIDE), str(pyodide)], check=True, capture_output=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        edge = os.path.join(tmp, "smollm2.edge")
        convert(fetch_model("smollm2-135m"), edge, progress=False)
        site = Path(tmp) / "site"
        build_site(str(site), [edge], pyodide_dir=str(pyodide))
        for form in args.forms:
            results.append(chromium(node, modules, site, form, args.decode_tokens))
            print(json.dumps(results[-1]), file=sys.stderr)
        if not args.skip_node:
            results += node_pyodide(node, site, args.forms, args.decode_tokens)
            print(json.dumps(results[-len(args.forms):]), file=sys.stderr)
        for backend, weights in [("ref", None), ("ref", "f32"), ("ref", "int8"), ("jit", None)]:
            results.append(cpython(edge, backend, weights, args.decode_tokens))
            print(json.dumps(results[-1]), file=sys.stderr)
    by = {(r["engine"], r["weights"]): r["decode_tok_s"] for r in results}
    ratios = {}
    for form in args.forms:
        b = by.get(("chromium", form))
        for peer in [("cpython-numpy", form), ("cpython-numpy", "stored"), ("cpython-numba", "stored")]:
            if b and by.get(peer):
                ratios[f"chromium-{form} / {peer[0]}-{peer[1]}"] = round(b / by[peer], 3)
    print(json.dumps({"benchmark": "browser", "model": "smollm2-135m", "prompt": PROMPT,
                      "decode_tokens": args.decode_tokens, "load_avg": os.getloadavg(), "results": results,
                      "decode_ratios": ratios, "goals": {"chromium f32 >= 8 tok/s": by.get(("chromium", "f32"), 0) >= 8,
                                                         "chromium int8 >= 5 tok/s": by.get(("chromium", "int8"), 0) >= 5}},
                     indent=2))


if __name__ == "__main__":
    main()
