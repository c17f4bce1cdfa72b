"""A short conversation with the model's own chat template.

    python examples/chat.py [model.edge]
"""
import sys

import edgert
from edgert.pull import pull

m = edgert.load(sys.argv[1] if len(sys.argv) > 1 else pull())
messages = [{"role": "user", "content": "Give me three tips for a first trip to the mountains."}]
reply = m.chat(messages, max_tokens=200, temperature=0.7, seed=0)
print(reply)
messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "Make it one sentence."}]
for piece in m.chat(messages, stream=True, max_tokens=80, temperature=0.7, seed=0):
    print(piece, end="", flush=True)
print()
