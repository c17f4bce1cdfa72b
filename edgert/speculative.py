"""Speculative decoding with token trees (LLMCad): a drafter proposes a tree of candidate
continuations, the target model verifies all of its nodes in one forward pass, and the
longest path that the target itself would have produced is kept.

The tree's node 0 is the pending token: emitted already, not yet seen by the target. Every
other node is a drafted token with a parent. Verification runs the target once over all
nodes (per-node positions = context length + depth, an ancestor-or-self attention mask),
then walks from node 0: while the target's choice after the current node is one of its
children, that child is accepted. The target's choice after the last accepted node is one
more token of its own (the new pending token), so every verification yields at least one
token. The accepted nodes' KV entries are moved to consecutive cache positions (a few rows;
the rest of the cache is not copied) and the cache is truncated after them.

Greedy decoding is lossless: the kernels compute every row of a batch exactly as they would
alone, so each accepted token is the target's own greedy choice, bit for bit. With sampling
the drafts form a chain and the speculative-sampling rule (accept x with probability
min(1, p(x) / q(x)), else sample from max(p - q, 0)) keeps the target's distribution.

Drafters: ModelDrafter (a smaller model with the same tokenizer; the tree branches where the
draft is unsure and the spine stops once its confidence falls below a threshold that adapts
to the observed acceptance) and LookupDrafter (no second model: prompt lookup plus Token
Recycling's adjacency of recently seen candidates, expanded breadth first).
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import kernels
from .errors import EdgeError
from .sampling import Sampler


class TokenTree:
    """Nodes in topological order: tokens[i], parents[i] (-1 for node 0), depths[i]; q[i] is
    what the sampling rule needs of the draft: 1.0 for a deterministic draft, (ids, probs) of
    the draft distribution a token was sampled from, None for greedy drafts."""

    def __init__(self, root: int):
        self.tokens, self.parents, self.depths, self.q = [root], [-1], [0], [None]
        self.children: list[dict] = [{}]

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, token: int, parent: int, q=None) -> int:
        """Child of `parent` (an existing node); an existing child with this token is reused."""
        if token in self.children[parent]:
            return self.children[parent][token]
        i = len(self.tokens)
        self.tokens.append(int(token))
        self.parents.append(parent)
        self.depths.append(self.depths[parent] + 1)
        self.q.append(q)
        self.children.append({})
        self.children[parent][int(token)] = i
        return i

    def path(self, i: int) -> list[int]:
        """Tokens from node 1 down to node i (node 0 excluded)."""
        out = []
        while i > 0:
            out.append(self.tokens[i])
            i = self.parents[i]
        return out[::-1]

    def mask(self) -> np.ndarray:
        """bool [n, n]: mask[i, j] iff node j is node i or one of its ancestors."""
        n = len(self.tokens)
        m = np.zeros((n, n), np.bool_)
        for i, p in enumerate(self.parents):
            if p >= 0:
                m[i] = m[p]
            m[i, i] = True
        return m


def verify(model, cache, tree: TokenTree, sampler: Sampler):
    """Run the target over the tree and walk it. Returns (accepted draft tokens, next
    pending token, target logits [n, vocab]); the cache then holds node 0 and the accepted
    nodes, consecutively."""
    base = cache.length
    depths = np.asarray(tree.depths, np.int64)
    logits = model.interpreter.step(np.asarray(tree.tokens, np.int64), base + depths, cache, rows="all",
                                    mask=tree.mask())
    node, accepted = 0, [0]
    if sampler.temperature == 0:
        while True:
            want = int(np.argmax(logits[node]))
            child = tree.children[node].get(want)
            if child is None:
                break
            node = child
            accepted.append(node)
        bonus = want
    else:
        bonus = None
        while tree.children[node]:
            (token, child), = tree.children[node].items()  # sampled drafts form a chain
            ids, p = sampler.probs(logits[node])
            q_token, q = _draft_probs(tree.q[child], token, ids)
            if sampler.rng.random() * q_token < float(p[ids == token].sum()):  # prob. min(1, p/q)
                node = child
                accepted.append(node)
                continue
            residual = np.maximum(p - q, 0)
            residual = residual if residual.sum() > 0 else p
            bonus = int(ids[sampler.rng.choice(len(ids), p=residual / residual.sum())])
            break
        if bonus is None:
            bonus = sampler(logits[node])
    for d, j in enumerate(accepted):  # j >= d, increasing: no row is overwritten before it is read
        if j != d:
            cache.block[:, :, :, base + d] = cache.block[:, :, :, base + j]
    cache.length = base + len(accepted)
    return [tree.tokens[j] for j in accepted[1:]], bonus, logits


def _draft_probs(q, token: int, ids: np.ndarray):
    """(q(token), q over the target's candidate ids) for a drafted node: q is 1.0 for a
    deterministic draft (one-hot) or (draft ids, draft probs) for a sampled one."""
    if not isinstance(q, tuple):
        return 1.0, (ids == token).astype(np.float64)
    dist = dict(zip(q[0].tolist(), q[1].tolist()))
    return dist[token], np.array([dist.get(int(t), 0.0) for t in ids])


class Planner:
    """How many tokens to draft, from what is observed: the draft's acceptance rate a (per
    drafted spine token, decayed counts), the verification time as t0 + t1 * nodes (least
    squares over recent steps) and the drafting time c per token. The spine length k
    maximises expected tokens per second, (1 + a + ... + a^k) / (t0 + t1 (k + 1) + c k);
    k = 0 is plain decoding, and after 16 such steps one 1-token draft refreshes the estimates.
    Side branches pay only where one more verified node costs little against a whole step
    (memory-bound targets): allowed while t1 < 0.25 (t0 + t1)."""

    def __init__(self, depth: int, accept: float = 0.6):
        self.depth = depth
        self.hits, self.trials = 3.0 * accept, 3.0  # a prior worth three drafted tokens
        self.steps: list[tuple[int, float]] = []    # (nodes verified, seconds), the last 32
        self.per_draft = 0.0
        self.idle = 0

    def _fit(self) -> tuple[float, float]:
        if len({n for n, _ in self.steps}) < 2:
            mean = sum(t for _, t in self.steps) / len(self.steps) if self.steps else 1.0
            return mean / 2, mean / 2  # until two sizes are seen: an extra node costs half a step
        n = np.array([x for x, _ in self.steps], float)
        t = np.array([y for _, y in self.steps])
        t1, t0 = np.polyfit(n, t, 1)
        return max(float(t0), 1e-6), max(float(t1), 0.0)

    def spine(self) -> int:
        t0, t1 = self._fit()
        a = self.hits / self.trials
        best_k, best, total, geo = 0, 1.0 / (t0 + t1), 1.0, 1.0
        for k in range(1, self.depth + 1):
            geo *= a
            total += geo
            rate = total / (t0 + t1 * (k + 1) + self.per_draft * k)
            if rate > best:
                best_k, best = k, rate
        if best_k == 0:
            self.idle += 1
            if self.idle >= 16:
                self.idle, best_k = 0, 1
        return best_k

    def branching(self) -> bool:
        t0, t1 = self._fit()
        return t1 < 0.25 * (t0 + t1)

    def update(self, nodes: int, spine: int, accepted: int, t_draft: float, t_verify: float) -> None:
        """After a verification of `nodes` nodes whose drafted spine had `spine` tokens, of
        which the first `accepted` were kept."""
        self.steps = (self.steps + [(nodes, t_verify)])[-32:]
        if spine:
            self.hits = 0.9 * self.hits + min(accepted, spine)
            self.trials = 0.9 * self.trials + min(accepted, spine) + (accepted < spine)
            self.per_draft = 0.8 * self.per_draft + 0.2 * t_draft / spine if self.per_draft else t_draft / spine


class Drafter:
    """What generate_tokens asks of a drafter: start(prompt ids) once per generation,
    draft(history, sampler) -> TokenTree per step, then observe(tree, target logits) and
    feedback(tree, accepted, draft seconds, verify seconds); stop() when generation ends.
    ahead_hits: draft positions a pipelined drafter had computed before they were asked for."""

    ahead_hits = 0

    def observe(self, tree: TokenTree, logits: np.ndarray) -> None:
        pass

    def stop(self) -> None:
        pass


class ModelDrafter(Drafter):
    """Drafts with a smaller model. Greedy: the spine follows the draft's top choice for up to
    Planner.spine() tokens, and stops early once the product of its probabilities falls below
    `threshold`, which rises after rejections and falls after full acceptances (the
    self-adjusting fallback). Where branching pays and the top choice has probability below
    `branch_p`, up to width - 1 runners-up of probability >= min_p become siblings (leaves).
    Sampling: a chain sampled from the draft, on the same rules.

    pipeline (greedy only): while the target verifies a tree, a worker thread (one compute
    thread of its own) keeps extending the draft's greedy chain past the spine, as if the
    whole spine and the draft's own next choice will be accepted. When they are, the next
    spine is already drafted; otherwise the extra tokens are dropped. On steps where the planner
    decodes plainly, the worker keeps the draft in step with the accepted tokens instead (and one
    guessed token ahead), so a later probe pays no catch-up, which the planner would count as
    drafting cost and then keep declining. Pays when a core is free beside the target's
    threads, and most when the target waits on storage. The drafting that the target waits
    for (after a rejection) uses that core too: the draft's threads plus one."""

    def __init__(self, model, width: int = 3, depth: int = 8, budget: int = 16, min_p: float = 0.05,
                 branch_p: float = 0.8, threshold: float = 0.3, pipeline: bool = False):
        self.model, self.width, self.budget = model, width, budget
        self.min_p, self.branch_p, self.threshold = min_p, branch_p, threshold
        self.planner = Planner(depth)
        self.cache = model.new_cache()
        self.seen: list[int] = []  # tokens whose KV entries the draft cache holds, in order
        self.tops: dict[int, tuple] = {}  # i -> (ids, probs): the draft's candidates after seen[:i + 1]
        self.spine_len = 0
        self._worker = ThreadPoolExecutor(1, initializer=kernels.set_threads, initargs=(1,)) if pipeline else None
        self.serial_threads = model.threads + (1 if pipeline else 0)  # while the target waits for the draft
        self._ahead = None   # the running lookahead (a Future) and its stop flag
        self._stop = threading.Event()

    def start(self, prompt_ids) -> None:
        self._join()
        self.cache = self.model.new_cache()
        self.seen, self.tops, self.ahead_hits = [], {}, 0
        if len(prompt_ids) > 1:
            self.model.prefill(np.asarray(prompt_ids[:-1], np.int64), self.cache)
            self.seen = [int(t) for t in prompt_ids[:-1]]

    def _feed(self, tokens, sampler: Sampler) -> None:
        """Run the draft over tokens (after self.seen) and keep its candidates after the last."""
        start = self.cache.length
        logits = self.model.interpreter.step(np.asarray(tokens, np.int64), np.arange(start, start + len(tokens)),
                                             self.cache)[0]
        self.seen.extend(int(t) for t in tokens)
        if sampler.temperature == 0:  # the top `width` candidates, most likely first
            ids = np.argpartition(-logits, self.width)[: self.width] if logits.size > self.width else np.arange(
                logits.size)
            ids = ids[np.argsort(-logits[ids], kind="stable")]
            e = np.exp(logits.astype(np.float64) - float(logits[ids[0]]))
            self.tops[len(self.seen) - 1] = (ids, e[ids] / e.sum())
        else:
            self.tops[len(self.seen) - 1] = sampler.probs(logits)

    def _rewind(self, n: int) -> None:
        """Keep only the first n fed tokens."""
        if len(self.seen) > n:
            del self.seen[n:]
            self.cache.length = n
            self.tops = {i: v for i, v in self.tops.items() if i < n}

    def draft(self, history: list[int], sampler: Sampler) -> TokenTree:
        """A tree rooted at history[-1] (the pending token)."""
        self._join()
        with kernels.threads(self.serial_threads):
            return self._draft(history, sampler)

    def _draft(self, history: list[int], sampler: Sampler) -> TokenTree:
        tree = TokenTree(history[-1])
        self.spine_len = 0
        k = min(self.planner.spine(), self.cache.capacity - len(history))
        if k <= 0:
            if self._worker is not None and sampler.temperature == 0 and len(history) < self.cache.capacity:
                # plain decoding this step: keep the draft in step on the free core meanwhile, so
                # that the next probe finds it current (its cost is not a drafted token's)
                self._ahead = self._worker.submit(self._follow, list(history))
            return tree
        pos = len(history) - 1  # self.tops[pos]: the draft's candidates after the pending token
        if self._sync(history, sampler):
            self.ahead_hits += 1
        node, conf = 0, 1.0
        branch = sampler.temperature == 0 and self.width > 1 and self.planner.branching()
        for _ in range(k):
            ids, p = self.tops[pos]
            if sampler.temperature == 0:
                top, conf = int(ids[0]), conf * float(p[0])
                nxt = tree.add(top, node)
                if branch and p[0] < self.branch_p:
                    for alt, pa in zip(ids[1:], p[1:]):
                        if pa >= self.min_p and len(tree) < self.budget:
                            tree.add(int(alt), node)
            else:
                j = int(sampler.rng.choice(len(p), p=p))
                top, conf = int(ids[j]), conf * float(p[j])
                nxt = tree.add(top, node, q=(ids, p))
            node = nxt
            self.spine_len += 1
            if conf < self.threshold or len(tree) >= self.budget or self.spine_len == k:
                break
            pos += 1
            if pos in self.tops and self.seen[pos] == top:
                self.ahead_hits += 1
            else:
                self._rewind(pos)
                self._feed([top], sampler)
        if self._worker is not None and sampler.temperature == 0:
            self._stop.clear()
            self._ahead = self._worker.submit(self._lookahead, tree.path(node), len(history), k)
        return tree

    def _sync(self, history: list[int], sampler: Sampler) -> bool:
        """Bring the draft to history (its cache holds all but the pending last token, and
        self.tops its candidates after that token); True if it was there already."""
        common = 0
        limit = min(len(self.seen), len(history))
        while common < limit and self.seen[common] == history[common]:
            common += 1
        pos = len(history) - 1
        if common == len(history) and pos in self.tops:
            return True
        self._rewind(min(common, pos))
        self._feed(history[len(self.seen):], sampler)
        return False

    def _follow(self, history: list[int]) -> None:
        """Worker thread, on a plain decoding step: bring the draft to history and feed its own
        next choice (the target's likely next token), so that the next step finds it current."""
        self._sync(history, Sampler(0.0))
        if len(self.seen) < self.cache.capacity:
            self._feed([int(self.tops[len(self.seen) - 1][0][0])], Sampler(0.0))

    def _lookahead(self, spine: list[int], n_history: int, k: int) -> None:
        """Worker thread: feed the spine's unfed tail and the draft's own next choice (the
        target's likely bonus token), then further greedy choices until stopped or k tokens
        past the spine."""
        greedy = Sampler(0.0)
        pos = n_history - 1 + len(spine)  # the last spine token's position
        if len(self.seen) <= pos or self.seen[pos] != spine[-1]:
            self._rewind(pos)
            self._feed([spine[-1]], greedy)
        for i in range(k):
            if (i and self._stop.is_set()) or len(self.seen) >= self.cache.capacity:
                return
            self._feed([int(self.tops[len(self.seen) - 1][0][0])], greedy)

    def stop(self) -> None:
        """Wait for a running lookahead to stop."""
        self._join()

    def _join(self) -> None:
        if self._ahead is not None:
            self._stop.set()
            self._ahead.result()
            self._ahead = None

    def feedback(self, tree: TokenTree, accepted: int, t_draft: float, t_verify: float) -> None:
        spine_hits = accepted if accepted <= self.spine_len else self.spine_len
        self.planner.update(len(tree), self.spine_len, spine_hits, t_draft, t_verify)
        if self.spine_len:
            if accepted >= self.spine_len:
                self.threshold = max(0.02, self.threshold * 0.7)
            elif accepted < self.spine_len // 2:
                self.threshold = min(0.9, self.threshold * 1.3 + 0.02)


class LookupDrafter(Drafter):
    """Drafts without a second model. Prompt lookup: after the most recent earlier occurrence
    of the last `ngram` (down to 1) tokens, the tokens that followed it form the spine. Token
    Recycling: for every token, the target's top `width` candidates seen after it in earlier
    verifications (an adjacency of recently seen candidates) extend the spine where lookup
    finds nothing and, where branching pays, expand the tree breadth first. Planner.spine()
    bounds the spine."""

    def __init__(self, width: int = 3, depth: int = 6, budget: int = 16, ngram: int = 3):
        self.width, self.budget, self.ngram = width, budget, ngram
        self.planner = Planner(depth, accept=0.3)
        self.adjacency: dict[int, list[int]] = {}
        self.spine_len = 0

    def start(self, prompt_ids) -> None:
        self.adjacency = {}

    def draft(self, history: list[int], sampler: Sampler) -> TokenTree:
        tree = TokenTree(history[-1])
        k = self.planner.spine()
        chain = self._lookup(history)[:k]
        node = 0
        for t in chain:
            node = tree.add(t, node, q=1.0)
        while tree.depths[node] < k and self.adjacency.get(tree.tokens[node]):
            node = tree.add(self.adjacency[tree.tokens[node]][0], node, q=1.0)
        self.spine_len = tree.depths[node]
        if sampler.temperature > 0 or not self.planner.branching():  # sampling verifies a chain only
            return tree
        frontier = [0]
        while frontier and len(tree) < self.budget:
            nxt = []
            for i in frontier:
                if tree.depths[i] >= k:
                    continue
                for t in self.adjacency.get(tree.tokens[i], ())[: self.width]:
                    if len(tree) >= self.budget:
                        break
                    if t not in tree.children[i]:
                        nxt.append(tree.add(t, i))
            frontier = nxt
        return tree

    def _lookup(self, history: list[int]) -> list[int]:
        h = np.asarray(history, np.int64)
        for n in range(min(self.ngram, len(h) - 1), 0, -1):
            tail = h[-n:]
            starts = np.flatnonzero(h[: len(h) - n] == tail[0])
            for s in starts[::-1]:
                if np.array_equal(h[s:s + n], tail):
                    return h[s + n:].tolist()
        return []

    def observe(self, tree: TokenTree, logits: np.ndarray) -> None:
        """Recycle the target's top candidates after every verified node."""
        top = np.argpartition(-logits, self.width, axis=1)[:, : self.width]
        for i, t in enumerate(tree.tokens):
            row = top[i][np.argsort(-logits[i, top[i]])]
            self.adjacency[t] = [int(x) for x in row]

    def feedback(self, tree: TokenTree, accepted: int, t_draft: float, t_verify: float) -> None:
        self.planner.update(len(tree), self.spine_len, min(accepted, self.spine_len), t_draft, t_verify)


def check_pair(target, draft) -> None:
    """Refuse a draft model whose tokenizer differs from the target's."""
    a, b = target.tokenizer, draft.tokenizer
    if a.digest != b.digest:
        raise EdgeError(f"draft model {draft.path} does not share the target's tokenizer "
                        f"({b.vocab_size} vs {a.vocab_size} tokens): speculative decoding needs the same vocabulary")


def generate_tokens(target, drafter, ids: np.ndarray, max_tokens: int, sampler: Sampler, eot, stats: dict):
    """Yield generated token ids (stopping before an end-of-turn token); fill stats."""
    cache = target.new_cache()
    history = [int(t) for t in ids]
    t0 = time.perf_counter()
    if len(history) > 1:
        target.prefill(ids[:-1], cache)
    drafter.start(history)
    t_draft = t_verify = 0.0
    steps = drafted = accepted_total = produced = 0
    stats.update(prefill_s=time.perf_counter() - t0)
    try:
        while produced < max_tokens:
            room = cache.capacity - cache.length
            if room < 1:
                stats["stop"] = "context_full"
                return
            t1 = time.perf_counter()
            tree = drafter.draft(history, sampler) if room > 1 else TokenTree(history[-1])
            if len(tree) > room:
                tree = _truncate(tree, room)
            t2 = time.perf_counter()
            accepted, bonus, logits = verify(target, cache, tree, sampler)
            t3 = time.perf_counter()
            drafter.observe(tree, logits)
            drafter.feedback(tree, len(accepted), t2 - t1, t3 - t2)
            t_draft += t2 - t1
            t_verify += t3 - t2
            steps += 1
            drafted += len(tree) - 1
            accepted_total += len(accepted)
            for tok in accepted + [bonus]:
                if tok in eot:
                    stats["stop"] = "end_of_turn"
                    return
                history.append(tok)
                produced += 1
                yield tok
                if produced >= max_tokens:
                    return
    finally:
        drafter.stop()
        stats.update(verify_steps=steps, drafted_tokens=drafted, accepted_tokens=accepted_total,
                     tokens_per_step=produced / steps if steps else 0.0,
                     acceptance_rate=accepted_total / drafted if drafted else 0.0, lookahead_hits=drafter.ahead_hits,
                     draft_s=t_draft, verify_s=t_verify)


def _truncate(tree: TokenTree, n: int) -> TokenTree:
    """The first n nodes of a tree (parents precede children, so it stays a tree)."""
    out = TokenTree(tree.tokens[0])
    for i in range(1, n):
        out.add(tree.tokens[i], tree.parents[i], tree.q[i])
    return out
