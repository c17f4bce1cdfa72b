"""Speculative decoding: greedy output identical to the target alone (tiny random models and
real SmolLM2 / Qwen pairs), the sampling rule keeps the target's distribution, tree plumbing."""
import numpy as np
import pytest

import edgert
from edgert import speculative
from edgert.errors import EdgeError
from edgert.sampling import Sampler

from tiny_llm import make_tiny_llm


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    return {name: make_tiny_llm(d / f"{name}.edge", seed) for name, seed in (("target", 1), ("other", 2))}


def test_tree_mask_and_paths():
    t = speculative.TokenTree(7)
    a = t.add(1, 0)
    b = t.add(2, a)
    c = t.add(3, 0)
    assert t.add(1, 0) == a  # an existing child is reused
    assert t.depths == [0, 1, 2, 1] and t.path(b) == [1, 2] and t.path(c) == [3]
    want = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 1]], bool)
    np.testing.assert_array_equal(t.mask(), want)


def test_lookup_finds_the_continuation(monkeypatch):
    d = speculative.LookupDrafter(width=2, depth=4, budget=10)
    monkeypatch.setattr(d.planner, "spine", lambda: 4)
    monkeypatch.setattr(d.planner, "branching", lambda: False)
    history = [5, 6, 7, 8, 9, 1, 5, 6, 7]
    tree = d.draft(history, Sampler(0.0))
    assert len(tree) == 5 and tree.path(4) == [8, 9, 1, 5]  # the chain after the earlier "5 6 7"


def test_planner_drafts_only_when_it_pays():
    """Cheap verification of extra nodes and a good draft: long spines; expensive extra nodes
    and a poor draft: plain decoding (k = 0), with a 1-token probe every 16 steps."""
    p = speculative.Planner(depth=8)
    for n in (1, 3, 5, 9):
        p.update(n, n - 1, n - 1, 0.001 * (n - 1), 0.100 + 0.002 * n)  # everything accepted
    assert p.spine() == 8 and p.branching()
    p = speculative.Planner(depth=8)
    for n in (1, 2, 3, 4):
        p.update(n, n - 1, 0, 0.03 * (n - 1), 0.100 * n)  # an extra node costs a whole step
    assert [p.spine() for _ in range(16)] == [0] * 15 + [1] and not p.branching()


def _greedy(model, ids, n):
    out = list(model.generate(list(ids), max_tokens=n, temperature=0.0, stop_at_eot=False))
    return model.last_tokens, "".join(out)


@pytest.mark.parametrize("draft,pipeline", [("self", False), ("self", True), ("other", False), ("other", True),
                                            ("lookup", None)])
@pytest.mark.parametrize("width,depth", [(1, 4), (3, 5)])
def test_greedy_is_lossless_tiny(tiny, draft, pipeline, width, depth):
    """Whatever the drafts (always accepted, mostly rejected, model-free; drafted inline or
    ahead on a worker thread while the target verifies), greedy output equals the target's
    own, token for token, on several prompts and lengths."""
    target = edgert.load(tiny["target"], threads=1)
    spec = edgert.load(tiny["target"], threads=1, tree_width=width, tree_depth=depth, pipeline=pipeline,
                       draft={"self": tiny["target"], "other": tiny["other"], "lookup": "lookup"}[draft])
    _always_draft(spec, depth, width > 1)
    rng = np.random.default_rng(0)
    for n_prompt, n_new in ((1, 20), (5, 33), (17, 60)):
        ids = rng.integers(0, 96, n_prompt)
        assert _greedy(spec, ids, n_new) == _greedy(target, ids, n_new), (n_prompt, n_new)
    st = spec.stats
    assert st["verify_steps"] > 0 and st["tokens_per_step"] >= 1
    if draft == "self":  # a draft identical to the target is always right (siblings never are)
        assert st["tokens_per_step"] > 2 and (width > 1 or st["acceptance_rate"] == 1.0)
        # drafted ahead: after a fully accepted spine the next one is (partly) ready
        assert (st["lookahead_hits"] > 0) == pipeline


@pytest.mark.parametrize("pipeline", [False, True])
def test_draft_kept_in_step_while_the_planner_declines(tiny, monkeypatch, pipeline):
    """Plain decoding with a 1-token probe every 4th step: a pipelined draft follows the
    accepted tokens on its worker meanwhile, so every probe finds it current (a lookahead hit)
    and pays no catch-up; drafting inline, each probe catches up (no hits). Lossless either way."""
    target = edgert.load(tiny["target"], threads=1)
    spec = edgert.load(tiny["target"], threads=1, pipeline=pipeline, draft=tiny["target"], tree_width=1,
                       tree_depth=4)
    plans, probes = iter([0, 0, 0, 1] * 100), []
    monkeypatch.setattr(spec.drafter.planner, "spine", lambda: probes.append(1) or next(plans))
    ids = np.arange(5)
    assert _greedy(spec, ids, 40) == _greedy(target, ids, 40)
    n_probes = len(probes) // 4
    assert n_probes >= 5
    assert spec.stats["lookahead_hits"] == (n_probes if pipeline else 0)


def test_context_end(tiny):
    """Near the end of the context the tree shrinks and generation stops cleanly."""
    spec = edgert.load(tiny["target"], threads=1, context=40, draft=tiny["target"], tree_width=2, tree_depth=6)
    target = edgert.load(tiny["target"], threads=1, context=40)
    ids = list(range(30))
    assert _greedy(spec, ids, 50) == _greedy(target, ids, 50)
    assert spec.stats["stop"] == target.stats["stop"] == "context_full"


@pytest.mark.parametrize("draft", ["other", "lookup"])
def test_greedy_is_lossless_with_streamed_target(tiny, draft):
    """A target whose weights stream through a small slot pool (the memory-limited setting)
    verifies trees exactly as the in-memory target decodes."""
    from test_weightstore import streamed_model

    target = edgert.load(tiny["target"], threads=1, context=64)
    spec = streamed_model(tiny["target"], "jit", slot_bytes=9000, slots=3)
    spec.set_draft(tiny["other"] if draft == "other" else "lookup", 3, 5)
    _always_draft(spec, 5, True)
    ids = np.random.default_rng(3).integers(0, 96, 9)
    assert _greedy(spec, ids, 30) == _greedy(target, ids, 30)
    assert spec.stats["verify_steps"] > 0


def test_budget_sets_aside_the_draft(tiny):
    """Under a memory budget, a draft model's file and KV cache are kept out of the target's
    share; a lookup draft needs nothing."""
    from edgert.format import EdgeFile
    from edgert.model import _draft_edge, _draft_reserve

    edge = EdgeFile(tiny["other"])
    kv = 2 * 2 * 2 * 16 * 4 * 64  # K and V, 2 layers, 2 kv heads of 16, float32, 64 positions
    h = edge.header
    rows = {op["w"]["weight"] for op in h["program"]["ops"] if op["op"] == "embed"} - {
        w for op in h["program"]["ops"] if op["op"] != "embed" for w in op["w"].values()}
    parts = [edge.tensor(n) for n in rows]  # an untied embedding table: only its rows are read
    table = sum(sum(a.nbytes for a in p.values()) if isinstance(p, dict) else p.nbytes for p in parts)
    assert table > 0
    assert _draft_reserve(_draft_edge(tiny["other"]), 64) == edge.size - table + kv
    assert _draft_edge("lookup") is None and _draft_reserve(None, 64) == 0
    m = edgert.load(tiny["target"], threads=1, memory_budget="4GB", context=64, draft=tiny["other"])
    assert m.plan.estimate["runtime"] >= edge.size + kv


def test_budget_context_counts_the_draft_cache():
    """The default context under a budget leaves 15% of it to the KV caches of target and
    draft together: a draft with a large cache halves the context."""
    from edgert.budget import budget_context, kv_bytes

    cfg = {"n_layers": 28, "n_kv_head": 2, "head_dim": 128, "context_length": 32768}  # Qwen2.5-1.5B's cache
    budget = 900 << 20
    alone, pair = budget_context([cfg], budget), budget_context([cfg, cfg], budget)
    assert (alone, pair) == (2048, 1024)
    assert 2 * kv_bytes(cfg, pair) <= 0.15 * budget < 2 * kv_bytes(cfg, 2 * pair)
    assert budget_context([dict(cfg, context_length=512)], budget) == 512


def _softmax(logits):
    p = np.exp(np.asarray(logits, np.float64) - np.max(logits))
    return p / p.sum()


def _first_token_freqs(model, ids, runs, seed):
    counts = np.zeros(model.config["vocab_size"])
    for r in range(runs):
        list(model.generate(list(ids), max_tokens=1, temperature=1.0, top_k=0, top_p=1.0, seed=seed + r,
                            stop_at_eot=False))
        counts[model.last_tokens[0]] += 1
    return counts / runs


@pytest.mark.parametrize("draft", ["other", "lookup"])
def test_sampling_keeps_the_target_distribution(tmp_path, draft):
    """With temperature 1, the first sampled token follows the target's softmax, although the
    drafts come from a different distribution (another model, or a deterministic lookup)."""
    vocab = 12
    target_path = make_tiny_llm(tmp_path / "t.edge", 3, vocab=vocab, temperature=6.0)
    other_path = make_tiny_llm(tmp_path / "o.edge", 4, vocab=vocab, temperature=6.0)
    target = edgert.load(target_path, threads=1)
    spec = edgert.load(target_path, threads=1, draft=other_path if draft == "other" else "lookup")
    ids = [1, 2, 3, 4, 1, 2, 3]  # the lookup drafter proposes 4 after "1 2 3"
    p = _softmax(target.logits(ids)[-1])
    if draft == "other":
        q = _softmax(edgert.load(other_path, threads=1).logits(ids)[-1])
    else:
        q = np.eye(vocab)[4]
    assert 0.5 * np.abs(p - q).sum() > 0.2  # drafts alone would give a visibly different law
    freq = _first_token_freqs(spec, ids, 3000, seed=11)
    assert 0.5 * np.abs(freq - p).sum() < 0.05, (freq.round(3), p.round(3))


def test_mismatched_tokenizers_are_refused(tmp_path, tiny):
    other = make_tiny_llm(tmp_path / "v.edge", 5, vocab=97)
    with pytest.raises(EdgeError, match="does not share the target's tokenizer"):
        edgert.load(tiny["target"], draft=other)


def _always_draft(model, depth, branch):
    """Make the model's drafter draft `depth` tokens every step (and branch if asked), whatever
    its planner would choose, so that the tests exercise trees."""
    model.drafter.planner.spine = lambda: depth
    model.drafter.planner.branching = lambda: branch
    return model


@pytest.mark.slow
def test_greedy_is_lossless_smollm2(smollm2_edge, prompts):
    """SmolLM2 with itself as the draft and with lookup trees: identical to the target alone."""
    target = edgert.load(smollm2_edge, threads=1)
    for draft in (smollm2_edge, "lookup"):
        spec = _always_draft(edgert.load(smollm2_edge, threads=1, draft=draft, tree_width=3), 6, True)
        for prompt in prompts:
            ids = target.tokenizer.encode(prompt)
            assert _greedy(spec, ids, 40) == _greedy(target, ids, 40), (draft, prompt)
        assert spec.stats["drafted_tokens"] > 0


@pytest.mark.slow
def test_greedy_is_lossless_qwen_pair(qwen15_edge, qwen05_edge, prompts):
    """The real draft/target pair (Qwen2.5-Coder 0.5B drafting for 1.5B), trees and chains."""
    target = edgert.load(qwen15_edge, threads=1)
    for width in (1, 3):
        spec = _always_draft(edgert.load(qwen15_edge, threads=1, draft=qwen05_edge, tree_width=width), 4, width > 1)
        for prompt in prompts[:3]:
            ids = target.tokenizer.encode(prompt)
            assert _greedy(spec, ids, 32) == _greedy(target, ids, 32), (width, prompt)
        assert spec.stats["tokens_per_step"] > 1.5  # the pair agrees on most drafted tokens


@pytest.mark.slow
def test_pure_draft_beside_a_streamed_target_is_lossless(qwen15_edge, qwen05_gguf, prompts, tmp_path):
    """The memory-limited setting: the 0.5B converted with --pure (every matrix 4-bit: 77% of
    the default conversion's bytes) drafts while the 1.5B streams its weights (the budget: what
    this test process holds already plus 800 MB, as the benchmark's 900 MB is for a fresh one)."""
    from edgert.budget import rss_now
    from edgert.convert import convert
    from edgert.format import EdgeFile

    draft = str(tmp_path / "draft-pure.edge")
    convert(qwen05_gguf, draft, progress=False, pure=True)
    h = EdgeFile(draft).header
    assert {t["dtype"] for t in h["tensors"].values() if len(t["shape"]) == 2} == {"q4_1"}
    spec = edgert.load(qwen15_edge, threads=1, context=256, memory_budget=rss_now() + (800 << 20), draft=draft)
    assert spec.plan.stream  # the target does stream
    target = edgert.load(qwen15_edge, threads=1, context=256)
    drafted = accepted = 0
    for prompt in prompts[:2]:
        ids = target.tokenizer.encode(prompt)
        got = _greedy(spec, ids, 24)
        drafted += spec.stats["drafted_tokens"]
        accepted += spec.stats["accepted_tokens"]
        assert got == _greedy(target, ids, 24), prompt
    # The draft's tokens were verified and kept. How many a step gains is the planner's choice
    # from measured times (it drafts only where that pays), a speed figure for
    # benchmarks/speculative.py: asserted here as tokens per step > 1.5, it read 1.0 on the
    # second prompt in three whole-suite CI runs of 2026-12-06 on a noisy host.
    assert drafted > 0 and accepted > 0


def test_evicted_steps_free_their_arenas_at_once(tiny):
    """Trees of many sizes bind a step per size; the interpreter keeps 4, and an evicted one
    (whose bound calls refer back to it) must be freed when dropped, not at some later GC pass:
    under a memory budget, arenas waiting for the cycle collector grew a 3-prompt run by 150 MB."""
    import gc
    import weakref

    m = edgert.load(tiny["target"], threads=1, context=64)
    cache = m.new_cache()
    gc.disable()
    try:
        first = weakref.ref(m.interpreter._step_for({"n": 1, "m": 1}))
        for n in range(2, 7):
            m.interpreter.step(np.arange(n), np.arange(cache.length, cache.length + n), cache)
        assert first() is None and len(m.interpreter._steps) == 4
        m.interpreter.wide_kept = 1  # as under a memory budget: one step with all rows out
        narrow = weakref.ref(m.interpreter._step_for({"n": 1, "m": 1}))
        for n in range(2, 5):
            m.interpreter.step(np.arange(n), np.arange(cache.length, cache.length + n), cache, rows="all")
        kept = [dict(k) for k in m.interpreter._steps]
        assert narrow() is not None and sum(k["m"] > 1 for k in kept) == 1 and {"n": 4, "m": 4} in kept
    finally:
        gc.enable()
