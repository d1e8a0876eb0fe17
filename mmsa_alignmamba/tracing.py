"""The export path: what the model runs while it is being traced (torch.jit.trace, the ONNX
exporter).

A trace records one run with concrete shapes: a Python loop over frames is unrolled to the
example's length and a length read with ``int()`` is frozen. Where the model has such code (the
alignment model's forward-backward recursions, the selective scan), it calls ``traceable(fn)``:
``fn`` itself when running normally, its TorchScript compilation while tracing, which keeps loops
and lengths dynamic (an ONNX ``Loop``). Both run the same source, on the same weights.
"""
from __future__ import annotations

import functools

import torch

__all__ = ["traceable", "compiled"]


def traceable(fn):
    """``fn``, or its TorchScript compilation while tracing."""
    return compiled(fn) if torch.jit.is_tracing() else fn


@functools.cache
def compiled(fn):
    """``fn`` compiled by TorchScript, once per process (the same ATen operations, so the same
    numbers, without the Python interpreter between them)."""
    return torch.jit.script(fn)
