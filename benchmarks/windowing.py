"""Models larger than their memory: dense layer streaming, sparse neuron windowing and naive
loading side by side, in one run, on Qwen2.5-Coder-1.5B (a 1.3 GB .edge file).

    python benchmarks/windowing.py [--budget 400MB] [--tokens 16] [--sparsity 0.5] [--modes dense sparse naive]

Prints one JSON object: per mode the budget, peak RSS (VmHWM of its own process), bytes read
from storage per decoded token, decode tok/s, greedy agreement with the unconstrained dense
run, and the perplexity of the model file on a fixed text (tests/data/english.txt, first
--ppl-tokens tokens; computed without a budget: streaming does not change the numbers, see
tests/test_weightstore.py). Ratios against naive loading at the end.

Modes (each in a fresh process, the file's pages evicted from the page cache before it starts):
- naive:  every weight but norms and biases read from storage for every token, one layer's
          worth at a time, synchronously before it computes (no prefetch, nothing resident);
          embedding rows only, as in the other modes.
- dense:  `memory_budget=` on the dense file: the cost model keeps what fits resident and
          streams the rest through prefetched slots.
- sparse: `memory_budget=` on the file made by `edgert convert ... --bundle-ffn --sparsify S`
          (here: convert.sparsify on the dense file): FFN neurons read only when active and
          not already cached.
Models are converted once into ~/.cache/edgert/bench/. Machines here are shared: compare
ratios within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
TEXT = os.path.join(HERE, "..", "tests", "data", "english.txt")
PROMPT = "def merge_sort(items):\n    \"\"\"Sort a list with merge sort.\"\"\"\n"
MODEL = "qwen2.5-coder-1.5b"


def evict(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def child(mode: str, path: str, budget: str, tokens: int) -> dict:
    import edgert
    from edgert.budget import MB, Plan, parse_size, peak_rss, plan_memory, rss_now, weight_order
    from edgert.interpreter import Interpreter
    from edgert.weightstore import WeightStore

    if mode == "naive":
        m = edgert.load(path, threads=1, context=512)
        h = m.edge.header
        plan = plan_memory(h, parse_size(budget), rss_now(), context=512)  # same context and chunks as dense
        tensors = h["tensors"]
        big = [n for n in weight_order(h["program"]) if len(tensors[n]["shape"]) == 2 and n != "token_embd.weight"]
        layer = max(sum(_nbytes(tensors[n]) for n in big if n.startswith(f"blk.{i}."))
                    for i in range(h["config"]["n_layers"]))
        naive = Plan(budget=plan.budget, context=512, prefill_chunk=plan.prefill_chunk, score_chunk=plan.score_chunk,
                     resident=[n for n in tensors if n not in big and n != "token_embd.weight"],
                     stream=big, slots=1, slot_bytes=layer + 4096)
        m.store, m.plan = WeightStore(m.edge, naive, prefetch=False), naive
        m.prefill_chunk = plan.prefill_chunk
        m.interpreter = Interpreter(h["program"], m.edge, None, store=m.store)
    else:
        m = edgert.load(path, threads=1, memory_budget=budget, context=512)
    t0 = time.perf_counter()
    text = "".join(m.generate(PROMPT, max_tokens=tokens, temperature=0, stop_at_eot=False))
    s = m.stats
    return {"mode": mode, "file": os.path.basename(path), "budget_mb": parse_size(budget) / MB,
            "peak_rss_mb": round(peak_rss() / MB, 1), "read_mb_per_token": round(s["read_bytes_per_token"] / MB, 1),
            "decode_tok_s": round(s["decode_tok_s"], 3), "prefill_s": round(s["prefill_s"], 2),
            "wall_s": round(time.perf_counter() - t0, 1), "tokens": m.last_tokens, "text": text,
            "slots": m.plan.slots, "slot_mb": round(m.plan.slot_bytes / MB, 1),
            "resident_mb": round(m.plan.estimate.get("resident_weights", 0) / MB, 1) if m.plan.estimate else 0.0,
            "neuron_cache_mb": round(m.plan.estimate.get("neuron_cache", 0) / MB, 1) if m.plan.estimate else 0.0}


def _nbytes(t) -> int:
    from edgert.format import tensor_nbytes

    return tensor_nbytes(t["dtype"], t["shape"])


def quality(dense: str, sparse: str | None, n_tokens: int) -> dict:
    """Perplexity of each file on the text, and top-1 agreement of the sparse model's
    next-token predictions with the dense model's (teacher-forced, no budget)."""
    import edgert

    d = edgert.load(dense, threads=1, context=n_tokens + 8)
    with open(TEXT, encoding="utf-8") as f:
        ids = d.tokenizer.encode(f.read())[:n_tokens]
    dl = d.logits(ids)
    out = {"ppl_tokens": len(ids), "dense_ppl": round(d.perplexity(ids), 4)}
    if sparse:
        s = edgert.load(sparse, threads=1, context=n_tokens + 8)
        sl = s.logits(ids)
        out["sparse_ppl"] = round(s.perplexity(ids), 4)
        out["sparse_ppl_change"] = round(out["sparse_ppl"] / out["dense_ppl"] - 1, 4)
        out["top1_agreement"] = round(float((sl.argmax(1) == dl.argmax(1)).mean()), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", default="400MB")
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--ppl-tokens", type=int, default=256)
    ap.add_argument("--modes", nargs="+", default=["naive", "dense", "sparse"])
    ap.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--quality", nargs="+", metavar="PATH", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.budget, args.tokens)))
        return
    if args.quality:
        print(json.dumps(quality(args.quality[0], args.quality[1] if len(args.quality) > 1 else None, args.ppl_tokens)))
        return

    from decode import edge_path, gguf_path

    dense = edge_path(MODEL, gguf_path(MODEL))
    sparse = None
    if "sparse" in args.modes:
        from edgert.convert.sparsify import sparsify_edge

        sparse = dense.replace(".edge", f"-sparse{int(round(100 * args.sparsity))}.edge")
        if not os.path.exists(sparse):
            sparsify_edge(dense, sparse, args.sparsity, progress=False)
    paths = {"naive": dense, "dense": dense, "sparse": sparse}
    results = {}
    for mode in args.modes:
        evict(paths[mode])
        r = subprocess.run([sys.executable, __file__, "--budget", args.budget, "--tokens", str(args.tokens),
                            "--child", mode, paths[mode]], capture_output=True, text=True)
        if r.returncode:
            results[mode] = {"error": r.stderr.strip()[-1500:]}
            continue
        results[mode] = json.loads(r.stdout.strip().splitlines()[-1])
    q = subprocess.run([sys.executable, __file__, "--ppl-tokens", str(args.ppl_tokens), "--quality", dense]
                       + ([sparse] if sparse else []), capture_output=True, text=True)
    qual = json.loads(q.stdout.strip().splitlines()[-1]) if q.returncode == 0 else {"error": q.stderr[-1500:]}
    ref = results.get("dense", {}).get("tokens")
    for mode, r in results.items():
        if "error" in r:
            continue
        toks = r.pop("tokens")
        r["greedy_same_as_dense"] = ref is not None and toks == ref
        r["greedy_prefix_agreement"] = (next((i for i, (a, b) in enumerate(zip(toks, ref)) if a != b),
                                             min(len(toks), len(ref))) if ref else None)
        r["perplexity"] = qual.get("sparse_ppl" if mode == "sparse" else "dense_ppl")
    summary = {"model": MODEL, "budget": args.budget, "decode_tokens": args.tokens, "modes": results, "quality": qual}
    naive = results.get("naive", {})
    for mode in ("dense", "sparse"):
        r = results.get(mode, {})
        if "decode_tok_s" in r and "decode_tok_s" in naive:
            summary[f"{mode}_speedup_vs_naive"] = round(r["decode_tok_s"] / naive["decode_tok_s"], 2)
    if "read_mb_per_token" in results.get("sparse", {}) and "read_mb_per_token" in results.get("dense", {}):
        summary["dense_over_sparse_read_bytes"] = round(
            results["dense"]["read_mb_per_token"] / results["sparse"]["read_mb_per_token"], 2)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
