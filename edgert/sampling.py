"""Choosing the next token from logits: greedy, or temperature / top-k / top-p sampling."""
from __future__ import annotations

import numpy as np


class Sampler:
    """temperature 0 -> argmax. Otherwise softmax(logits / temperature) restricted to the
    top_k most likely tokens (0 = all) and to the smallest set whose mass reaches top_p."""

    def __init__(self, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None):
        if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
            raise ValueError("need temperature >= 0, 0 < top_p <= 1, top_k >= 0")
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.rng = np.random.default_rng(seed)

    def probs(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(candidate token ids, their probabilities) after temperature, top-k and top-p."""
        x = np.asarray(logits, np.float64)
        ids = np.argpartition(-x, self.top_k - 1)[: self.top_k] if 0 < self.top_k < x.size else np.arange(x.size)
        z = x[ids] / self.temperature
        p = np.exp(z - z.max())
        p /= p.sum()
        order = np.argsort(-p, kind="stable")
        ids, p = ids[order], p[order]
        if self.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(p), self.top_p)) + 1
            ids, p = ids[:keep], p[:keep] / p[:keep].sum()
        return ids, p

    def __call__(self, logits: np.ndarray) -> int:
        if self.temperature == 0:
            return int(np.argmax(logits))
        ids, p = self.probs(logits)
        return int(ids[self.rng.choice(len(p), p=p)])
