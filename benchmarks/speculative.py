"""Speculative decoding against the target alone: token trees, a linear draft, model-free drafts.

    python benchmarks/speculative.py [--target qwen2.5-coder-1.5b] [--draft qwen2.5-coder-0.5b]
                                     [--threads 1] [--max-tokens 128] [--prompts 12]
                                     [--memory-budget 900MB] [--context N] [--modes tree linear lookup ...]

Prints one JSON object. Greedy decoding on fixed coding and chat prompts (the model's chat
template), each mode in its own process; every mode must produce the target's own tokens
(checked here, run by run). Per mode: mean speedup over the target alone at --threads (wall
time of generate, prefill included), tokens per verification step, acceptance rate, spine
tokens a pipelined draft had ready per step, time split between drafting and verifying,
peak RSS. Modes: tree, linear (width 1) -- a draft model, drafting ahead on a free core while
the target verifies when one is left beside --threads --; tree-inline, linear-inline (the
same, drafting only between verifications); lookup (no draft model); target-all-cores (the
target alone on every core: what a free core buys without drafting). Models
come from ../shared/models/fetch_models.py and are converted once into ~/.cache/edgert/bench/
(shared with benchmarks/decode.py). With --memory-budget the target streams its weights under
that budget: alone it has the whole budget, with a draft model the draft's file and KV cache
are set aside from it (the memory-limited setting, where one verification costs about the
same for 1 node as for a tree). The machine is shared: compare within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from decode import edge_path, gguf_path  # noqa: E402

PROMPTS = [
    "Write a Python function that checks whether a string is a palindrome.",
    "Implement binary search in Python and explain its complexity.",
    "Write a JavaScript function that debounces another function.",
    "Fix the bug: def mean(xs): return sum(xs) / len(xs) + 1",
    "Write a SQL query returning the ten customers with the highest total order value.",
    "Write a C function that reverses a linked list in place.",
    "Explain the difference between a process and a thread.",
    "What are three tips for writing readable code?",
    "Summarize what a hash table is in two sentences.",
    "Give me a short plan for learning Rust in a month.",
    "Why is the sky blue? Answer briefly.",
    "Write a haiku about compilers.",
]
MODES = {  # name -> edgert.load keyword arguments (beside the target's path and --threads)
    "tree": lambda draft: dict(draft=draft, tree_width=3, tree_depth=8),
    "linear": lambda draft: dict(draft=draft, tree_width=1, tree_depth=8),
    "tree-inline": lambda draft: dict(draft=draft, tree_width=3, tree_depth=8, pipeline=False),
    "linear-inline": lambda draft: dict(draft=draft, tree_width=1, tree_depth=8, pipeline=False),
    "lookup": lambda draft: dict(draft="lookup", tree_width=3, tree_depth=6),
    "target-all-cores": lambda draft: dict(threads=None),
}


def run_mode(mode: str, args) -> list[dict]:
    """Generate for every prompt with one mode ("target" = the target alone); per prompt the
    wall time, the tokens and the model's stats."""
    import edgert

    target_path = edge_path(args.target, gguf_path(args.target))
    budget = {"memory_budget": args.memory_budget} if args.memory_budget else {}
    kw = {"threads": args.threads, "activations": args.activations, "context": args.context, **budget}
    if mode != "target":
        kw.update(MODES[mode](edge_path(args.draft, gguf_path(args.draft), pure=args.draft_pure)))
        if args.tree_depth and mode != "lookup":
            kw["tree_depth"] = args.tree_depth
        if args.tree_width and mode.startswith("tree"):
            kw["tree_width"] = args.tree_width
    if kw["threads"] is None:  # all cores
        kw["threads"] = os.cpu_count()
    m = edgert.load(target_path, **kw)
    runs = []
    for prompt in PROMPTS[: args.prompts]:
        t0 = time.perf_counter()
        m.chat([{"role": "user", "content": prompt}], max_tokens=args.max_tokens, temperature=0.0)
        runs.append({"wall_s": time.perf_counter() - t0, "tokens": list(m.last_tokens), **m.stats})
        print(json.dumps({"mode": mode, "prompt": prompt, "wall_s": round(runs[-1]["wall_s"], 3)}), file=sys.stderr)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="qwen2.5-coder-1.5b")
    ap.add_argument("--draft", default="qwen2.5-coder-0.5b")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--prompts", type=int, default=len(PROMPTS))
    ap.add_argument("--modes", nargs="+", default=["tree", "linear", "lookup"], choices=list(MODES))
    ap.add_argument("--memory-budget", default=None, help="stream the target's weights within this budget")
    ap.add_argument("--draft-pure", action="store_true",
                    help="convert the draft with --pure (every matrix 4-bit: a smaller draft, more room for the target)")
    ap.add_argument("--context", type=int, help="KV cache length of every mode (default: edgert's, which under a "
                    "budget shrinks with a draft model's cache: pass one to compare like with like)")
    ap.add_argument("--tree-depth", type=int, help="draft depth of the model-drafter modes (default 8)")
    ap.add_argument("--tree-width", type=int, help="branching of the tree modes (default 3)")
    ap.add_argument("--activations", choices=["int16", "int8"], default="int16",
                    help="activation precision (both models)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_mode(args.one, args)))
        return
    edge_path(args.target, gguf_path(args.target))  # fetch and convert here, not inside a measured process
    edge_path(args.draft, gguf_path(args.draft), pure=args.draft_pure)
    runs = {}
    for mode in ["target", *args.modes]:  # each mode in its own process: its own memory and budget
        cmd = [sys.executable, __file__, "--one", mode] + [
            a for k, v in (("--target", args.target), ("--draft", args.draft), ("--threads", args.threads),
                           ("--max-tokens", args.max_tokens), ("--prompts", args.prompts),
                           ("--memory-budget", args.memory_budget), ("--context", args.context),
                           ("--activations", args.activations),
                           ("--tree-depth", args.tree_depth), ("--tree-width", args.tree_width))
            if v is not None for a in (k, str(v))] + ["--draft-pure"] * args.draft_pure
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        runs[mode] = json.loads(out.strip().splitlines()[-1])
    base = runs["target"]
    results = {"target": {"mean_tok_s": _mean([r["generated_tokens"] / r["wall_s"] for r in base]),
                          "peak_rss_mb": max(r.get("peak_rss_mb", 0) for r in base)}}
    for mode in args.modes:
        rs = runs[mode]
        results[mode] = {
            "identical_to_target": all(r["tokens"] == b["tokens"] for r, b in zip(rs, base)),
            "mean_speedup": _mean([b["wall_s"] / r["wall_s"] for r, b in zip(rs, base)]),
            "mean_tok_s": _mean([r["generated_tokens"] / r["wall_s"] for r in rs]),
            "peak_rss_mb": max(r.get("peak_rss_mb", 0) for r in rs),
        }
        if "verify_steps" in rs[0]:
            results[mode].update(
                tokens_per_step=_mean([r["tokens_per_step"] for r in rs]),
                acceptance_rate=_mean([r["acceptance_rate"] for r in rs]),
                lookahead_hits_per_step=sum(r["lookahead_hits"] for r in rs) / sum(r["verify_steps"] for r in rs),
                draft_share=sum(r["draft_s"] for r in rs) / sum(r["draft_s"] + r["verify_s"] for r in rs))
    print(json.dumps({"benchmark": "speculative", "target": args.target, "draft": args.draft,
                      "threads": args.threads, "max_tokens": args.max_tokens, "prompts": args.prompts,
                      "draft_pure": args.draft_pure, "memory_budget": args.memory_budget, "context": args.context, "activations": args.activations,
                      "tree_depth": args.tree_depth, "tree_width": args.tree_width,
                      "load_avg": os.getloadavg(), "results": results},
                     indent=2))


def _mean(xs) -> float:
    return sum(xs) / len(xs) if xs else 0.0


if __name__ == "__main__":
    main()
