"""Schema-constrained decoding: grammar, masks, jump-forward loop, confidence.

Import the submodules directly. ``confidence`` is pure Python (the HTTP layer uses it);
the others import torch and xgrammar.
"""
