"""Stream a greedy continuation from the default model (fetched and converted on first use).

    python examples/generate.py "The capital of France is"
"""
import sys

import edgert
from edgert.pull import pull

m = edgert.load(pull())
prompt = sys.argv[1] if len(sys.argv) > 1 else "The capital of France is"
print(prompt, end="")
for piece in m.generate(prompt, max_tokens=48, temperature=0.0):
    print(piece, end="", flush=True)
print(f"\n[{m.stats['decode_tok_s']:.1f} tok/s]")
