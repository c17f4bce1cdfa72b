"""Lowering of model architectures to edgert programs: one module per architecture family."""
