"""The forward–backward pass of the learned aligner's left-to-right word chain (ours).

:func:`monotone_alignment` gives log p(frames) and each frame's log posterior over the words for
a chain that starts in the first word, ends in the last, and at each frame stays, moves to the
next word or skips one. The recursions run as a compiled C kernel on CPU (float32,
:mod:`mmsa_alignmamba.monotone_kernel`), else as TorchScript; the ONNX export runs them as a
Loop (:mod:`mmsa_alignmamba.tracing`). Its gradient is the posterior, computed here directly.
"""
from __future__ import annotations

import logging
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import monotone_kernel
from ..tracing import compiled, traceable

__all__ = ["monotone_alignment", "best_words", "posterior_best", "forward_backward", "starts_or_full"]

logger = logging.getLogger("mmsa_alignmamba")
_triton_usable = True   # until the Triton programs fail once


def monotone_alignment(log_emit: Tensor, frame_mask: Tensor, word_mask: Tensor,
                       skip: float = 0.05, starts: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
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

    The banded form (``starts`` (B, T_m) long, see :mod:`.band`): frame i considers only the words
    ``starts[:, i] + k``, k < W, and ``log_emit`` and ``log_post`` are (B, T_m, W) over those
    words (band slot k), every other word impossible. ``starts`` must not decrease along the
    frames by more than two words a frame (a chain's move), and stays put on padded frames.
    """
    if torch.jit.is_tracing():   # the ONNX export: no autograd, the recursions as a scripted loop
        return traceable(forward_backward)(log_emit, frame_mask, word_mask, float(skip), True, starts_or_full(frame_mask, starts))
    return _MonotoneForwardBackward.apply(log_emit, frame_mask, word_mask, float(skip), starts)


def best_words(log_emit: Tensor, frame_mask: Tensor, word_mask: Tensor, skip: float = 0.05,
               starts: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """What :func:`monotone_alignment` gives when only each frame's most probable word is needed
    (the relaxed-OT plan at inference): ``(log_lik (B,), best (B, T_m) long)``, the word index of
    the posterior's argmax (the lowest on ties), −1 on padding; ``frame_mask`` a prefix. On CPU
    the C kernel computes it without the (B, T_m, W) posteriors, in O(√T_m · W) work per thread;
    elsewhere, and while tracing (the export), it is the argmax of the posteriors. No gradient."""
    with torch.no_grad():
        result = None if torch.jit.is_tracing() else \
            monotone_kernel.best_words(log_emit.detach(), frame_mask, word_mask, float(skip), starts)
        if result is not None:
            return result
        log_lik, log_post = monotone_alignment(log_emit.detach(), frame_mask, word_mask, skip, starts)
        return log_lik, posterior_best(log_post, frame_mask, starts)


def posterior_best(log_post: Tensor, frame_mask: Tensor, starts: Optional[Tensor] = None) -> Tensor:
    """Each frame's most probable word from :func:`monotone_alignment`'s posteriors (B, T_m, W):
    (B, T_m) long, the lowest word on ties, −1 on padding (what :func:`best_words` gives)."""
    return (log_post.argmax(-1) + starts_or_full(frame_mask, starts)).masked_fill(~frame_mask, -1)


class _MonotoneForwardBackward(torch.autograd.Function):
    # Hand-written backward: autograd through a Python loop of T_m steps would record ~10 ops per
    # step; the forward-backward recursions give the exact gradient (the posterior) in two passes.

    @staticmethod
    def forward(ctx, log_emit, frame_mask, word_mask, skip, starts):
        with torch.no_grad():  # the C kernel on CPU, Triton on CUDA, else TorchScript: no Python between the steps
            result = monotone_kernel.forward_backward(log_emit.detach(), frame_mask, word_mask, skip, starts)
            if result is None and log_emit.is_cuda:
                result = _on_cuda(log_emit.detach(), frame_mask, word_mask, skip, starts)
            if result is None:
                result = compiled(forward_backward)(log_emit.detach(), frame_mask, word_mask, skip, False,
                                                    starts_or_full(frame_mask, starts))
            log_lik, log_post = result
        ctx.save_for_backward(log_post)
        ctx.mark_non_differentiable(log_post)
        return log_lik, log_post

    @staticmethod
    def backward(ctx, grad_log_lik, _grad_post):
        (log_post,) = ctx.saved_tensors
        return log_post.exp() * grad_log_lik[:, None, None], None, None, None, None


def _on_cuda(log_emit, frame_mask, word_mask, skip, starts):
    """The Triton programs (:mod:`mmsa_alignmamba.monotone_triton`, imported on first CUDA use), or
    None where they do not apply or have failed once (then TorchScript from there on, one log line)."""
    global _triton_usable
    if not _triton_usable:
        return None
    try:
        from .. import monotone_triton
        return monotone_triton.forward_backward(log_emit, frame_mask, word_mask, skip, starts)
    except Exception as error:  # no Triton for this GPU or driver, a compile error, ...
        _triton_usable = False
        logger.warning("the aligner's Triton forward-backward failed (%s); TorchScript runs it on CUDA from now on",
                       error)
        return None


def starts_or_full(frame_mask: Tensor, starts: Optional[Tensor]) -> Tensor:
    """The band's first words, (B, T_m); the full lattice is the band that starts at word 0."""
    return torch.zeros(frame_mask.shape, dtype=torch.long, device=frame_mask.device) if starts is None else starts


def _take(x: Tensor, offset: int, by: Tensor) -> Tensor:
    """x[:, k + offset + by] at slot k, −inf outside the row: (B, W) -> (B, W). ``by`` (B,): how
    far the band moved between the two rows (0 in the full lattice); offset + by lies in
    [−2, 2], a chain's step."""
    pad = x.new_full((x.shape[0], 2), float("-inf"))
    slot = torch.arange(x.shape[1], device=x.device)[None, :] + (by[:, None] + offset + 2)   # into the padded row
    return torch.cat([pad, x, pad], 1).gather(1, slot)


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
                      onnx_ops: bool, starts: Tensor) -> Tuple[Tensor, Tensor]:
    # Written in the subset of Python TorchScript compiles: it runs compiled (a loop of small steps
    # gains ~2x without Python between them), and the ONNX export runs the same recursions as a
    # Loop over the frames (see tracing.py); ``onnx_ops`` swaps in the two operations ONNX lacks.
    # ``starts`` (B, T_m): each frame's band (monotone_alignment); zeros with W = T_l: the full
    # lattice (no None: an ONNX graph has no None-typed values).
    dtype = torch.float64 if log_emit.dtype == torch.float64 else torch.float32
    batch, t_m, width = log_emit.shape[0], log_emit.shape[1], log_emit.shape[2]
    neg = float("-inf")
    n_m = frame_mask.sum(1).clamp_min(1)                                           # (B,)
    n_l = word_mask.sum(1).clamp_min(1)
    last = torch.arange(batch, device=log_emit.device)
    slot = torch.arange(width, device=log_emit.device)[None, :]                     # (1, W)
    word = starts[:, :, None] + slot[None]                                         # (B, T_m, W): word of each slot
    valid = word_mask.gather(1, word.flatten(1)).view(word.shape)
    first, final_word = word[:, 0], word[last, n_m - 1]                            # (B, W)
    emit = log_emit.to(dtype).masked_fill(~valid, neg)                             # (B, T_m, W)
    advance = ((n_l - 1).to(dtype) / (n_m - 1).clamp_min(1).to(dtype) / (1 + skip)).clamp(1e-4, 0.95)[:, None]
    log_stay, log_move, log_skip = torch.log1p(-advance), torch.log(advance * (1 - skip)), torch.log(advance * skip)

    impossible = torch.full((1, width), neg, dtype=dtype, device=emit.device)
    start = torch.where(first == 0, math.log(1 - skip), torch.where(first == 1, math.log(skip), impossible))
    start = start.expand(batch, width)
    prev = start + emit[:, 0]
    alphas = [prev]
    for t in range(1, t_m):
        by = starts[:, t] - starts[:, t - 1]
        step = _log_add(_log_add(_take(prev, 0, by) + log_stay, _take(prev, -1, by) + log_move, onnx_ops),
                        _take(prev, -2, by) + log_skip, onnx_ops) + emit[:, t]
        prev = torch.where(frame_mask[:, t, None], step, prev)                    # padding: carry
        alphas.append(prev)
    alpha = torch.stack(alphas, 1)                                                 # (B, T_m, W)
    final = alpha[last, n_m - 1]                                                   # (B, W)
    reachable = (n_l - 1) <= 2 * (n_m - 1) + 1                                     # skips move two words
    end = (reachable[:, None] & (final_word == (n_l - 1)[:, None])) | (~reachable[:, None] & valid[last, n_m - 1])  # no bool Where in ONNX Runtime
    end_log = torch.zeros_like(final).masked_fill(~end, neg)
    log_lik = _log_sum(final + end_log, 1, onnx_ops)                               # (B,)

    # beta[t] = end_log at each sample's last frame, the recursion before it, −inf after it
    frame = torch.arange(t_m, device=emit.device)
    nxt = torch.where((n_m - 1 == t_m - 1)[:, None], end_log, torch.full_like(end_log, neg))
    betas = [nxt]
    for t in range(t_m - 2, -1, -1):
        ahead = nxt + emit[:, t + 1]                                               # (B, W)
        back = starts[:, t] - starts[:, t + 1]
        step = _log_add(_log_add(_take(ahead, 0, back) + log_stay, _take(ahead, 1, back) + log_move, onnx_ops),
                        _take(ahead, 2, back) + log_skip, onnx_ops)
        nxt = torch.where((frame[t] < n_m - 1)[:, None], step,
                          torch.where((frame[t] == n_m - 1)[:, None], end_log, nxt))
        betas.append(nxt)
    beta = torch.stack(betas, 1).flip(1)                                           # built last frame first
    log_post = (alpha + beta - log_lik[:, None, None]).masked_fill(~frame_mask[:, :, None], neg)
    return log_lik.to(log_emit.dtype), log_post.to(log_emit.dtype)
