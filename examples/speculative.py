"""Greedy generation with and without model-free speculative decoding (prompt lookup and
token recycling): the same text, and the drafting statistics.

    python examples/speculative.py [model.edge] ["prompt"]
"""
import sys
import time

import edgert
from edgert.pull import pull

path = sys.argv[1] if len(sys.argv) > 1 else pull()
prompt = sys.argv[2] if len(sys.argv) > 2 else "List the days of the week, then list them again in reverse order."
for draft in (None, "lookup"):
    m = edgert.load(path, draft=draft)
    t0 = time.perf_counter()
    text = m.chat([{"role": "user", "content": prompt}], max_tokens=96, temperature=0.0)
    s = m.stats
    print(f"--- draft={draft}: {time.perf_counter() - t0:.2f} s, {s['generated_tokens']} tokens")
    print(text)
    if draft:
        print(f"[{s['tokens_per_step']:.2f} tokens per verification, {100 * s['acceptance_rate']:.0f}% of "
              f"{s['drafted_tokens']} drafted tokens accepted]")
