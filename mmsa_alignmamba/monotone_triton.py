"""The alignment model's forward-backward on CUDA, in Triton: one launch per direction, one
program per sample, as ``monotone_kernel.c`` runs on CPU.

As tensor operators (TorchScript) each grid step is a dozen operators on a (B, W) row, so on a GPU
the chain is ~12 launches per step, ~12,000 a batch at MOSI's 500 steps, each far too small to
fill the device. Here each sample's program walks its steps itself with the row in registers:
the forward program writes alpha into the posteriors' buffer row by row (and the log-likelihood),
the backward program keeps beta in a one-row scratch and turns each alpha row into the posterior.
Same recursions, same layouts and the same finite "impossible" sentinel as the C kernel (see
there); the full lattice is the band of T_l slots from word 0. Per-sample constants (lengths, the
three moves' log-probabilities) are computed before the launches as batched tensor operators.

Serves CUDA float32 calls with finite emissions where Triton imports; anything else returns None
(the caller runs TorchScript). ``TRITON_INTERPRET=1`` runs the same programs on CPU tensors
through Triton's interpreter, which is how the tests check them without a GPU.
"""
from __future__ import annotations

import math
import os
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["forward_backward", "interpreting"]

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def interpreting() -> bool:
    """Whether Triton runs its programs in the interpreter, on CPU tensors (``TRITON_INTERPRET=1``
    when this module was imported)."""
    return _INTERPRET


try:  # decorated at import: Triton reads TRITON_INTERPRET then
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - Triton ships with CUDA builds of torch
    triton = None

if triton is not None:
    NEG = tl.constexpr(-1e30)                # the C kernel's finite "impossible"
    IMPOSSIBLE_BELOW = tl.constexpr(-1e29)   # below it: -inf in the output
    @triton.jit
    def _lse3(a, b, c):
        m = tl.maximum(tl.maximum(a, b), c)
        return m + tl.log(tl.exp(a - m) + tl.exp(b - m) + tl.exp(c - m))

    @triton.jit
    def _larger(a, b):
        return tl.maximum(a, b)

    @triton.jit
    def _plus(a, b):
        return a + b

    @triton.jit
    def _slot_valid(word_ptr, lo, k, W, T_l):
        ok = (k < W) & (lo + k < T_l)
        return ok & (tl.load(word_ptr + lo + k, mask=ok, other=0) != 0)

    @triton.jit
    def _forward(emit_ptr, frame_ptr, word_ptr, starts_ptr, stay_ptr, move_ptr, jump_ptr, n_m_ptr, n_l_ptr,
                end_any_ptr, post_ptr, lik_ptr, T_m, T_l, W, log_first, log_second, BLOCK: tl.constexpr):
        b = tl.program_id(0)
        k = tl.arange(0, BLOCK)
        inside = k < W
        emit, post = emit_ptr + b * T_m * W, post_ptr + b * T_m * W
        frames, words, starts = frame_ptr + b * T_m, word_ptr + b * T_l, starts_ptr + b * T_m
        stay, move, jump = tl.load(stay_ptr + b), tl.load(move_ptr + b), tl.load(jump_ptr + b)
        lo = tl.load(starts)
        word = lo + k
        start = tl.where(word == 0, log_first, tl.where(word == 1, log_second, NEG))
        alpha = tl.where(_slot_valid(words, lo, k, W, T_l), start + tl.load(emit + k, mask=inside, other=0.0), NEG)
        tl.store(post + k, alpha, mask=inside)
        for t in range(1, T_m):
            tl.debug_barrier()                     # the previous row, stored by other threads of the program
            lo_prev = lo
            lo = tl.load(starts + t)
            s = k + (lo - lo_prev)                 # slot k here is slot s of the previous row
            row = post + (t - 1) * W
            p0 = tl.load(row + s, mask=inside & (s >= 0) & (s < W), other=NEG)
            p1 = tl.load(row + s - 1, mask=inside & (s >= 1) & (s - 1 < W), other=NEG)
            p2 = tl.load(row + s - 2, mask=inside & (s >= 2) & (s - 2 < W), other=NEG)
            e = tl.load(emit + t * W + k, mask=inside, other=0.0)
            step = tl.where(_slot_valid(words, lo, k, W, T_l), _lse3(p0 + stay, p1 + move, p2 + jump) + e, NEG)
            carried = tl.load(row + k, mask=inside, other=NEG)              # padding carries the row
            alpha = tl.where(tl.load(frames + t) != 0, step, carried)
            tl.store(post + t * W + k, alpha, mask=inside)
        # the end: the last word, or anywhere where the last word cannot be reached
        tl.debug_barrier()
        last = tl.load(n_m_ptr + b) - 1
        lo_end = tl.load(starts + last)
        n_l = tl.load(n_l_ptr + b)
        end = tl.where(tl.load(end_any_ptr + b) != 0, _slot_valid(words, lo_end, k, W, T_l), inside & (lo_end + k == n_l - 1))
        final = tl.load(post + last * W + k, mask=inside, other=NEG) + tl.where(end, 0.0, NEG)
        # tl.reduce with our own combiners, not tl.max / tl.sum: those are jit functions of Triton's
        # own, which the interpreter only runs when TRITON_INTERPRET was set before Triton's import
        top = tl.reduce(final, 0, _larger)
        tl.store(lik_ptr + b, top + tl.log(tl.reduce(tl.where(inside, tl.exp(final - top), 0.0), 0, _plus)))

    @triton.jit
    def _backward(emit_ptr, frame_ptr, word_ptr, starts_ptr, stay_ptr, move_ptr, jump_ptr, n_m_ptr, n_l_ptr,
                 end_any_ptr, post_ptr, lik_ptr, scratch_ptr, T_m, T_l, W, BLOCK: tl.constexpr):
        b = tl.program_id(0)
        k = tl.arange(0, BLOCK)
        inside = k < W
        emit, post, ahead_row = emit_ptr + b * T_m * W, post_ptr + b * T_m * W, scratch_ptr + b * W
        frames, words, starts = frame_ptr + b * T_m, word_ptr + b * T_l, starts_ptr + b * T_m
        stay, move, jump = tl.load(stay_ptr + b), tl.load(move_ptr + b), tl.load(jump_ptr + b)
        last = tl.load(n_m_ptr + b) - 1
        lo_end = tl.load(starts + last)
        n_l = tl.load(n_l_ptr + b)
        end_ok = tl.where(tl.load(end_any_ptr + b) != 0, _slot_valid(words, lo_end, k, W, T_l), inside & (lo_end + k == n_l - 1))
        end = tl.where(end_ok, 0.0, NEG)
        total = tl.load(lik_ptr + b)
        beta = tl.where(last == T_m - 1, end, NEG)
        for i in range(0, T_m):
            t = T_m - 1 - i
            if t < T_m - 1:
                lo_next = tl.load(starts + t + 1)
                lo = tl.load(starts + t)
                ahead = tl.where(_slot_valid(words, lo_next, k, W, T_l),
                                 beta + tl.load(emit + (t + 1) * W + k, mask=inside, other=0.0), NEG)
                tl.debug_barrier()                 # the last step's reads of the scratch row are done
                tl.store(ahead_row + k, ahead, mask=inside)
                tl.debug_barrier()
                s = k - (lo_next - lo)             # slot k here is slot s of the next row
                a0 = tl.load(ahead_row + s, mask=inside & (s >= 0) & (s < W), other=NEG)
                a1 = tl.load(ahead_row + s + 1, mask=inside & (s + 1 >= 0) & (s + 1 < W), other=NEG)
                a2 = tl.load(ahead_row + s + 2, mask=inside & (s + 2 >= 0) & (s + 2 < W), other=NEG)
                step = _lse3(a0 + stay, a1 + move, a2 + jump)
                beta = tl.where(t < last, step, tl.where(t == last, end, beta))
            v = tl.load(post + t * W + k, mask=inside, other=NEG) + beta - total
            ok = (tl.load(frames + t) != 0) & (v > IMPOSSIBLE_BELOW)
            tl.store(post + t * W + k, tl.where(ok, v, float("-inf")), mask=inside)
        tl.store(lik_ptr + b, tl.where(total > IMPOSSIBLE_BELOW, total, float("-inf")))



def forward_backward(log_emit: Tensor, frame_mask: Tensor, word_mask: Tensor, skip: float,
                     starts: Optional[Tensor] = None) -> Optional[Tuple[Tensor, Tensor]]:
    """(log_lik (B,), log_post (B, T_m, W)) as ``alignment.lattice.forward_backward`` computes them,
    from two launches of B programs; None where it does not apply (not CUDA float32 or, under
    the interpreter, not CPU float32; non-finite emissions; no Triton). Inputs as there."""
    if log_emit.device.type != ("cpu" if _INTERPRET else "cuda") or log_emit.dtype != torch.float32 \
            or log_emit.requires_grad or not bool(torch.isfinite(log_emit).all()):
        return None
    if triton is None:
        return None
    batch, t_m, width = log_emit.shape
    t_l = word_mask.shape[1]
    device = log_emit.device
    emit = log_emit.contiguous()
    frames = frame_mask.to(torch.int8).contiguous()
    words = word_mask.to(torch.int8).contiguous()
    band = (torch.zeros(batch, t_m, dtype=torch.int64, device=device) if starts is None
            else starts.to(torch.int64).contiguous())
    # per-sample constants, batched: as lattice.forward_backward computes them
    n_m = frame_mask.sum(1).clamp_min(1)
    n_l = word_mask.sum(1).clamp_min(1)
    advance = ((n_l - 1).float() / (n_m - 1).clamp_min(1).float() / (1 + skip)).clamp(1e-4, 0.95)
    stay, move, jump = torch.log1p(-advance), torch.log(advance * (1 - skip)), torch.log(advance * skip)
    end_any = ((n_l - 1) > 2 * (n_m - 1) + 1).to(torch.int8)           # the last word cannot be reached
    log_lik = emit.new_empty(batch)
    log_post = emit.new_empty(batch, t_m, width)
    scratch = emit.new_empty(batch, width)
    block = max(16, 1 << (width - 1).bit_length())
    constants = (frames, words, band, stay.contiguous(), move.contiguous(), jump.contiguous(),
                 n_m.to(torch.int64), n_l.to(torch.int64), end_any)
    _forward[(batch,)](emit, *constants, log_post, log_lik, t_m, t_l, width,
                      math.log(1 - skip), math.log(skip), BLOCK=block)
    _backward[(batch,)](emit, *constants, log_post, log_lik, scratch, t_m, t_l, width, BLOCK=block)
    return log_lik, log_post
