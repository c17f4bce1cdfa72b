"""Prefill and decode speed, and peak memory, of edgert (and optionally llama.cpp) on real GGUFs.

    python benchmarks/decode.py [--models smollm2-135m qwen2.5-coder-0.5b qwen2.5-coder-1.5b]
                                [--threads 1 2] [--peer llama.cpp] [--prompt-tokens 256]
                                [--decode-tokens 64]

Prints one JSON object. Each (engine, model, threads) runs in its own process, so peak RSS
(VmHWM) and the thread count are its own. Models come from ../shared/models/fetch_models.py
and are converted once into ~/.cache/edgert/bench/. llama.cpp runs through llama-cpp-python
(benchmarks/setup_llamacpp.sh installs the pinned 0.3.36). Machines here are shared: compare
ratios from one run, not absolute figures across runs.

Per edgert result: decode and prefill tok/s; the memory-bandwidth bound on decode (read
bandwidth measured in the same process / weight bytes one decode step touches) and the
fraction of it reached; peak RSS against file + KV cache + 100 MB; time to first token of
a fresh process (``ttft_s``: imports, load, 8-token prompt, one token) with the Numba cache
warm, and once per model with an empty Numba cache (``cold_ttft_s``: compiling included).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

START = time.perf_counter()  # before edgert is imported: ttft_s counts imports and load
HERE = os.path.dirname(os.path.abspath(__file__))
FETCH = os.path.join(HERE, "..", "..", "shared", "models", "fetch_models.py")
TEXT = os.path.join(HERE, "..", "tests", "data", "english.txt")
BENCH_CACHE = os.path.expanduser("~/.cache/edgert/bench")


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def gguf_path(name: str) -> str:
    out = subprocess.run([sys.executable, FETCH, name], check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1].split(" ", 1)[1]


def edge_path(name: str, gguf: str, pure: bool = False) -> str:
    """The benchmark's conversion of `gguf` (made once; pure: every matrix 4-bit, convert --pure)."""
    from edgert.convert import convert

    os.makedirs(BENCH_CACHE, exist_ok=True)
    out = os.path.join(BENCH_CACHE, name + ("-pure" if pure else "") + ".edge")
    if not os.path.exists(out):
        convert(gguf, out, progress=False, pure=pure)
    return out


def prompt_ids(tokenize, n: int) -> list[int]:
    with open(TEXT, encoding="utf-8") as f:
        ids = tokenize(f.read())
    return (ids * (n // len(ids) + 1))[:n]


def read_bandwidth_gbs(threads: int, mb: int = 512) -> float:
    """Best-of-5 GB/s of a Numba parallel sum over `mb` MB (far beyond the caches)."""
    import numba
    import numpy as np

    @numba.njit(parallel=True, cache=False)
    def total(a):
        s = 0
        for i in numba.prange(a.size // 4096):
            s += a[i * 4096:(i + 1) * 4096].sum()
        return s

    numba.set_num_threads(threads)
    a = np.ones(mb << 17, np.int64)
    total(a[:8192])
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        total(a)
        best = min(best, time.perf_counter() - t0)
    return a.nbytes / best / 1e9


def weight_bytes_per_token(m) -> int:
    """Bytes of the weights one decode step reads: every tensor a linear or norm op names,
    once each (the embedding table only where it is also the output head)."""
    from edgert.format import tensor_nbytes

    names = {t for op in m.interpreter.program["ops"] if op["op"] != "embed" for t in op["w"].values()}
    return sum(tensor_nbytes(m.edge.dtype(t), m.edge.shape(t)) for t in names)


def run_edgert(name: str, threads: int, n_prompt: int, n_decode: int, activations: str = "int16") -> dict:
    import numpy as np

    import edgert

    path = edge_path(name, gguf_path(name))
    t0 = time.perf_counter()
    m = edgert.load(path, threads=threads, activations=activations)
    load_s = time.perf_counter() - t0
    ids = prompt_ids(m.tokenizer.encode, n_prompt)
    next(iter(m.generate(ids[:8], max_tokens=1, temperature=0.0, stop_at_eot=False)))
    ttft_s = time.perf_counter() - START
    list(m.generate(ids[:8], max_tokens=4, temperature=0.0, stop_at_eot=False))  # compile / warm up
    cache = m.new_cache()
    t0 = time.perf_counter()
    logits = m.prefill(ids, cache)
    prefill_s = time.perf_counter() - t0
    tok = int(np.argmax(logits))
    t0 = time.perf_counter()
    for _ in range(n_decode):
        tok = int(np.argmax(m.interpreter.step([tok], [cache.length], cache)[0]))
    decode_s = time.perf_counter() - t0
    rss = peak_rss_mb()
    c = m.config
    kv_mb = c["n_layers"] * 2 * c["n_kv_head"] * c["head_dim"] * 4 * (n_prompt + n_decode) / 1e6
    file_mb = os.path.getsize(path) / 1e6
    bw = read_bandwidth_gbs(threads)
    step_bytes = weight_bytes_per_token(m)
    bound = bw * 1e9 / step_bytes
    return {"engine": "edgert", "model": name, "threads": threads, "prefill_tok_s": n_prompt / prefill_s,
            "decode_tok_s": n_decode / decode_s, "load_s": load_s, "ttft_s": ttft_s,
            "read_bandwidth_gbs": bw, "weight_mb_per_token": step_bytes / 1e6, "bandwidth_bound_tok_s": bound,
            "decode_fraction_of_bound": n_decode / decode_s / bound,
            "file_mb": file_mb, "kv_cache_mb": kv_mb, "peak_rss_mb": rss, "rss_budget_mb": file_mb + kv_mb + 100}


def run_llamacpp(name: str, threads: int, n_prompt: int, n_decode: int) -> dict:
    from llama_cpp import Llama

    gguf = gguf_path(name)
    llm = Llama(gguf, n_threads=threads, n_threads_batch=threads, n_ctx=n_prompt + n_decode + 16,
                n_batch=n_prompt, verbose=False)
    ids = prompt_ids(lambda t: llm.tokenize(t.encode(), add_bos=False), n_prompt)
    llm.eval(ids[:8])
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    prefill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n_decode):
        llm.eval([llm.sample(temp=0.0)])
    decode_s = time.perf_counter() - t0
    return {"engine": "llama.cpp", "model": name, "threads": threads, "prefill_tok_s": n_prompt / prefill_s,
            "decode_tok_s": n_decode / decode_s, "file_mb": os.path.getsize(gguf) / 1e6,
            "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--peer", choices=["llama.cpp"], default=None)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--activations", nargs="+", choices=["int16", "int8"], default=["int16"],
                    help="edgert activation precisions to run (each its own row)")
    ap.add_argument("--one", nargs=3, metavar=("ENGINE", "MODEL", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        engine, model, threads = args.one
        if engine.startswith("edgert"):  # edgert:<activations>
            r = run_edgert(model, int(threads), args.prompt_tokens, args.decode_tokens, engine.split(":")[1])
            r["activations"] = engine.split(":")[1]
        else:
            r = run_llamacpp(model, int(threads), args.prompt_tokens, args.decode_tokens)
        print(json.dumps(r))
        return
    engines = [f"edgert:{a}" for a in args.activations] + ([args.peer] if args.peer else [])
    results = []

    def one(engine, model, threads, env=None):
        cmd = [sys.executable, __file__, "--one", engine, model, str(threads),
               "--prompt-tokens", str(args.prompt_tokens), "--decode-tokens", str(args.decode_tokens)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        return json.loads(out.strip().splitlines()[-1])

    for model in args.models:
        edge_path(model, gguf_path(model))  # fetch and convert here, not inside a measured process
        with tempfile.TemporaryDirectory() as empty:  # every kernel compiled from scratch
            cold = one(engines[0], model, args.threads[0], dict(os.environ, NUMBA_CACHE_DIR=empty))["ttft_s"]
        one(engines[0], model, args.threads[0])  # fills the Numba cache the measured runs use
        for threads in args.threads:
            for engine in engines:
                results.append(one(engine, model, threads))
                if engine.startswith("edgert"):
                    results[-1]["cold_ttft_s"] = cold
                print(json.dumps(results[-1]), file=sys.stderr)
    if args.peer:
        peer = {(r["model"], r["threads"]): r for r in results if r["engine"] == args.peer}
        for r in results:
            p = peer.get((r["model"], r["threads"]))
            if r["engine"] == "edgert" and p:
                r["decode_ratio_vs_peer"] = r["decode_tok_s"] / p["decode_tok_s"]
                r["prefill_ratio_vs_peer"] = r["prefill_tok_s"] / p["prefill_tok_s"]
    print(json.dumps({"benchmark": "decode", "load_avg": os.getloadavg(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
