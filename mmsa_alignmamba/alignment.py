"""Token- and distribution-level alignment of AlignMamba (docs/method.md §2–3).

Pure PyTorch, no MMSA import. Shapes: ``B`` batch, ``T_m`` source (audio / vision) steps,
``T_l`` anchor (language) steps, ``d`` common width. Masks are bool, ``True`` = valid token,
``None`` = every token valid.

Local alignment (§2). The paper's relaxed OT drops the column constraint of
``min Σ M(i,j) C(i,j)``, ``C(i,j) = 1 − cos(x_m^i, x_l^j)``; the optimum is closed form: every
valid source step i sends its whole mass ``1/T_m`` (true length) to ``argmin_j C(i,j)`` over the
valid anchor steps, and ``X̃_m = Mᵀ X_m`` (T_l × d). :func:`relaxed_ot_align` computes exactly
that, keeping the plan in sparse form (one anchor index and one mass per source step), so memory
is linear in T_m. :func:`soft_ot_align` is our differentiable variant (not the paper's).

Global alignment (§3). :func:`mmd2` is the biased per-sample MMD² with Gaussian kernels;
:func:`alignment_loss` is ``L_align = MMD²(X̃_v, X_l) + MMD²(X̃_a, X_l)``.

The built-in components (``ot``, ``soft_ot``, ``none``; ``mmd``, ``none``), registered through entry
points like any third party's, are at the end of the file before the diagnostics.

Alignment diagnostics: :func:`plan_hits` counts how often a plan sends a source step to its true
anchor step, where the true alignment is known (synthetic data).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import monotone_kernel
from .components import AlignOptions, ScoreBlock
from .tracing import compiled, traceable

__all__ = ["OTAlignment", "relaxed_ot_align", "soft_ot_align", "uniform_align", "relaxed_plan", "soft_plan",
           "FrameEmission", "WordAligner", "monotone_alignment", "position_gap", "plan_hits", "mmd2",
           "bandwidth_spec", "alignment_loss", "ot_local_alignment", "soft_ot_local_alignment",
           "time_proportional_local_alignment", "mmd_global_alignment", "no_global_alignment"]

#: ``sigmas`` of :func:`mmd2`: one bandwidth, several (their kernels are averaged), or "median".
SigmaSpec = Union[float, Sequence[float], str]

#: Most entries of one (B, rows, T_l) similarity block in :func:`relaxed_plan` (16 MB float32).
_COST_BLOCK_ELEMS = 1 << 22

# ScoreBlock: ``scores(start, rows, blocked_out) -> (B, rows, T_l)``: −cost of source steps
# [start, start+rows) against every anchor step, plus ``blocked_out`` (B, 1, T_l): 0 on valid
# anchor steps, −inf on padding.


@dataclass(frozen=True)
class OTAlignment:
    """Result of an OT alignment of a source sequence onto the anchor (language) steps.

    Invariant, for both variants: ``aligned == scale[:, None, None] * dense_plan().mT @ source``
    where padded source rows count as zero.

    Attributes:
        aligned: (B, T_l, d) aligned source sequence; rows of padded anchor steps are zero.
        scale: (B,) factor applied on top of the plan: 1, or the true T_l with ``rescale=True``.
        assignment: (B, T_m) long, hard plan only: anchor step chosen by each source step,
            -1 for padded source steps. ``None`` for a soft plan.
        mass: (B, T_m), hard plan only: mass sent by each source step, 1/T_m(true length) for
            valid steps, 0 for padded ones. ``None`` for a soft plan.
        plan: (B, T_m, T_l) dense plan, soft variant only (``None`` for the hard one, whose
            dense form :meth:`dense_plan` builds on demand).
    """

    aligned: Tensor
    scale: Tensor
    assignment: Optional[Tensor] = None
    mass: Optional[Tensor] = None
    plan: Optional[Tensor] = None

    @property
    def is_sparse(self) -> bool:
        """True for the hard (relaxed OT) plan, stored as ``assignment`` + ``mass``."""
        return self.plan is None

    def dense_plan(self) -> Tensor:
        """The transport plan M as a dense (B, T_m, T_l) tensor (for tests and inspection)."""
        if self.plan is not None:
            return self.plan
        batch, t_m = self.assignment.shape
        dense = self.mass.new_zeros(batch, t_m, self.aligned.shape[1])
        # Padded source steps (assignment -1) carry mass 0: park them on column 0.
        dense.scatter_(2, self.assignment.clamp_min(0).unsqueeze(-1), self.mass.unsqueeze(-1))
        return dense


def relaxed_ot_align(
    source: Tensor,
    anchor: Tensor,
    source_mask: Optional[Tensor] = None,
    anchor_mask: Optional[Tensor] = None,
    block_size: int = 1024,
    rescale: bool = False,
    *,
    values: Optional[Tensor] = None,
    position_prior: float | Tensor = 0.0,
    reduce: str = "sum",
) -> OTAlignment:
    """The paper's relaxed-OT alignment of ``source`` (B, T_m, d) onto ``anchor`` (B, T_l, d).

    Each valid source step i sends mass ``1/T_m`` (its sample's true length) to
    ``argmin_j 1 − cos(source_i, anchor_j)`` over the valid anchor steps (ties: lowest j);
    padded source steps send nothing and padded anchor steps are never chosen.
    ``aligned[b, j] = scale_b · Σ_{i: assignment[b,i]=j} mass[b,i] · source[b,i]``.

    The argmin is computed without gradient over blocks of at most ``block_size`` source rows
    (fewer when B·T_l is large, see ``_COST_BLOCK_ELEMS``), so at most a (B, block_size, T_l)
    cost block exists at once and memory stays linear in T_m. The aligned sequence is a
    scatter-add of the source rows, so gradients reach ``source`` (not ``anchor``: the argmin
    is piecewise constant).

    ``rescale``: the paper's ``Mᵀ X_m`` gives anchor step j the sum of its sources weighted by
    1/T_m, i.e. features ~T_m/T_l times smaller than a mean (with T_m = 375, T_l = 50 and
    roughly even assignments each row is a mean shrunk by 1/50). ``rescale=True`` multiplies by
    the true T_l, so that under even assignments each anchor row has the scale of the mean of
    the source steps it received (uneven assignments still weight rows by their counts).
    Default ``False`` = the paper's exact product; the model config chooses.

    Options that are ours, not the paper's (defaults reproduce the paper):

    * ``values`` (B, T_m, d_v): what is transported, when the cost is computed on other
      features than the ones that are fused (e.g. a learned alignment projection of the
      source). Default: ``source`` itself, as in the paper.
    * ``position_prior`` β ≥ 0 (float or 0-d tensor): the cost becomes
      ``1 − cos(i, j) + β·δ(i, j)²``, with ``δ`` the distance in anchor steps between step j and
      where the time-proportional plan would put source step i (see :func:`position_gap`).
      Speech is monotone in time, so words far from a frame's expected position are unlikely.
    * ``reduce``: ``"sum"`` (the paper's ``Mᵀ X``, times ``scale``) or ``"mean"``: each anchor
      step receives the mean of the source steps sent to it (the plan's barycentric
      projection, ``diag(1/colsum) Mᵀ X``), zero if none; ``rescale`` is then moot.

    Raises:
        ValueError: if a sample has no valid anchor step (missing language must be handled by
            the caller), or on inconsistent shapes.
    """
    source, anchor, source_mask, anchor_mask = _prepare(source, anchor, source_mask, anchor_mask)
    values = _values(values, source, source_mask)
    prior = _prior_weight(position_prior)
    with torch.autocast(source.device.type, enabled=False):
        # Unit vectors in >= float32 (autocast off) so near-ties are not decided in half precision.
        src_unit, anc_t = _unit(source.detach()), _unit(anchor.detach()).transpose(1, 2)  # (B, T_m, d), (B, d, T_l)

    def scores(start: int, rows: int, blocked_out: Tensor) -> Tensor:
        # argmin_j (1 − cos + β·δ²) = argmax_j (cos − β·δ²); the mask rides inside the matmul
        # (baddbmm): one pass over each block fewer than a masked_fill after it.
        if prior is not None:
            blocked_out = blocked_out - prior * position_gap(source_mask, anchor_mask, start, rows, src_unit.dtype).square()
        return torch.baddbmm(blocked_out, src_unit[:, start:start + rows], anc_t)

    return relaxed_plan(scores, values, source_mask, anchor_mask, block_size, rescale, reduce)


def relaxed_plan(
    scores: ScoreBlock,
    values: Tensor,
    source_mask: Tensor,
    anchor_mask: Tensor,
    block_size: int = 1024,
    rescale: bool = False,
    reduce: str = "sum",
) -> OTAlignment:
    """The relaxed-OT plan for any cost: every valid source step sends its mass 1/T_m to its
    lowest-cost (highest-score) valid anchor step, and ``values`` (B, T_m, d_v) are transported.

    ``scores(start, rows, blocked_out)`` returns the scores (−cost) of source steps
    [start, start+rows) against every anchor step, (B, rows, T_l), with ``blocked_out``
    (B, 1, T_l; 0 for valid anchor steps, −inf for padded ones) added. It is called over blocks
    of at most ``block_size`` rows (fewer when B·T_l is large, so a block stays in cache while
    the argmax reads it back: 2-3x faster at T_l = 3200 on CPU), without gradient: the argmax
    is piecewise constant, so gradients reach ``values`` only. Ties go to the lowest j.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    batch, t_m = source_mask.shape
    with torch.no_grad(), torch.autocast(values.device.type, enabled=False):
        dtype = torch.promote_types(values.dtype, torch.float32)
        blocked_out = values.new_zeros(anchor_mask.shape, dtype=dtype).masked_fill_(~anchor_mask, float("-inf"))
        blocked_out = blocked_out.unsqueeze(1)  # (B, 1, T_l)
        rows = max(1, min(block_size, _COST_BLOCK_ELEMS // max(1, batch * anchor_mask.shape[1])))
        assignment = torch.cat([scores(start, rows, blocked_out).argmax(dim=-1) for start in range(0, t_m, rows)],
                               dim=1).masked_fill(~source_mask, -1)  # (B, T_m)
    return _hard_transport(values, assignment, source_mask, anchor_mask, rescale, reduce)


def uniform_align(
    source: Tensor,
    source_mask: Optional[Tensor],
    anchor_mask: Tensor,
    rescale: bool = False,
    reduce: str = "sum",
) -> OTAlignment:
    """The time-proportional plan: valid source step of rank r (of T_m true steps) sends its
    mass 1/T_m to the valid anchor step of rank ⌊r·T_l/T_m⌋ (of T_l true steps).

    Not the paper's: it is what AlignMamba falls back to where OT has nothing to align to (the
    language anchor is missing) and the plan of the "w/o local alignment" ablation, which still
    needs audio and vision on the T_l grid to interleave them. Same result type and scale
    convention (``rescale``, ``reduce``) as :func:`relaxed_ot_align`; ``anchor_mask`` (B, T_l)
    only gives the grid.
    """
    if source.dim() != 3 or anchor_mask.dim() != 2 or anchor_mask.shape[0] != source.shape[0]:
        raise ValueError(f"source must be (B, T_m, d) and anchor_mask (B, T_l) with the same B, got "
                         f"{tuple(source.shape)} and {tuple(anchor_mask.shape)}")
    source_mask = _mask(source_mask, source)
    anchor_mask = anchor_mask.to(device=source.device, dtype=torch.bool)
    source = source.masked_fill(~source_mask[:, :, None], 0.0)
    t_m_true = source_mask.sum(1, keepdim=True).clamp_min(1)               # (B, 1)
    t_l_true = anchor_mask.sum(1, keepdim=True).clamp_min(1)               # (B, 1)
    rank = source_mask.long().cumsum(1) - 1                                # (B, T_m) rank among valid steps
    anchor_rank = torch.div(rank.clamp_min(0) * t_l_true, t_m_true, rounding_mode="floor")
    # Positions of the valid anchor steps, in order, first: a stable sort of "is padding".
    valid_positions = torch.sort((~anchor_mask).to(torch.uint8), dim=1, stable=True).indices  # (B, T_l)
    assignment = valid_positions.gather(1, anchor_rank.clamp_max(anchor_mask.shape[1] - 1))
    return _hard_transport(source, assignment.masked_fill(~source_mask, -1), source_mask, anchor_mask, rescale,
                           reduce)


def _hard_transport(source: Tensor, assignment: Tensor, source_mask: Tensor, anchor_mask: Tensor,
                    rescale: bool, reduce: str = "sum") -> OTAlignment:
    """aligned = scale · Mᵀ X (``reduce="sum"``) or the mean of the rows sent to each anchor step
    (``"mean"``) for a hard plan given as one anchor index per source step."""
    batch, t_m, width = source.shape
    t_l = anchor_mask.shape[1]
    mass = _row_mass(source_mask, source.dtype)  # (B, T_m)
    scale = _scale(anchor_mask, rescale, source.dtype)  # (B,)
    # Source row (b, i) is added to flat row b·T_l + assignment[b, i]. Padded rows were zeroed
    # and have mass 0, so parking them on column 0 adds nothing (and avoids a boolean-index sync).
    if torch.jit.is_tracing():
        return _dense_transport(source, assignment, mass, scale, anchor_mask, reduce)
    rows = assignment.clamp_min(0) + torch.arange(batch, device=source.device)[:, None] * t_l
    weights = mass * scale[:, None]  # (B, T_m)
    if _check_reduce(reduce) == "mean":  # each anchor row: the mean of what it receives
        received = mass.new_zeros(batch * t_l).index_add(0, rows.flatten(), mass.flatten())  # (B·T_l,)
        weights = mass / received[rows].clamp_min(torch.finfo(mass.dtype).tiny)
        scale = torch.ones_like(scale)
    aligned = source.new_zeros(batch * t_l, width).index_add(
        0, rows.flatten(), (source * weights[:, :, None]).reshape(batch * t_m, width)
    ).view(batch, t_l, width)
    return OTAlignment(aligned=aligned, scale=scale, assignment=assignment, mass=mass)


def _dense_transport(source: Tensor, assignment: Tensor, mass: Tensor, scale: Tensor, anchor_mask: Tensor,
                     reduce: str) -> OTAlignment:
    """_hard_transport for the export: ONNX turns index_add into a scatter that keeps one of the
    rows sent to the same word instead of their sum, so the plan is spelled out as a dense
    (B, T_m, T_l) matrix and applied with one batched product."""
    words = torch.arange(anchor_mask.shape[1], device=source.device)
    plan = (assignment.clamp_min(0)[:, :, None] == words[None, None, :]).to(source.dtype) * mass[:, :, None]
    if reduce == "mean":   # each word: the mean of its frames
        plan = plan / plan.sum(1, keepdim=True).clamp_min(torch.finfo(source.dtype).tiny)
        scale = torch.ones_like(scale)
    aligned = torch.bmm(plan.transpose(1, 2), source) * scale[:, None, None]
    return OTAlignment(aligned=aligned, scale=scale, assignment=assignment, mass=mass)


def soft_ot_align(
    source: Tensor,
    anchor: Tensor,
    source_mask: Optional[Tensor] = None,
    anchor_mask: Optional[Tensor] = None,
    temperature: float = 0.1,
    block_size: int = 1024,
    sinkhorn_iters: int = 0,
    rescale: bool = False,
    *,
    values: Optional[Tensor] = None,
    position_prior: float | Tensor = 0.0,
    reduce: str = "sum",
) -> OTAlignment:
    """Our differentiable alignment (not the paper's); same interface as :func:`relaxed_ot_align`,
    including ``values``, ``position_prior`` (here differentiable when given as a tensor) and
    ``reduce``.

    ``sinkhorn_iters == 0``: each source row's mass 1/T_m is spread by
    ``softmax_j(−C(i,j)/τ)`` over the valid anchor steps, computed over blocks of ``block_size``
    source rows. It is still a relaxed plan (rows fixed, columns free) and tends to the hard plan
    of :func:`relaxed_ot_align` as ``temperature`` → 0.

    ``sinkhorn_iters > 0``: entropic OT with both marginals (rows 1/T_m, columns 1/T_l over the
    valid steps), log-domain Sinkhorn started from the same kernel. The column updates need the
    whole cost, so the full (B, T_m, T_l) matrix is built and ``block_size`` is ignored; autograd
    keeps one such matrix per iteration. The last update is the row one, so row sums are exact
    and column sums converge with the iterations. As τ → 0 this tends to full (balanced) OT,
    not to the relaxed plan.

    Either way gradients flow through the plan into ``source`` and ``anchor``, and the dense plan
    is returned in ``OTAlignment.plan`` (``assignment`` and ``mass`` are None).
    """
    source, anchor, source_mask, anchor_mask = _prepare(source, anchor, source_mask, anchor_mask)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if sinkhorn_iters < 0:
        raise ValueError(f"sinkhorn_iters must be >= 0, got {sinkhorn_iters}")
    values = _values(values, source, source_mask)
    prior = _prior_weight(position_prior)
    with torch.autocast(source.device.type, enabled=False):
        src_unit, anc_unit = _unit(source), _unit(anchor)  # (B, T_m, d), (B, T_l, d) >= float32

    def scores(start: int, rows: int, blocked_out: Tensor) -> Tensor:  # −C/τ: (B, rows, T_l)
        logits = _neg_cost(src_unit[:, start:start + rows], anc_unit, temperature) + blocked_out
        if prior is not None:
            logits = logits - prior * position_gap(source_mask, anchor_mask, start, rows, logits.dtype).square() / temperature
        return logits

    if sinkhorn_iters == 0:
        return soft_plan(scores, values, source_mask, anchor_mask, block_size, rescale, reduce)
    with torch.autocast(source.device.type, enabled=False):
        mass = _row_mass(source_mask, src_unit.dtype)  # (B, T_m)
        plan = _sinkhorn_plan(scores(0, source.shape[1], torch.zeros_like(src_unit[:, :1, :1])), source_mask, anchor_mask,
                              mass, temperature, sinkhorn_iters)
    return _soft_transport(plan, values, anchor_mask, rescale, reduce)


def soft_plan(
    scores: ScoreBlock,
    values: Tensor,
    source_mask: Tensor,
    anchor_mask: Tensor,
    block_size: int = 1024,
    rescale: bool = False,
    reduce: str = "sum",
) -> OTAlignment:
    """A relaxed plan with soft rows: each valid source step spreads its mass 1/T_m over the
    valid anchor steps by ``softmax_j(scores)`` (``scores`` as in :func:`relaxed_plan`, here with
    gradient), and ``values`` are transported. It tends to :func:`relaxed_plan` as the scores are
    scaled up. Returns the dense (B, T_m, T_l) plan in ``OTAlignment.plan``."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    t_m = source_mask.shape[1]
    with torch.autocast(values.device.type, enabled=False):
        dtype = torch.promote_types(values.dtype, torch.float32)
        mass = _row_mass(source_mask, dtype)  # (B, T_m)
        blocked_out = values.new_zeros(anchor_mask.shape, dtype=dtype).masked_fill(~anchor_mask, float("-inf"))
        blocked_out = blocked_out.unsqueeze(1)  # (B, 1, T_l)
        plan = torch.cat([torch.softmax(scores(start, block_size, blocked_out), dim=-1)
                          for start in range(0, t_m, block_size)], dim=1) * mass[:, :, None]  # rows sum to mass
    return _soft_transport(plan, values, anchor_mask, rescale, reduce)


def _soft_transport(plan: Tensor, values: Tensor, anchor_mask: Tensor, rescale: bool, reduce: str) -> OTAlignment:
    """aligned = scale · Mᵀ X, or each anchor row divided by the mass it received (``"mean"``)."""
    plan = plan.to(values.dtype)
    scale = _scale(anchor_mask, rescale, values.dtype)  # (B,)
    aligned = torch.bmm(plan.transpose(1, 2), values)  # (B, T_l, d_v)
    if _check_reduce(reduce) == "mean":  # barycentric projection: divide by the mass each anchor step got
        aligned = aligned / plan.sum(1).clamp_min(torch.finfo(plan.dtype).tiny)[:, :, None]
        scale = torch.ones_like(scale)
    else:
        aligned = aligned * scale[:, None, None]
    return OTAlignment(aligned=aligned, scale=scale, plan=plan)


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
        return traceable(_forward_backward)(log_emit, frame_mask, word_mask, float(skip), True)
    return _MonotoneForwardBackward.apply(log_emit, frame_mask, word_mask, float(skip))


class _MonotoneForwardBackward(torch.autograd.Function):
    # Hand-written backward: autograd through a Python loop of T_m steps would record ~10 ops per
    # step; the forward-backward recursions give the exact gradient (the posterior) in two passes.

    @staticmethod
    def forward(ctx, log_emit, frame_mask, word_mask, skip):
        with torch.no_grad():  # the C kernel on CPU, else TorchScript: no Python between the steps
            result = monotone_kernel.forward_backward(log_emit.detach(), frame_mask, word_mask, skip)
            if result is None:
                result = compiled(_forward_backward)(log_emit.detach(), frame_mask, word_mask, skip, False)
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


def _forward_backward(log_emit: Tensor, frame_mask: Tensor, word_mask: Tensor, skip: float,
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


def _grid_emissions(emits: List[Tensor], masks: List[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    """The sources on one clock: per sample a grid of G = max(n_m) steps, step g collecting the
    log-likelihood of each source's frame at relative time (g + ½)/G, weighted n_m/G so that
    every frame counts once. ``emits``: (B, T_m, T_l) per source; ``masks``: (B, T_m) per source.
    -> (grid log-likelihoods (B, G, T_l), grid mask (B, G), G per sample (B,))."""
    counts = [mask.sum(1) for mask in masks]                                   # (B,) frames per source
    n_grid = torch.stack(counts).amax(0).clamp_min(1)                          # (B,)
    if torch.jit.is_tracing():
        # the export: as many grid steps as the longest padded source, a length the graph keeps
        # dynamic (int() would freeze it); the extra steps are masked, so nothing changes
        steps = torch.stack([torch._shape_as_tensor(mask)[1] for mask in masks]).amax()
    else:
        steps = int(n_grid.max())
    device = masks[0].device
    grid_mask = torch.arange(steps, device=device)[None, :] < n_grid[:, None]
    g = torch.arange(steps, device=device, dtype=torch.float64)[None, :] + 0.5   # (1, G)
    grid_emit = None
    for e, count in zip(emits, counts):
        n = count.clamp_min(1)
        frame = (g * n[:, None] / n_grid[:, None]).floor().long().clamp(max=e.shape[1] - 1)  # (B, G)
        weight = (count / n_grid).to(e.dtype)[:, None, None]                     # 0 where absent
        picked = e.gather(1, frame[..., None].expand(-1, -1, e.shape[2]))
        term = weight * picked.masked_fill(weight == 0, 0.0)
        grid_emit = term if grid_emit is None else grid_emit + term
    return grid_emit, grid_mask, n_grid


def _grid_posteriors(grid_post: Tensor, masks: List[Tensor], n_grid: Tensor) -> List[Tensor]:
    """Each source frame's log posterior over the words is its grid step's: (B, T_m, T_l) per source."""
    steps = grid_post.shape[1]
    posts = []
    for mask in masks:
        count = mask.sum(1).clamp_min(1)
        k = torch.arange(mask.shape[1], device=mask.device, dtype=torch.float64)[None, :] + 0.5
        step = (k * n_grid[:, None] / count[:, None]).floor().long().clamp(max=steps - 1)
        posts.append(grid_post.gather(1, step[..., None].expand(-1, -1, grid_post.shape[2]))
                     .masked_fill(~mask[..., None], float("-inf")))
    return posts


class FrameEmission(nn.Module):
    """How one source modality's frames look in each word: ``log p(x_i | word j)``.

    Each word j predicts the frames spoken in it: a Gaussian with mean ``read(h_j)`` (h_j the
    word's encoded features, d_model wide) and a learned diagonal spread, over the source's raw
    frames centred per utterance (which removes speaker and channel offsets) and scaled per
    feature by running statistics (as batch norm keeps them, so that at inference a sample's
    plan does not depend on the rest of its batch).
    """

    def __init__(self, d_model: int, d_frame: int):
        super().__init__()
        self.read = nn.Linear(d_model, d_frame)                    # word features -> expected frame
        self.log_spread = nn.Parameter(torch.zeros(d_frame))       # per-feature log std of frames
        # running per-feature scale, a cumulative average (the raw inputs do not drift)
        self.norm = nn.BatchNorm1d(d_frame, affine=False, momentum=None)

    @property
    def width(self) -> int:
        return self.read.out_features

    def observations(self, frames: Tensor, frame_mask: Tensor) -> Tensor:
        """(B, T_m, d_frame) raw frames -> centred per utterance, scaled per feature; padding 0.
        Call once per forward: in training it updates the running statistics."""
        weights = frame_mask.to(frames.dtype)[..., None]
        centred = frames - (frames * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp_min(1.0)
        if not self.training:  # running statistics: one map per feature, no gather of the valid frames
            scale = torch.rsqrt(self.norm.running_var + self.norm.eps)
            return ((centred.detach() - self.norm.running_mean) * scale).masked_fill(~frame_mask[..., None], 0.0)
        out = torch.zeros_like(centred)
        valid = centred[frame_mask].detach()                                   # (N_valid, d_frame)
        if valid.shape[0] > 1:
            out[frame_mask] = self.norm(valid)
        elif valid.shape[0]:  # batch statistics need two frames: one frame uses the running ones
            out[frame_mask] = F.batch_norm(valid, self.norm.running_mean, self.norm.running_var, eps=self.norm.eps)
        return out

    def log_likelihood(self, obs: Tensor, words: Tensor) -> Tensor:
        """log p(x_i | word j), (B, T_m, T_l). As matrix products:
        −½ Σ_d (x_d − μ_jd)²/s_d² = −½ [x²/s² · 1 − 2 (x/s²)·μ_j + μ_j²/s² · 1]."""
        mean = self.read(words)                                                # (B, T_l, d)
        inv_var = torch.exp(-2 * self.log_spread)                              # (d,)
        quad = ((obs.square() * inv_var).sum(-1, keepdim=True)                 # (B, T_m, 1)
                - 2 * (obs * inv_var) @ mean.transpose(1, 2)                   # (B, T_m, T_l)
                + (mean.square() * inv_var).sum(-1)[:, None, :])               # (B, 1, T_l)
        return -0.5 * quad - self.log_spread.sum() - 0.5 * obs.shape[-1] * math.log(2 * math.pi)


class WordAligner(nn.Module):
    """A learned cost for relaxed OT (ours, not the paper's): ``C(i, j) = −log p(frame i of a
    source is spoken in word j | frames, words)``, the negative log posterior of a small
    alignment model learned from the data alone (no true alignments).

    Why: the paper's cost, ``1 − cos`` between encoded frames and words, is only meaningful if
    the encoders already map a frame and its word to similar vectors, and nothing trains them to:
    the argmin passes no gradient, and the task loss cannot say which frame belongs to which
    word. This model learns the alignment the way speech forced aligners and IBM-style translation
    models do: each word predicts its frames (:class:`FrameEmission`, one per source), and the
    model is trained by maximising the likelihood of the frames (:meth:`fit`, :meth:`nll`),
    which a word can only raise by predicting the frames that really belong to it. Structures:

    * ``"monotone"``: words are spoken in order, each for a while, and every source records the
      same speech on one clock (frame k of n_m sits at relative time (k + ½)/n_m). One
      left-to-right chain over the words (:func:`monotone_alignment`) runs on a common grid of
      max(n_m) steps per sample, whose step g collects the log-likelihood of the frame of each
      source at that time, weighted n_m/G so every frame counts once; a frame's posterior is its
      grid step's. Audio and vision thus pool their evidence on where each word starts and ends.
    * ``"mixture"``: each frame on its own, a mixture over the words with a prior
      ``π(j | i) ∝ exp(−β·δ(i, j)²)`` towards the time-proportional position (:func:`position_gap`,
      β learned, starting at ``position_prior``).

    The posterior's argmax over words is the relaxed-OT plan (:meth:`scores` for
    :func:`relaxed_plan` / :func:`soft_plan`).
    """

    STRUCTURES = ("monotone", "mixture")

    def __init__(self, d_model: int, frame_dims: Mapping[str, int], structure: str = "monotone",
                 position_prior: float = 0.05, skip: float = 0.05):
        super().__init__()
        if structure not in self.STRUCTURES:
            raise ValueError(f"structure must be one of {self.STRUCTURES}, got {structure!r}")
        if not position_prior > 0:
            raise ValueError(f"position_prior must be > 0 (it is learned in log space), got {position_prior}")
        if not 0 < skip < 1:
            raise ValueError(f"skip must be in (0, 1), got {skip}")
        self.structure, self.skip = structure, skip
        self.emissions = nn.ModuleDict({m: FrameEmission(d_model, d) for m, d in frame_dims.items()})
        if structure == "mixture":
            self.log_beta = nn.Parameter(torch.tensor(math.log(position_prior)))

    def fit(self, frames: Mapping[str, Tuple[Tensor, Tensor]], words: Tensor, word_mask: Tensor,
            present: Optional[Mapping[str, Tensor]] = None) -> Tuple[Tensor, dict]:
        """``frames``: source -> (raw frames (B, T_m, d_m), mask (B, T_m)); ``words`` (B, T_l, d_model);
        ``present``: source -> (B,) bool, which samples have it (default all).
        -> (log_lik (B,): log p(the present sources' frames), {source: log posteriors (B, T_m, T_l),
        −inf on padding and impossible pairs}). In training it updates the running statistics."""
        emit, masks = {}, {}
        for m, (x, mask) in frames.items():
            keep = mask if present is None else mask & present[m][:, None]
            emit[m] = self.emissions[m].log_likelihood(self.emissions[m].observations(x, keep), words)
            masks[m] = keep
        if self.structure == "mixture":
            return self._mixture(emit, masks, word_mask)
        return self._monotone(emit, masks, word_mask)

    def _mixture(self, emit, masks, word_mask):
        log_lik, posts = 0.0, {}
        for m, e in emit.items():
            gap = position_gap(masks[m], word_mask, dtype=e.dtype)
            prior = torch.log_softmax((-self.log_beta.exp() * gap.square()).masked_fill(~word_mask[:, None, :], float("-inf")), -1)
            joint = (e + prior).masked_fill(~word_mask[:, None, :], float("-inf"))
            per_frame = torch.logsumexp(joint, dim=-1)                          # (B, T_m)
            posts[m] = (joint - per_frame[..., None]).masked_fill(~masks[m][..., None], float("-inf"))
            log_lik = log_lik + per_frame.masked_fill(~masks[m], 0.0).sum(1)
        return log_lik, posts

    def _monotone(self, emit, masks, word_mask):
        names = list(emit)
        frame_masks = [masks[m] for m in names]
        grid_emit, grid_mask, n_grid = _grid_emissions([emit[m] for m in names], frame_masks)
        log_lik, grid_post = monotone_alignment(grid_emit, grid_mask, word_mask, self.skip)
        posts = _grid_posteriors(grid_post, frame_masks, n_grid)
        return log_lik, dict(zip(names, posts))

    def nll(self, log_lik: Tensor, frames: Mapping[str, Tuple[Tensor, Tensor]],
            present: Optional[Mapping[str, Tensor]] = None, samples: Optional[Tensor] = None) -> Tensor:
        """The training loss L_plan: −log p(frames) per frame and feature, over ``samples`` (B,) bool."""
        samples = torch.ones_like(log_lik, dtype=torch.bool) if samples is None else samples
        size = sum((mask & (samples if present is None else samples & present[m])[:, None]).sum()
                   * self.emissions[m].width for m, (_, mask) in frames.items())
        return -(log_lik * samples).sum() / max(int(size), 1)

    @staticmethod
    def scores(log_post: Tensor) -> ScoreBlock:
        """The posteriors as blockwise scores for :func:`relaxed_plan` and :func:`soft_plan`."""
        def block(start: int, rows: int, blocked_out: Tensor) -> Tensor:
            # −inf only where impossible; a floor keeps a fully impossible row (padding) finite
            return log_post[:, start:start + rows].clamp_min(-1e4) + blocked_out
        return block


# ---------------------------------------------------------------------------------------------
# The built-in components (registered under mmsa.local_alignments / mmsa.global_alignments; the
# contracts are in mmsa_alignmamba.components)


def ot_local_alignment(source: Tensor, source_mask: Tensor, anchor: Tensor, anchor_mask: Tensor, *,
                       scores: Optional[ScoreBlock] = None, options: AlignOptions = AlignOptions()) -> OTAlignment:
    """``ot``, the paper's: every frame to its cheapest word (relaxed OT), on the cosine cost of
    ``source``/``anchor`` or on a learned cost given as ``scores``."""
    common = dict(rescale=options.rescale, reduce=options.reduce)
    if scores is not None:
        return relaxed_plan(scores, source, source_mask, anchor_mask, options.block_size, **common)
    return relaxed_ot_align(source, anchor, source_mask, anchor_mask, options.block_size, values=source,
                            position_prior=options.position_prior, **common)


def soft_ot_local_alignment(source: Tensor, source_mask: Tensor, anchor: Tensor, anchor_mask: Tensor, *,
                            scores: Optional[ScoreBlock] = None,
                            options: AlignOptions = AlignOptions()) -> OTAlignment:
    """``soft_ot`` (ours): every frame spreads its mass over the words, softmax of −cost/τ on the
    cosine cost, or the learned cost's posterior itself."""
    common = dict(rescale=options.rescale, reduce=options.reduce)
    if scores is not None:
        return soft_plan(scores, source, source_mask, anchor_mask, options.block_size, **common)
    return soft_ot_align(source, anchor, source_mask, anchor_mask, temperature=options.temperature,
                         block_size=options.block_size, values=source, position_prior=options.position_prior,
                         **common)


def time_proportional_local_alignment(source: Tensor, source_mask: Tensor, anchor: Tensor, anchor_mask: Tensor,
                                      *, scores: Optional[ScoreBlock] = None,
                                      options: AlignOptions = AlignOptions()) -> OTAlignment:
    """``none``: no alignment learned or computed, frame r of n to word ⌊r·n_l/n⌋ (:func:`uniform_align`)."""
    return uniform_align(source, source_mask, anchor_mask, rescale=options.rescale, reduce=options.reduce)


def mmd_global_alignment(aligned: Mapping[str, Tensor], anchor: Tensor, anchor_mask: Tensor, *,
                         sigmas: SigmaSpec = (1.0,), present: Optional[Mapping[str, Tensor]] = None) -> Tensor:
    """``mmd``, the paper's L_align: :func:`alignment_loss`."""
    return alignment_loss(aligned, anchor, anchor_mask, sigmas, present=present)


def no_global_alignment(aligned: Mapping[str, Tensor], anchor: Tensor, anchor_mask: Tensor, *,
                        sigmas: SigmaSpec = (1.0,), present: Optional[Mapping[str, Tensor]] = None) -> Tensor:
    """``none``: no global alignment loss (the "w/o MMD" ablation)."""
    return anchor.new_zeros(())


def plan_hits(alignment: OTAlignment, true_anchor: Tensor) -> Tensor:
    """How often a plan sends source steps to their true anchor step (alignment diagnostics).

    ``true_anchor`` (B, T_m) long: the anchor index of each source step's true partner (for
    speech, the text token of the word being spoken), < 0 where it has none (pauses, padding).
    Returns a (3,) float tensor ``[exact, within_one, steps]``: over the source steps that have a
    true partner and are valid in the plan, the number sent to it exactly, the number sent within
    ±1 anchor step of it, and how many such steps there are. A hard plan counts steps; a soft plan
    counts the share of each step's mass that lands there. Sums over batches stay exact.
    """
    batch, t_m = true_anchor.shape
    true_anchor = true_anchor.to(alignment.aligned.device).long()
    if alignment.is_sparse:
        chosen = alignment.assignment  # (B, T_m), -1 on padding
        if chosen.shape != true_anchor.shape:
            raise ValueError(f"true_anchor {tuple(true_anchor.shape)} does not match the plan's {tuple(chosen.shape)}")
        counted = (true_anchor >= 0) & (chosen >= 0)
        gap = (chosen - true_anchor).abs()
        exact, near = (gap == 0) & counted, (gap <= 1) & counted
        return torch.stack([exact.sum(), near.sum(), counted.sum()]).float()
    plan = alignment.plan  # (B, T_m, T_l)
    if plan.shape[:2] != true_anchor.shape:
        raise ValueError(f"true_anchor {tuple(true_anchor.shape)} does not match the plan's {tuple(plan.shape[:2])}")
    mass = plan.sum(-1)  # (B, T_m)
    counted = (true_anchor >= 0) & (mass > 0)
    share = plan / mass.clamp_min(torch.finfo(plan.dtype).tiny)[:, :, None]
    steps = torch.arange(plan.shape[2], device=plan.device)
    gap = (steps[None, None, :] - true_anchor[:, :, None]).abs()  # (B, T_m, T_l)
    exact = (share * (gap == 0)).sum(-1)[counted].sum()
    near = (share * (gap <= 1)).sum(-1)[counted].sum()
    return torch.stack([exact, near, counted.sum().to(plan.dtype)]).float()


def mmd2(
    x: Tensor,
    y: Tensor,
    x_mask: Optional[Tensor] = None,
    y_mask: Optional[Tensor] = None,
    sigmas: SigmaSpec = (1.0,),
) -> Tensor:
    """Biased per-sample MMD² between token sets ``x`` (B, T_x, d) and ``y`` (B, T_y, d).

    ``MMD² = mean k(x,x') + mean k(y,y') − 2 mean k(x,y)`` over the valid tokens of each sample
    (diagonal terms included: the biased V-statistic, ≥ 0), with
    ``k(x,y) = exp(−||x−y||² / 2σ²)``. ``geomloss.SamplesLoss("gaussian", blur=σ)`` equals ½·MMD².

    ``sigmas``:
      * a float σ;
      * a sequence of σ: the kernels are *averaged* (not summed), so the value stays in [0, 2]
        whatever the number of bandwidths and the loss weight λ keeps its meaning;
      * ``"median"``: per sample, σ = median (lower median) of the pairwise distances between
        distinct valid tokens of the pooled set x ∪ y, detached (no gradient through σ).
        A sample whose pooled tokens all coincide gets σ = 1 (its MMD² is 0 for any σ).

    Returns:
        (B,) MMD² per sample. A sample with no valid token in ``x`` or in ``y`` gets exactly 0
        (and zero gradient); callers that average should count only samples where both
        ``x_mask`` and ``y_mask`` have a valid token (as :func:`alignment_loss` does).
    """
    if x.dim() != 3 or y.dim() != 3 or x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
        raise ValueError(f"x and y must be (B, T, d) with equal B and d, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    x_mask, y_mask = _mask(x_mask, x), _mask(y_mask, y)
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    # Zeroed padding keeps garbage (inf/nan) padded features out of the distance products.
    x = x.to(dtype).masked_fill(~x_mask[:, :, None], 0.0)
    y = y.to(dtype).masked_fill(~y_mask[:, :, None], 0.0)
    n_x, n_y = x_mask.sum(1), y_mask.sum(1)  # (B,)
    valid = (n_x > 0) & (n_y > 0)  # (B,)
    w_x = x_mask.to(dtype) / n_x.clamp_min(1).to(dtype)[:, None]  # (B, T_x), uniform weights
    w_y = y_mask.to(dtype) / n_y.clamp_min(1).to(dtype)[:, None]  # (B, T_y)
    # Distances do not change under a common shift; centring both sets on their pooled mean keeps
    # the expansion below from cancelling large norms (features far from 0) in float32.
    centre = ((x.sum(1) + y.sum(1)) / (n_x + n_y).clamp_min(1).to(dtype)[:, None])[:, None, :]  # (B, 1, d)
    x = (x - centre).masked_fill(~x_mask[:, :, None], 0.0)
    y = (y - centre).masked_fill(~y_mask[:, :, None], 0.0)

    def mean_kernel(sq_dist: Tensor, w_left: Tensor, w_right: Tensor) -> Tensor:
        # One (B, T, T') kernel matrix per σ in turn, averaged: peak memory stays one matrix
        # whatever the number of bandwidths.
        n_sigmas = inv_two_var.shape[1]
        total = sq_dist.new_zeros(sq_dist.shape[0])
        for s in range(n_sigmas):
            k = torch.exp(-sq_dist * inv_two_var[:, s])  # (B, T, T')
            total = total + torch.einsum("bi,bij,bj->b", w_left, k, w_right)
        return total / n_sigmas  # (B,)

    # Autocast off: the ||x||² + ||y||² − 2xy expansion cancels badly in half precision.
    with torch.autocast(x.device.type, enabled=False):
        d_xx, d_yy, d_xy = _self_sq_dists(x), _self_sq_dists(y), _sq_dists(x, y)  # (B, T, T')
        sigma = _bandwidths(sigmas, d_xx, d_yy, d_xy, x_mask, y_mask, valid)  # (B, S)
        inv_two_var = (0.5 / sigma.square())[:, :, None, None]  # (B, S, 1, 1)
        out = (mean_kernel(d_xx, w_x, w_x) + mean_kernel(d_yy, w_y, w_y)
               - 2 * mean_kernel(d_xy, w_x, w_y))
    return torch.where(valid, out, torch.zeros_like(out))


def alignment_loss(
    aligned: Mapping[str, Tensor],
    language: Tensor,
    lang_mask: Optional[Tensor] = None,
    sigmas: SigmaSpec = (1.0,),
    present: Optional[Mapping[str, Tensor]] = None,
) -> Tensor:
    """``L_align = Σ_m MMD²(X̃_m, X_l)`` (the paper's ``MMD²(X̃_v, X_l) + MMD²(X̃_a, X_l)``), a scalar.

    ``aligned``: modality name -> (B, T_l, d) output of the local alignment, living on the
    language steps, so ``lang_mask`` (B, T_l) masks them as well as ``language`` (B, T_l, d).
    A modality left out (ablations) has no term. ``present``: modality name -> (B,) bool, which
    samples have that modality (missing-modality protocols); each term is the mean of its
    per-sample MMD² over the samples that have both the modality and language (so its scale does
    not depend on how many lack one), 0 when there are none.
    """
    lang_mask = _mask(lang_mask, language)
    has_language = lang_mask.any(1)  # (B,)
    total = language.new_zeros((), dtype=torch.promote_types(language.dtype, torch.float32))
    for name, x in aligned.items():
        both = has_language if present is None or name not in present else has_language & present[name].bool()
        per_sample = mmd2(x, language, lang_mask, lang_mask, sigmas)  # (B,)
        total = total + (per_sample * both).sum() / both.sum().clamp_min(1)
    return total


# ---------------------------------------------------------------------------------------------
# helpers


def _mask(mask: Optional[Tensor], x: Tensor) -> Tensor:
    """(B, T) bool mask for ``x`` (B, T, d); ``None`` means all valid."""
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if mask.shape != x.shape[:2]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match {tuple(x.shape[:2])}")
    return mask.to(device=x.device, dtype=torch.bool)


def _prepare(
    source: Tensor, anchor: Tensor, source_mask: Optional[Tensor], anchor_mask: Optional[Tensor]
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Checks shapes, builds masks, zeroes padded rows; raises if a sample lacks any anchor."""
    if source.dim() != 3 or anchor.dim() != 3:
        raise ValueError(f"source and anchor must be (B, T, d), got {tuple(source.shape)} and "
                         f"{tuple(anchor.shape)}")
    if source.shape[0] != anchor.shape[0] or source.shape[2] != anchor.shape[2]:
        raise ValueError(f"source {tuple(source.shape)} and anchor {tuple(anchor.shape)} need "
                         "the same batch size and width")
    source_mask, anchor_mask = _mask(source_mask, source), _mask(anchor_mask, anchor)
    no_anchor = ~anchor_mask.any(1)
    if bool(no_anchor.any()):
        raise ValueError(
            "OT alignment needs at least one valid anchor (language) step per sample; samples "
            f"{no_anchor.nonzero().flatten().tolist()} have none (handle missing language first)"
        )
    # Zeroed padding: garbage (inf/nan) in padded rows must not reach products or gradients.
    source = source.masked_fill(~source_mask[:, :, None], 0.0)
    anchor = anchor.masked_fill(~anchor_mask[:, :, None], 0.0)
    return source, anchor, source_mask, anchor_mask


def position_gap(source_mask: Tensor, anchor_mask: Tensor, start: int = 0, rows: Optional[int] = None,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """δ (B, rows, T_l): for source steps [start, start+rows), the distance in anchor steps
    between anchor step j and the time-proportional position of the source step,
    ``δ(i, j) = (r_i + ½)·n_l/n_m − (q_j + ½)``, with r_i and q_j the ranks of i and j among the
    valid steps and n_m, n_l the true lengths. 0 on padding (the callers mask it anyway)."""
    rows = source_mask.shape[1] - start if rows is None else rows
    n_m = source_mask.sum(1, keepdim=True).clamp_min(1).to(dtype)             # (B, 1)
    n_l = anchor_mask.sum(1, keepdim=True).clamp_min(1).to(dtype)             # (B, 1)
    src_rank = (source_mask.long().cumsum(1) - 1).clamp_min(0)[:, start:start + rows].to(dtype)
    anc_rank = (anchor_mask.long().cumsum(1) - 1).clamp_min(0).to(dtype)      # (B, T_l)
    expected = (src_rank + 0.5) * n_l / n_m                                    # (B, rows)
    gap = expected[:, :, None] - (anc_rank + 0.5)[:, None, :]                  # (B, rows, T_l)
    valid = source_mask[:, start:start + rows, None] & anchor_mask[:, None, :]
    return gap * valid


def _prior_weight(position_prior: float | Tensor) -> Optional[Tensor | float]:
    """β of the position prior, or None when it is off (0)."""
    if torch.is_tensor(position_prior):
        if position_prior.dim() != 0 or not bool(position_prior.detach() >= 0):
            raise ValueError("position_prior must be a non-negative scalar")
        return position_prior
    if not (position_prior >= 0 and math.isfinite(position_prior)):
        raise ValueError(f"position_prior must be >= 0, got {position_prior}")
    return float(position_prior) if position_prior > 0 else None


def _check_reduce(reduce: str) -> str:
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    return reduce


def _values(values: Optional[Tensor], source: Tensor, source_mask: Tensor) -> Tensor:
    """What a plan transports: ``values`` (B, T_m, d_v) with padding zeroed, or ``source``."""
    if values is None:
        return source
    if values.dim() != 3 or values.shape[:2] != source.shape[:2]:
        raise ValueError(f"values must be (B, T_m, d_v) like source's {tuple(source.shape[:2])}, got "
                         f"{tuple(values.shape)}")
    return values.masked_fill(~source_mask[:, :, None], 0.0)


def _unit(x: Tensor) -> Tensor:
    """Rows of ``x`` (B, T, d) scaled to unit norm, in at least float32 (zero rows stay zero)."""
    return F.normalize(x.to(torch.promote_types(x.dtype, torch.float32)), dim=-1, eps=1e-12)


def _neg_cost(src_unit: Tensor, anc_unit: Tensor, temperature: float) -> Tensor:
    """−C/τ = (cos − 1)/τ for unit rows (B, t, d) × (B, T_l, d) → (B, t, T_l), in [−2/τ, 0]."""
    return (torch.bmm(src_unit, anc_unit.transpose(1, 2)) - 1.0) / temperature


def _row_mass(source_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, T_m) source marginal: 1/true length on valid steps, 0 on padding."""
    lengths = source_mask.sum(1, keepdim=True).clamp_min(1).to(dtype)
    return source_mask.to(dtype) / lengths


def _scale(anchor_mask: Tensor, rescale: bool, dtype: torch.dtype) -> Tensor:
    """(B,) factor on top of the plan: the true T_l if ``rescale`` else 1."""
    if rescale:
        return anchor_mask.sum(1).to(dtype)
    return torch.ones(anchor_mask.shape[0], dtype=dtype, device=anchor_mask.device)


def _sinkhorn_plan(
    neg_cost: Tensor,
    source_mask: Tensor,
    anchor_mask: Tensor,
    mass: Tensor,
    temperature: float,
    iters: int,
) -> Tensor:
    """Log-domain entropic OT plan (B, T_m, T_l) with row marginal ``mass``, columns 1/T_l.

    ``iters`` ≥ 1 (the caller uses the softmax plan for 0).

    Padded entries use a finite fill below every valid log-kernel value (−C/τ ≥ −2/τ) instead of
    −inf: a fully padded row or column then never yields logsumexp(−inf…) = −inf, whose
    backward is NaN. Their share of any valid row/column sum is < T·e^(−10⁴), i.e. zero, and they
    are set to exactly 0 at the end.
    """
    fill = -2.0 / temperature - 1.0e4
    valid = source_mask[:, :, None] & anchor_mask[:, None, :]  # (B, T_m, T_l)
    log_k = neg_cost.masked_fill(~valid, fill)
    log_a = torch.where(source_mask, mass.clamp_min(1e-30).log(), torch.full_like(mass, fill))
    col_mass = _row_mass(anchor_mask, neg_cost.dtype)  # (B, T_l)
    log_b = torch.where(anchor_mask, col_mass.clamp_min(1e-30).log(),
                        torch.full_like(col_mass, fill))
    f = torch.zeros_like(log_a)  # (B, T_m) row potential
    for _ in range(iters):
        g = log_b - torch.logsumexp(log_k + f[:, :, None], dim=1)  # (B, T_l)
        f = log_a - torch.logsumexp(log_k + g[:, None, :], dim=2)  # (B, T_m)
    plan = torch.exp(log_k + f[:, :, None] + g[:, None, :])
    return plan.masked_fill(~valid, 0.0)


def _sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """(B, T, T') squared Euclidean distances via ||a||² + ||b||² − 2ab, clamped at 0."""
    sq = a.square().sum(-1)[:, :, None] + b.square().sum(-1)[:, None, :] - 2 * a @ b.transpose(1, 2)
    return sq.clamp_min(0.0)


def _self_sq_dists(a: Tensor) -> Tensor:
    """(B, T, T) squared distances within one set. The expansion leaves rounding residue on the
    diagonal, where the true value is exactly 0: set it so."""
    eye = torch.eye(a.shape[1], dtype=torch.bool, device=a.device)
    return _sq_dists(a, a).masked_fill(eye, 0.0)


def _bandwidths(
    sigmas: SigmaSpec,
    d_xx: Tensor,
    d_yy: Tensor,
    d_xy: Tensor,
    x_mask: Tensor,
    y_mask: Tensor,
    valid: Tensor,
) -> Tensor:
    """(B, S) bandwidths: the given σ broadcast over the batch, or the per-sample median."""
    batch, dtype, device = d_xx.shape[0], d_xx.dtype, d_xx.device
    sigmas = bandwidth_spec(sigmas)
    if sigmas == "median":
        with torch.no_grad():
            pooled = torch.cat([torch.cat([d_xx, d_xy], 2),
                                torch.cat([d_xy.transpose(1, 2), d_yy], 2)], 1)  # (B, N, N)
            pooled_mask = torch.cat([x_mask, y_mask], 1)  # (B, N)
            n = pooled_mask.shape[1]
            distinct = torch.ones(n, n, dtype=torch.bool, device=device).triu(1)  # pairs i < j
            pairs = pooled_mask[:, :, None] & pooled_mask[:, None, :] & distinct
            dist = pooled.sqrt().masked_fill(~pairs, float("nan")).flatten(1)
            median = dist.nanmedian(dim=1).values  # (B,), NaN where no pair
            usable = valid & (median > 0)  # NaN compares False
            return torch.where(usable, median, torch.ones_like(median))[:, None]
    return torch.tensor(sigmas, dtype=dtype, device=device).expand(batch, len(sigmas))


def bandwidth_spec(sigmas: SigmaSpec) -> str | tuple[float, ...]:
    """``sigmas`` of :func:`mmd2` in one form: ``"median"``, or a tuple of bandwidths (one float
    becomes a 1-tuple). ValueError unless they are positive and finite."""
    if isinstance(sigmas, str):
        if sigmas != "median":
            raise ValueError(f"sigmas must be a float, a sequence of floats or 'median', got {sigmas!r}")
        return sigmas
    values = (float(sigmas),) if isinstance(sigmas, (int, float)) else tuple(float(s) for s in sigmas)
    if not values or not all(s > 0 and math.isfinite(s) for s in values):
        raise ValueError(f"sigmas must be positive and finite, got {sigmas!r}")
    return values
