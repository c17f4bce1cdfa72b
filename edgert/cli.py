"""The `edgert` command: run, convert, info, perplexity, pull, web build."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading

from .errors import EdgeError


def _model_path(arg: str | None) -> str:
    if arg:
        return arg
    from .pull import pull

    return pull()


def _load(args):
    from . import load

    draft = {}
    if getattr(args, "draft", None):
        draft = dict(draft=args.draft, tree_width=args.tree_width, tree_depth=args.tree_depth,
                     pipeline=False if args.no_pipeline else None)
    if getattr(args, "memory_budget", None):
        draft["memory_budget"] = args.memory_budget
    return load(_model_path(args.model), threads=args.threads, backend=args.backend, context=args.ctx,
                activations=args.activations, **draft)


def _is_cnn(path) -> bool:
    from .format import EdgeFile

    return bool(path) and os.path.isfile(path) and EdgeFile(path).header.get("kind") == "cnn"


@contextlib.contextmanager
def _notice_after(seconds: float, message: str):
    """Print message to stderr if the with-block is still running after `seconds`."""
    timer = threading.Timer(seconds, lambda: print(message, file=sys.stderr, flush=True))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def cmd_run_cnn(args) -> int:
    """run MODEL --image FILE [--top K] for converted ONNX classifiers."""
    from . import load

    if not args.model:
        raise EdgeError("--image needs a converted CNN model: edgert run MODEL.edge --image FILE")
    if not args.image:
        raise EdgeError(f"{args.model} is an image model: give an image with --image FILE")
    m = load(args.model, threads=args.threads, backend=args.backend)
    with _notice_after(3.0, "compiling the convolution kernels (first use only: about half a minute, then cached)..."):
        top = m.classify(args.image, top=args.top)
    for label, p in top:
        print(f"{p:8.4f}  {label}")
    return 0


def cmd_run(args) -> int:
    if args.image or _is_cnn(args.model):
        return cmd_run_cnn(args)
    if args.prompt is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise EdgeError("give a prompt with --prompt \"...\" (or pipe one on standard input)")
        args.prompt = sys.stdin.read()
    m = _load(args)
    kw = dict(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
              seed=args.seed)
    if args.chat:
        pieces = m.chat([{"role": "user", "content": args.prompt}], stream=True, **kw)
    else:
        pieces = m.generate(args.prompt, **kw)
    if not args.chat:
        sys.stdout.write(args.prompt)
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    s = m.stats
    print(f"prefill {s['prefill_tok_s']:.1f} tok/s ({s['prompt_tokens']} tokens) · "
          f"decode {s['decode_tok_s']:.1f} tok/s ({s['generated_tokens']} tokens, stop: {s['stop']})",
          file=sys.stderr)
    if "verify_steps" in s:
        print(f"speculative: {s['tokens_per_step']:.2f} tokens per verification ({s['verify_steps']} steps), "
              f"{100 * s['acceptance_rate']:.0f}% of {s['drafted_tokens']} drafted tokens accepted, "
              f"drafting {s['draft_s']:.2f} s · verifying {s['verify_s']:.2f} s"
              + (f" · {s['lookahead_hits']} drafted ahead" if s.get("lookahead_hits") else ""), file=sys.stderr)
    if m.plan is not None:
        per_tok = s.get("read_bytes_per_token")
        print(f"memory budget {m.plan.budget / 2**20:.0f} MB: peak memory {s['peak_rss_mb']:.0f} MB · read from storage "
              + (f"{per_tok / 2**20:.1f} MB per token" if per_tok is not None else "nothing while decoding"),
              file=sys.stderr)
    return 0


def cmd_convert(args) -> int:
    from .convert import convert

    out = args.output or os.path.splitext(args.source)[0] + ".edge"
    onnx_options = {}
    if args.source.lower().endswith(".onnx"):
        pre = {k: v for k, v in (("mean", args.mean), ("std", args.std)) if v is not None}
        onnx_options = dict(prune=args.prune, labels=args.labels, preprocess=pre or None, calibration=args.calibrate)
    elif args.prune or args.labels or args.mean or args.std or args.calibrate:
        raise EdgeError("--prune, --calibrate, --labels, --mean and --std apply to .onnx sources")
    if args.bundle_ffn != (args.sparsify is not None):
        raise EdgeError("sparse windowing needs both --bundle-ffn and --sparsify S (e.g. --sparsify 0.3)")
    if args.sparsify is not None:
        onnx_options["sparsify"] = args.sparsify
    summary = convert(args.source, out, quant=args.quant, force=args.force, pure=args.pure, **onnx_options)
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(summary["tensors"].items()))
    print(f"wrote {out}: {summary['bytes'] / 1e6:.1f} MB, {summary['arch']}, tensors: {kinds}", file=sys.stderr)
    return 0


def cmd_info(args) -> int:
    from .format import EdgeFile

    edge = EdgeFile(args.model)
    h = edge.header
    dtypes: dict = {}
    for t in h["tensors"].values():
        dtypes[t["dtype"]] = dtypes.get(t["dtype"], 0) + 1
    info = {"path": args.model, "file_mb": round(edge.size / 1e6, 2), "kind": h.get("kind"),
            "config": h.get("config"), "tensors": len(h["tensors"]), "tensor_dtypes": dtypes,
            "ops": len(h.get("program", {}).get("ops", [])), "source": h.get("source", {})}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    c = info["config"] or {}
    print(f"{info['path']}: {info['file_mb']} MB, {info['kind']} model")
    if c and info["kind"] == "llm":
        print(f"  architecture  {c.get('arch')}: {c.get('n_layers')} layers, d_model {c.get('d_model')}, "
              f"d_ff {c.get('d_ff')}, heads {c.get('n_head')} (kv {c.get('n_kv_head')}) x {c.get('head_dim')}, "
              f"vocab {c.get('vocab_size')}, context {c.get('context_length')}")
    elif c:
        shapes = {name: spec["shape"] for name, spec in h.get("program", {}).get("inputs", {}).items()}
        labels = c.get("labels")
        print(f"  graph         {c.get('arch')}: inputs {shapes}, outputs {c.get('outputs')}, "
              f"{len(labels) if labels else 'no'} labels, pruned {c.get('prune', 0):.0%}")
        if c.get("preprocess"):
            print("  preprocess    " + ", ".join(f"{k}={v}" for k, v in c["preprocess"].items()))
    print(f"  tensors       {info['tensors']}: " + ", ".join(f"{n} {k}" for k, n in sorted(dtypes.items())))
    print(f"  ops           {info['ops']}")
    if info["source"]:
        print("  source        " + ", ".join(f"{k}={v}" for k, v in info["source"].items()))
    return 0


def cmd_perplexity(args) -> int:
    import numpy as np

    m = _load(args)
    try:
        with open(args.file, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise EdgeError(f"cannot read {args.file}: {e.strerror or e}") from None
    ids = m.tokenizer.encode(text)
    if len(ids) < 2:
        raise EdgeError(f"{args.file} holds fewer than 2 tokens")
    window = m.context
    nll, count = 0.0, 0
    for s in range(0, len(ids) - 1, window):
        chunk = ids[s:s + window]
        if len(chunk) < 2:
            break
        ppl = m.perplexity(chunk)
        nll += np.log(ppl) * (len(chunk) - 1)
        count += len(chunk) - 1
    print(f"perplexity {np.exp(nll / count):.4f} over {count} predicted tokens (window {window})")
    return 0


def cmd_pull(args) -> int:
    from .pull import pull

    print(pull(args.name, force=args.force))
    return 0


def cmd_web_build(args) -> int:
    from .web.build import build_site

    cfg = build_site(args.output, models=args.model, pyodide_url=args.pyodide_url, pyodide_dir=args.pyodide_dir,
                     force=args.force)
    names = ", ".join(m["name"] for m in cfg["models"]) or "none (the page opens .edge files from disk)"
    print(f"wrote {args.output}: models {names}; Pyodide from {cfg['pyodide']}\n"
          f"serve it with: python -m http.server -d {args.output} 8000", file=sys.stderr)
    return 0


def _floats(text):
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    return vals * 3 if len(vals) == 1 else vals


def _add_runtime_options(p):
    p.add_argument("--threads", type=int, default=None, help="compute threads (default: all cores but one, at least 1)")
    p.add_argument("--ctx", type=int, default=None, help="context length in tokens (default: the model's, at most 8192)")
    p.add_argument("--backend", choices=["jit", "ref"], default=None,
                   help="kernels: jit (Numba, default) or ref (NumPy twins)")
    p.add_argument("--activations", choices=["int16", "int8"], default="int16",
                   help="language models: precision of the quantized products' inputs: int16 (default, follows "
                        "the float model token for token) or int8 (llama.cpp's precision and drift: faster "
                        "products, 1.1-1.3x faster decode here)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edgert", description="Run trained models on CPUs and in the browser.")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="generate text (no model: the default SmolLM2-135M-Instruct, fetched once)")
    p.add_argument("model", nargs="?", help=".edge file (default: fetch and convert SmolLM2-135M-Instruct)")
    p.add_argument("-p", "--prompt", help="prompt text (default: read standard input)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("-n", "--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default 0.7)")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--draft", metavar="EDGE|lookup",
                   help="speculative decoding: a smaller model with the same tokenizer drafts token trees, or "
                        "'lookup' drafts from the text so far (no second model); output is the model's own")
    p.add_argument("--tree-width", type=int, default=3, help="draft tree: alternatives per node (default 3)")
    p.add_argument("--tree-depth", type=int, default=8, help="draft tree: longest path (default 8)")
    p.add_argument("--no-pipeline", action="store_true",
                   help="draft only between verifications (default: a draft model drafts ahead on a free core "
                        "while the model verifies, when --threads leaves one)")
    p.add_argument("--memory-budget", metavar="SIZE",
                   help="run within SIZE of memory (e.g. 400MB, 1.5GB) for the whole process: weights that do "
                        "not fit stream from storage each token; prints the bytes read per token and peak memory")
    p.add_argument("--image", help="CNN models: classify this image file")
    p.add_argument("--top", type=int, default=5, help="CNN models: how many classes to print (default 5)")
    _add_runtime_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("convert", help="convert a GGUF model or an ONNX graph to .edge")
    p.add_argument("source")
    p.add_argument("-o", "--output", help="output .edge path (default: beside the source)")
    p.add_argument("--quant", default="q4_1", choices=["q4_0", "q4_1", "q8_0"],
                   help="format for tensors edgert does not run natively; with q4_0/q4_1 the attention, "
                        "ffn_up/ffn_down and output weights get q8_0 (kept formats are lossless)")
    p.add_argument("--pure", action="store_true",
                   help="GGUF: every matrix in --quant, the q8_0 roles too (smaller and less accurate: "
                        "for a draft model under a memory budget)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--bundle-ffn", action="store_true",
                   help="GGUF: store each FFN neuron's up row and down column together (sparse windowing; "
                        "with --sparsify)")
    p.add_argument("--sparsify", type=float, default=None, metavar="S",
                   help="GGUF: target activation sparsity (0..1) with per-layer thresholds calibrated on "
                        "English text; reading and computing skip inactive FFN neurons (quality cost: "
                        "Qwen2.5-Coder-1.5B perplexity +6%% at 0.3, +33%% at 0.5)")
    p.add_argument("--prune", type=float, default=0.0, metavar="S",
                   help="ONNX: zero this fraction (0..1) of the 4x1 weight groups of every 1x1/im2col conv and "
                        "dense head, least salient first, and refit the rest on the calibration images")
    p.add_argument("--calibrate", nargs="+", metavar="IMAGE",
                   help="ONNX with --prune: images whose activations choose the groups and refit the weights "
                        "(default: random inputs)")
    p.add_argument("--labels", help="ONNX: class names, one per line (else the model's metadata, if any)")
    p.add_argument("--mean", type=_floats, help="ONNX: input mean per channel on the 0..255 scale, e.g. 127,127,127")
    p.add_argument("--std", type=_floats, help="ONNX: input std per channel on the 0..255 scale, e.g. 128,128,128")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("info", help="describe an .edge file")
    p.add_argument("model")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("perplexity", help="perplexity of a text file")
    p.add_argument("model", nargs="?")
    p.add_argument("-f", "--file", required=True)
    _add_runtime_options(p)
    p.set_defaults(func=cmd_perplexity)

    p = sub.add_parser("pull", help="fetch and convert a catalogue model into the cache")
    p.add_argument("name", nargs="?", default="smollm2-135m")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("web", help="the browser build: a static site running edgert under Pyodide")
    web = p.add_subparsers(dest="web_command", required=True)
    p = web.add_parser("build", help="write the demo site (page, worker, edgert wheel, models) into a folder")
    p.add_argument("--model", action="append", default=[], metavar="EDGE",
                   help=".edge model to bundle (repeatable; none: the page opens .edge files from disk)")
    p.add_argument("-o", "--output", required=True, help="folder to write (must be empty unless --force)")
    p.add_argument("--pyodide-url", help="where the page loads Pyodide 0.27.7 from (default: the public CDN)")
    p.add_argument("--pyodide-dir", help="a local Pyodide 0.27.7 copy with numpy to copy into the site (offline use)")
    p.add_argument("--force", action="store_true", help="write into a non-empty folder")
    p.set_defaults(func=cmd_web_build)
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except EdgeError as e:
        print(f"edgert: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edgert: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not bad input: one line unless --debug
        if args.debug:
            raise
        print(f"edgert: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
