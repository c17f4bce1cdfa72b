"""The embedded Python API: a loaded .edge language model.

    m = edgert.load("smollm2.edge")
    for piece in m.generate("Hello", max_tokens=32, temperature=0.0): print(piece, end="")
    m.chat([{"role": "user", "content": "Hi"}])
    ids = m.tokenizer.encode("text"); m.tokenizer.decode(ids)
    logits = m.logits(ids)            # float32 [len(ids), vocab], teacher-forced
"""
from __future__ import annotations

import time
from typing import Iterator

import numpy as np

from . import chat as chat_template
from . import kernels, speculative
from .budget import (MB, arena_bytes, budget_context, kv_bytes, parse_size, peak_rss, plan_memory, rows_only,
                     rss_now)
from .errors import EdgeError
from .format import EdgeFile, tensor_nbytes
from .interpreter import Interpreter
from .kvcache import KVCache
from .sampling import Sampler
from .tokenizer import Tokenizer

PREFILL_CHUNK = 256
DEFAULT_CONTEXT = 8192


class Model:
    """A language model from an .edge file.

    threads: compute threads (default: all cores but one); backend: "jit" (Numba) or "ref" (NumPy
    twins), default jit when Numba is installed; context: KV cache length in tokens (default
    the model's, at most 8192; memory is committed only as positions fill); weights: None keeps
    quantized weights as stored, "f32" expands them once at load to float32 (the fastest form
    for NumPy without Numba, e.g. in the browser; 4-8x the memory), "int8" to int8 per row.
    memory_budget: bytes (or "400MB", "1.5GB") the whole process may hold; weights that do not
    fit are streamed from storage (edgert.budget plans it, edgert.weightstore reads); the
    default context then shrinks to what the budget allows. A budget too small raises EdgeError.
    draft: speculative decoding (see set_draft) with trees of up to tree_width alternatives
    per node and tree_depth levels; under a memory budget a draft model's share is set aside.
    pipeline: a draft model drafts ahead on a core of its own while the target verifies
    (default: when a core is left beside the target's threads).
    activations: "int16" (default: follows the float model token for token) or "int8"
    (llama.cpp's activation precision: about 2x faster quantized products, a small drift).
    """

    def __init__(self, path: str, threads: int | None = None, backend: str | None = None,
                 context: int | None = None, weights: str | None = None, draft=None,
                 tree_width: int = 3, tree_depth: int = 8, memory_budget=None, pipeline: bool | None = None,
                 activations: str = "int16"):
        self.path = str(path)
        self.edge = EdgeFile(self.path)
        h = self.edge.header
        if h.get("kind") != "llm":
            raise EdgeError(f"{self.path} holds a {h.get('kind')!r} model, not a language model")
        try:
            self.config = h["config"]
            self.tokenizer = Tokenizer.from_dict(h["tokenizer"])
            # it holds the vocabulary compactly; the header's lists of token and merge strings go
            h["tokenizer"] = {k: v for k, v in h["tokenizer"].items() if k not in ("tokens", "merges")}
            program = h["program"]
        except (KeyError, TypeError, ValueError) as e:
            raise EdgeError(f"{self.path} is corrupt: bad model header ({e!r})") from None
        self.chat_template = h.get("chat_template")
        self.threads = threads or kernels.default_threads()
        kernels.set_threads(self.threads)
        if "sparse_ffn" in h:  # sparse neuron windowing (convert --sparsify): registers its op
            from . import sparse_ffn  # noqa: F401
        self.store, self.plan = None, None
        self.prefill_chunk = self.score_chunk = PREFILL_CHUNK
        if memory_budget is not None:
            from .weightstore import WeightStore

            jit = kernels.load(backend).__name__.endswith(".jit")
            budget = parse_size(memory_budget)
            draft_edge = _draft_edge(draft)
            if context is None:  # the draft's KV cache shares the context, so it shares the default's room
                context = budget_context([self.config] + ([draft_edge.header["config"]] if draft_edge else []), budget)
            reserve = _draft_reserve(draft_edge, context)  # a draft model stays resident
            if draft is not None:  # and a verification step of up to a full tree, all rows out (the
                nodes = _tree_nodes(tree_width, tree_depth)  # interpreter keeps one: wide_kept below)
                reserve += arena_bytes(program, {"n": nodes, "m": nodes})
            self.plan = plan_memory(h, budget, rss_now() + reserve, jit=jit, context=context,
                                    sparse=h.get("sparse_ffn"))
            context, self.prefill_chunk, self.score_chunk = (self.plan.context, self.plan.prefill_chunk,
                                                             self.plan.score_chunk)
            self.store = WeightStore(self.edge, self.plan)
        self.interpreter = Interpreter(program, self.edge, backend, weights=weights, store=self.store,
                                       activations=activations)
        if self.store is not None:  # trees of many sizes: one wide step at a time (rebinding one costs
            self.interpreter.wide_kept = 1  # ~5 ms against a verification's ~1 s of reading)
        limit = int(self.config["context_length"])
        self.context = min(context or min(limit, DEFAULT_CONTEXT), limit)
        self.stats: dict = {}
        self._threads, self._backend, self._activations = threads, backend, activations
        self.set_draft(draft, tree_width, tree_depth, pipeline)

    def set_draft(self, draft=None, tree_width: int = 3, tree_depth: int = 8, pipeline: bool | None = None) -> None:
        """Speculative decoding from now on with `draft`: "lookup" (no second model), a draft
        model (path or Model with the same tokenizer), or None for plain decoding. pipeline:
        see the class docstring (None: when kernels.cores() exceeds the target's threads)."""
        if draft is None:
            self.drafter = None
            return
        if tree_width < 1 or tree_depth < 1:
            raise EdgeError("tree width and depth must be >= 1")
        budget = _tree_nodes(tree_width, tree_depth)
        if draft == "lookup":
            self.drafter = speculative.LookupDrafter(width=tree_width, depth=tree_depth, budget=budget)
            return
        small = draft if isinstance(draft, Model) else Model(draft, threads=self._threads, backend=self._backend,
                                                             context=self.context, activations=self._activations)
        speculative.check_pair(self, small)
        if pipeline is None:
            pipeline = kernels.cores() > self.threads
        self.drafter = speculative.ModelDrafter(small, width=tree_width, depth=tree_depth, budget=budget,
                                                pipeline=pipeline)

    def new_cache(self) -> KVCache:
        c = self.config
        return KVCache(c["n_layers"], c["n_kv_head"], c["head_dim"], self.context)

    def _check_ids(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.config["vocab_size"]):
            raise EdgeError(f"token ids must lie in [0, {self.config['vocab_size']})")
        if ids.size > self.context:
            raise EdgeError(f"input is {ids.size} tokens; the context holds {self.context} "
                            f"(the model allows up to {self.config['context_length']}: pass a larger context)")
        return ids

    def logits(self, ids) -> np.ndarray:
        """Teacher-forced logits: float32 [len(ids), vocab]; row i predicts token i + 1."""
        ids = self._check_ids(ids)
        cache = self.new_cache()
        out = np.empty((ids.size, self.config["vocab_size"]), np.float32)
        for s in range(0, ids.size, self.score_chunk):
            e = min(s + self.score_chunk, ids.size)
            out[s:e] = self.interpreter.step(ids[s:e], np.arange(s, e), cache, rows="all")
        return out

    def prefill(self, ids, cache: KVCache) -> np.ndarray:
        """Feed ids after what the cache holds; returns the last position's logits [vocab]."""
        ids = self._check_ids(ids)
        if cache.length + ids.size > cache.capacity:
            raise EdgeError(f"prompt of {ids.size} tokens does not fit: the context holds {cache.capacity}")
        for s in range(0, ids.size, self.prefill_chunk):
            chunk = ids[s:s + self.prefill_chunk]
            start = cache.length
            logits = self.interpreter.step(chunk, np.arange(start, start + chunk.size), cache, rows="last")
        return logits[0].copy()

    def generate(self, prompt, max_tokens: int = 256, temperature: float = 0.7, top_k: int = 40,
                 top_p: float = 0.95, seed: int | None = None, stop_at_eot: bool = True) -> Iterator[str]:
        """Stream the continuation of `prompt` (text, or a list of token ids) as text pieces.

        temperature 0 is greedy decoding. Stops at the model's end-of-turn token (unless
        stop_at_eot is False), after max_tokens, or when the context is full. Timings land in
        self.stats (prefill/decode tokens, seconds and tok/s).
        """
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise EdgeError("empty prompt")
        ids = self._check_ids(ids)
        if ids.size >= self.context:
            raise EdgeError(f"prompt is {ids.size} tokens; the context holds {self.context}, "
                            "leaving no room to generate")
        sampler = Sampler(temperature, top_k, top_p, seed)
        return self._generate(ids, max_tokens, sampler, stop_at_eot)

    def _generate(self, ids, max_tokens, sampler, stop_at_eot) -> Iterator[str]:
        self.stats = stats = {"prompt_tokens": int(ids.size), "generated_tokens": 0, "stop": "max_tokens"}
        self.last_tokens = tokens = []
        eot = self.tokenizer.eot_ids if stop_at_eot else frozenset()
        if self.drafter is None:
            source = self._decode_tokens(ids, max_tokens, sampler, eot, stats)
        else:
            source = speculative.generate_tokens(self, self.drafter, ids, max_tokens, sampler, eot, stats)
        stream = self.tokenizer.stream()
        t0 = time.perf_counter()
        try:
            for tok in source:
                tokens.append(tok)
                piece = stream.push(tok)
                if piece:
                    yield piece
            tail = stream.flush()
            if tail:
                yield tail
        finally:
            n = len(tokens)
            decode_s = time.perf_counter() - t0 - stats.get("prefill_s", 0.0)
            steps = n - 1 if self.drafter is None else n  # plain decoding gets its first token from the prefill
            stats.update(generated_tokens=n, decode_s=decode_s,
                         prefill_tok_s=ids.size / max(stats.get("prefill_s", 0.0), 1e-9),
                         decode_tok_s=steps / max(decode_s, 1e-9) if steps > 0 else 0.0,
                         peak_rss_mb=peak_rss() / MB)
            if self.store is not None and n > 0:  # plain decoding: n steps after the prefill (the last one's logits unused)
                stats["read_bytes_per_token"] = (self.store.bytes_read - stats.get("read_bytes_prefill", 0)) / n

    def _decode_tokens(self, ids, max_tokens, sampler, eot, stats) -> Iterator[int]:
        """Plain decoding: one target step per token."""
        cache = self.new_cache()
        t0 = time.perf_counter()
        logits = self.prefill(ids, cache)
        stats["prefill_s"] = time.perf_counter() - t0
        if self.store is not None:
            stats["read_bytes_prefill"] = self.store.bytes_read
        for _ in range(max_tokens):
            tok = sampler(logits)
            if tok in eot:
                stats["stop"] = "end_of_turn"
                return
            yield tok
            if cache.length >= cache.capacity:
                stats["stop"] = "context_full"
                return
            logits = self.interpreter.step([tok], [cache.length], cache)[0]

    def chat(self, messages: list[dict], stream: bool = False, **kwargs):
        """Reply to a conversation rendered with the model's chat template.

        Returns the reply text, or with stream=True an iterator of text pieces. kwargs go to
        generate() (max_tokens, temperature, top_k, top_p, seed).
        """
        tok = self.tokenizer
        prompt = chat_template.render(self.chat_template, messages,
                                      bos_token=tok.token_text(tok.bos_id) if tok.bos_id is not None else "",
                                      eos_token=tok.token_text(tok.eos_id) if tok.eos_id is not None else "")
        pieces = self.generate(tok.encode(prompt, add_bos=False), **kwargs)
        return pieces if stream else "".join(pieces)

    def perplexity(self, ids) -> float:
        """exp(mean negative log-likelihood) of ids[1:] given the preceding tokens."""
        ids = self._check_ids(ids)
        if ids.size < 2:
            raise EdgeError("perplexity needs at least 2 tokens")
        logits = self.logits(ids)[:-1].astype(np.float64)
        mx = logits.max(axis=1, keepdims=True)
        logz = np.log(np.exp(logits - mx).sum(axis=1)) + mx[:, 0]
        nll = logz - logits[np.arange(ids.size - 1), ids[1:]]
        return float(np.exp(nll.mean()))


def _draft_edge(draft) -> EdgeFile | None:
    """The .edge file of a draft model (a path or a Model); None for no draft or lookup drafts."""
    if draft is None or draft == "lookup":
        return None
    edge = draft.edge if isinstance(draft, Model) else EdgeFile(str(draft))
    if edge.header.get("kind") != "llm" or "config" not in edge.header:
        raise EdgeError(f"the draft {edge.path} is not a language model")
    return edge


def _draft_reserve(edge: EdgeFile | None, context: int) -> int:
    """Bytes a draft model (its .edge file, or None) will hold resident beside a target under a
    memory budget: its file (all weights are read every draft step) but for an embedding table
    that only lookups read (a few rows), and its KV cache of `context` tokens (at most the
    draft's own context length)."""
    if edge is None:
        return 0
    h = edge.header
    c = h["config"]
    rows = sum(tensor_nbytes(h["tensors"][n]["dtype"], h["tensors"][n]["shape"]) for n in rows_only(h["program"]))
    return edge.size - rows + kv_bytes(c, min(context, int(c.get("context_length", context))))


def _tree_nodes(width: int, depth: int) -> int:
    """Most nodes a drafted tree may have (the pending token included)."""
    return max(width * depth, depth + 1)
