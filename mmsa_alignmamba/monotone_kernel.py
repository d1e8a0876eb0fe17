"""The alignment model's forward-backward on CPU: ``monotone_kernel.c``, compiled on first use
(native.py).

The recursion runs frame by frame, each frame a dozen tensor operators on a (B, T_l) row; at
MOSI's lengths (500 grid steps, 50 words) the TorchScript version spent ~20 ms a sample on operator
overhead, nine tenths of the model's inference. The kernel computes the same recursions with
each frame one pass over a row in cache. It serves every CPU float32 call with finite
emissions, in training too (the forward-backward runs without autograd there: its gradient is
the posterior it returns); other calls, and machines without a compiler, run the TorchScript
version. Samples are shared out over PyTorch's OpenMP threads whole, so results do not depend on
the thread count.
"""
from __future__ import annotations

import ctypes
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import native

__all__ = ["forward_backward", "best_words"]

PARALLEL_MIN_CELLS = 1 << 15   # B * T_m * T_l below which threads cost more than they save
# best_words: up to this many lattice cells a sample (T_m * W; 1 MiB of floats, MOSI's 500 x 50 is
# 25,000) a thread keeps the sample's posteriors and takes their argmax, two passes over the
# lattice; longer samples take the four-pass O(sqrt(T_m) W) route, so memory stays O(T) there.
BEST_DIRECT_MAX_CELLS = 1 << 18
_ARGTYPES = (ctypes.c_void_p,) * 4 + (ctypes.c_long,) * 4 + (ctypes.c_float, ctypes.c_int, ctypes.c_long) \
    + (ctypes.c_void_p,) * 3
_NOT_FINITE = 2                # the kernel's status when an emission is infinite or NaN


def _kernel():
    return native.kernel("monotone_kernel", "monotone_forward_backward", _ARGTYPES)


def forward_backward(log_emit: Tensor, frame_mask: Tensor, word_mask: Tensor,
                     skip: float, starts: Optional[Tensor] = None) -> Optional[Tuple[Tensor, Tensor]]:
    """(log_lik (B,), log_post (B, T_m, W)) as ``alignment.lattice.forward_backward`` computes them,
    or None where the kernel does not apply (not CPU float32, non-finite emissions, no kernel).
    Inputs as there: log_emit (B, T_m, W), frame_mask (B, T_m), word_mask (B, T_l), bool; ``starts``
    (B, T_m) the band's first words (None: the full lattice, W = T_l)."""
    return _run(log_emit, frame_mask, word_mask, skip, starts, posteriors=True)


def best_words(log_emit: Tensor, frame_mask: Tensor, word_mask: Tensor,
               skip: float, starts: Optional[Tensor] = None) -> Optional[Tuple[Tensor, Tensor]]:
    """(log_lik (B,), each frame's most probable word (B, T_m) long, −1 on padding): the argmax of
    :func:`forward_backward`'s posteriors (the lowest word on ties), keeping no (B, T_m, W) lattice:
    a thread holds one sample's posteriors up to ``BEST_DIRECT_MAX_CELLS`` cells, beyond that
    O(√T_m · W) floats. ``frame_mask`` must be a prefix. None where the kernel does not apply."""
    return _run(log_emit, frame_mask, word_mask, skip, starts, posteriors=False)


def _run(log_emit, frame_mask, word_mask, skip, starts, posteriors):
    if log_emit.device.type != "cpu" or log_emit.dtype != torch.float32 or log_emit.requires_grad:
        return None
    if _kernel() is None:
        return None
    batch, t_m, width = log_emit.shape
    emit = log_emit.contiguous()
    frames = frame_mask.to(torch.bool).contiguous()
    words = word_mask.to(torch.bool).contiguous()
    band = None if starts is None else starts.to(torch.int64).contiguous()
    log_lik = emit.new_empty(batch)
    out = emit.new_empty(batch, t_m, width) if posteriors else torch.empty(batch, t_m, dtype=torch.int64)
    threads = native.threads_for(batch, batch * t_m * width, PARALLEL_MIN_CELLS)
    status = _kernel()(emit.data_ptr(), frames.data_ptr(), words.data_ptr(), None if band is None else band.data_ptr(),
                       batch, t_m, words.shape[1], width, skip, threads, BEST_DIRECT_MAX_CELLS, log_lik.data_ptr(),
                       out.data_ptr() if posteriors else None, None if posteriors else out.data_ptr())
    if status & _NOT_FINITE:   # checked in the kernel, one pass in cache: -inf emissions go to TorchScript
        return None
    if status:
        raise MemoryError("the CPU forward-backward kernel could not allocate its workspace")
    return log_lik, out
