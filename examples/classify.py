"""Classify an image with a CNN converted from ONNX (see docs/CNN.md for the conversion).

    edgert convert efficientnet-lite0.onnx -o effnet.edge --labels imagenet.txt
    python examples/classify.py effnet.edge cat.jpg
"""
import sys

import edgert

m = edgert.load(sys.argv[1])
for label, p in m.classify(sys.argv[2], top=5):
    print(f"{p:7.2%}  {label}")
