"""Teacher-forced scoring: the logits of every position, and the text's perplexity.

    python examples/score.py "Some text to score."
"""
import sys

import numpy as np

import edgert
from edgert.pull import pull

m = edgert.load(pull())
text = sys.argv[1] if len(sys.argv) > 1 else "The quick brown fox jumps over the lazy dog."
ids = m.tokenizer.encode(text)
logits = m.logits(ids)                       # float32 [len(ids), vocab]
best = np.argmax(logits, axis=1)
for i in range(len(ids) - 1):
    print(f"{m.tokenizer.decode(ids[: i + 1])!r:60.60} -> predicted {m.tokenizer.decode([int(best[i])])!r}")
print(f"perplexity {m.perplexity(ids):.2f}")
