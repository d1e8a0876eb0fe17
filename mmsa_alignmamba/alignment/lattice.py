"""The forward–backward pass of the learned aligner's left-to-right word chain (ours).

:func:`monotone_alignment` gives log p(frames) and each frame's log posterior over the words for
a chain that starts in the first word, ends in the last, and at each frame stays, moves to the
next word or skips one. The recursions run as a compiled C kernel on CPU (float32,
:mod:`mmsa_alignmamba.monotone_kernel`), else as TorchScript; the ONNX export runs them as a
Loop (:mod:`mmsa_alignmamba.tracing`). Its gradient is the posterior, computed here directly.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor

from .. import monotone_kernel
from ..tracing import compiled, traceable

__all__ = ["monotone_alignment", "forward_backward"]


def monotone_alignment(log_emit: Tensor, frame_mask: Tensor, word_mask: Tensor,
                       skip: float = 0.05) -> Tuple[Tensor, Tensor]:
    """Forward-backward over a left-to-right chain of words (ours): the alignment of speech, where
    words are spoken in order, each for a while.

    ``log_emit`` (B, T_m, T_l): log p(frame i | word j); ``frame_mask`` (B, T_m) and
    ``word_mask`` (B, T_l): valid steps, each a prefix (padding at the end). The chain starts in
    the first valid word (or, with probability ``skip``, the second) and ends in the last; at each
    frame it stays, moves to the next word, or (probability ``skip`` of a move) skips one word,
    which lets a word with no frame of its own pass. The chance to move is set per sample so that
    the expected number of moves over the frames covers the words: geometric word durations
    around n_m / n_l frames. Where the last word cannot be reached (fewer than half as many
    frames as words), the chain may end anywhere.

    Returns ``(log_lik, log_post)``: (B,) log p(frames) and (B, T_m, T_l) log posteriors
    log p(frame i in word j | all frames), −inf where impossible and on padding. The gradient of
    ``log_lik`` with respect to ``log_emit`` is the posterior, computed here directly (the
    forward-backward identity) instead of by autograd through T_m steps.
    """
    if torch.jit.is_tracing():   # the ONNX export: no autograd, the recursions as a scripted loop
        return traceable(forward_backward)(log_emit, frame_mask, word_mask, float(skip), True)
    return _MonotoneForwardBackward.apply(log_emit, frame_mask, word_mask, float(skip))


class _MonotoneForwardBackward(torch.autograd.Function):
    # Hand-written backward: autograd through a Python loop of T_m steps would record ~10 ops per
    # step; the forward-backward recursions give the exact gradient (the posterior) in two passes.

    @staticmethod
    def forward(ctx, log_emit, frame_mask, word_mask, skip):
        with torch.no_grad():  # the C kernel on CPU, else TorchScript: no Python between the steps
            result = monotone_kernel.forward_backward(log_emit.detach(), frame_mask, word_mask, skip)
            if result is None:
                result = compiled(forward_backward)(log_emit.detach(), frame_mask, word_mask, skip, False)
            log_lik, log_post = result
        ctx.save_for_backward(log_post)
        ctx.mark_non_differentiable(log_post)
        return log_lik, log_post

    @staticmethod
    def backward(ctx, grad_log_lik, _grad_post):
        (log_post,) = ctx.saved_tensors
        return log_post.exp() * grad_log_lik[:, None, None], None, None, None


def _shift_right(x: Tensor, k: int) -> Tensor:
    """x[:, j − k] at j, −inf where j < k: (B, T_l) -> (B, T_l)."""
    pad = x.new_full((x.shape[0], k), float("-inf"))
    return torch.cat([pad, x], 1)[:, :x.shape[1]]


def _shift_left(x: Tensor, k: int) -> Tensor:
    """x[:, j + k] at j, −inf where j + k >= T_l: (B, T_l) -> (B, T_l)."""
    pad = x.new_full((x.shape[0], k), float("-inf"))
    return torch.cat([x, pad], 1)[:, k:]


def _log_add(a: Tensor, b: Tensor, onnx_ops: bool) -> Tensor:
    """log(eᵃ + eᵇ), −inf where both are. ONNX has no logaddexp: for the export (``onnx_ops``)
    it is spelled out with a shift that keeps −inf finite."""
    if onnx_ops:
        top = torch.maximum(a, b)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        return top + torch.log(torch.exp(a - top) + torch.exp(b - top))
    return torch.logaddexp(a, b)


def _log_sum(x: Tensor, dim: int, onnx_ops: bool) -> Tensor:
    """logsumexp over ``dim``, −inf where every entry is. ONNX Runtime's ReduceLogSumExp
    underflows to −inf for very negative inputs, so for the export the shift by the maximum is explicit."""
    if onnx_ops:
        top = x.amax(dim, keepdim=True)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        return (top + torch.log(torch.exp(x - top).sum(dim, keepdim=True))).squeeze(dim)
    return torch.logsumexp(x, dim=dim)


def forward_backward(log_emit: Tensor, frame_mask: Tensor, word_mask: Tensor, skip: float,
                      onnx_ops: bool = False) -> Tuple[Tensor, Tensor]:
    # Written in the subset of Python TorchScript compiles: it runs compiled (a loop of small steps
    # gains ~2x without Python between them), and the ONNX export runs the same recursions as a
    # Loop over the frames (see tracing.py); ``onnx_ops`` swaps in the two operations ONNX lacks.
    dtype = torch.float64 if log_emit.dtype == torch.float64 else torch.float32
    batch, t_m, t_l = log_emit.shape[0], log_emit.shape[1], log_emit.shape[2]
    neg = float("-inf")
    emit = log_emit.to(dtype).masked_fill(~word_mask[:, None, :], neg)            # (B, T_m, T_l)
    n_m = frame_mask.sum(1).clamp_min(1)                                           # (B,)
    n_l = word_mask.sum(1).clamp_min(1)
    advance = ((n_l - 1).to(dtype) / (n_m - 1).clamp_min(1).to(dtype) / (1 + skip)).clamp(1e-4, 0.95)[:, None]
    log_stay, log_move, log_skip = torch.log1p(-advance), torch.log(advance * (1 - skip)), torch.log(advance * skip)

    first = torch.arange(t_l, device=emit.device)[None, :]                         # (1, T_l)
    impossible = torch.full((1, t_l), neg, dtype=dtype, device=emit.device)
    start = torch.where(first == 0, math.log(1 - skip), torch.where(first == 1, math.log(skip), impossible))
    start = start.expand(batch, t_l)
    prev = start + emit[:, 0]
    alphas = [prev]
    for t in range(1, t_m):
        step = _log_add(_log_add(prev + log_stay, _shift_right(prev, 1) + log_move, onnx_ops),
                        _shift_right(prev, 2) + log_skip, onnx_ops) + emit[:, t]
        prev = torch.where(frame_mask[:, t, None], step, prev)                    # padding: carry
        alphas.append(prev)
    alpha = torch.stack(alphas, 1)                                                 # (B, T_m, T_l)
    last = torch.arange(batch, device=emit.device)
    final = alpha[last, n_m - 1]                                                   # (B, T_l)
    reachable = (n_l - 1) <= 2 * (n_m - 1) + 1                                     # skips move two words
    end = (reachable[:, None] & (first == (n_l - 1)[:, None])) | (~reachable[:, None] & word_mask)  # no bool Where in ONNX Runtime
    end_log = torch.zeros_like(final).masked_fill(~end, neg)
    log_lik = _log_sum(final + end_log, 1, onnx_ops)                               # (B,)

    # beta[t] = end_log at each sample's last frame, the recursion before it, −inf after it
    frame = torch.arange(t_m, device=emit.device)
    nxt = torch.where((n_m - 1 == t_m - 1)[:, None], end_log, torch.full_like(end_log, neg))
    betas = [nxt]
    for t in range(t_m - 2, -1, -1):
        ahead = nxt + emit[:, t + 1]                                               # (B, T_l)
        step = _log_add(_log_add(ahead + log_stay, _shift_left(ahead, 1) + log_move, onnx_ops),
                        _shift_left(ahead, 2) + log_skip, onnx_ops)
        nxt = torch.where((frame[t] < n_m - 1)[:, None], step,
                          torch.where((frame[t] == n_m - 1)[:, None], end_log, nxt))
        betas.append(nxt)
    beta = torch.stack(betas, 1).flip(1)                                           # built last frame first
    log_post = (alpha + beta - log_lik[:, None, None]).masked_fill(~frame_mask[:, :, None], neg)
    return log_lik.to(log_emit.dtype), log_post.to(log_emit.dtype)

