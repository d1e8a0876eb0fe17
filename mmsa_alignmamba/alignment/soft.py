"""Soft plans (ours, not the paper's): every source step spreads its mass over the words.

* :func:`soft_ot_align`: on the cosine cost, a softmax of −C/τ per source step (a relaxed plan
  with soft rows), or with ``sinkhorn_iters > 0`` entropic OT with both marginals (log-domain
  Sinkhorn);
* :func:`soft_ot_from_scores`: a softmax over any blockwise scores (the learned aligner's
  posteriors give the posterior itself).

Both return the dense plan, and gradients flow through it. The component ``soft_ot``
(:class:`SoftOT`) wraps them with the options of the model's config.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .common import (OTAlignment, ScoreBlock, anchor_scale, check_reduce, position_gap, prepare_pair,
                     prior_weight, row_mass, transported, unit_rows)

__all__ = ["soft_ot_align", "soft_ot_from_scores", "SoftOT"]


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
    source, anchor, source_mask, anchor_mask = prepare_pair(source, anchor, source_mask, anchor_mask)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if sinkhorn_iters < 0:
        raise ValueError(f"sinkhorn_iters must be >= 0, got {sinkhorn_iters}")
    values = transported(values, source, source_mask)
    prior = prior_weight(position_prior)
    with torch.autocast(source.device.type, enabled=False):
        src_unit, anc_unit = unit_rows(source), unit_rows(anchor)  # (B, T_m, d), (B, T_l, d) >= float32

    def scores(start: int, rows: int, blocked_out: Tensor) -> Tensor:  # −C/τ: (B, rows, T_l)
        logits = neg_cost(src_unit[:, start:start + rows], anc_unit, temperature) + blocked_out
        if prior is not None:
            logits = logits - prior * position_gap(source_mask, anchor_mask, start, rows, logits.dtype).square() / temperature
        return logits

    if sinkhorn_iters == 0:
        return soft_ot_from_scores(scores, values, source_mask, anchor_mask, block_size, rescale, reduce)
    with torch.autocast(source.device.type, enabled=False):
        mass = row_mass(source_mask, src_unit.dtype)  # (B, T_m)
        plan = sinkhorn_plan(scores(0, source.shape[1], torch.zeros_like(src_unit[:, :1, :1])), source_mask, anchor_mask,
                              mass, temperature, sinkhorn_iters)
    return _soft_transport(plan, values, anchor_mask, rescale, reduce)


def soft_ot_from_scores(
    scores: ScoreBlock,
    values: Tensor,
    source_mask: Tensor,
    anchor_mask: Tensor,
    block_size: int = 1024,
    rescale: bool = False,
    reduce: str = "sum",
) -> OTAlignment:
    """A relaxed plan with soft rows: each valid source step spreads its mass 1/T_m over the
    valid anchor steps by ``softmax_j(scores)`` (``scores`` as in :func:`relaxed_ot_from_scores`, here with
    gradient), and ``values`` are transported. It tends to :func:`relaxed_ot_from_scores` as the scores are
    scaled up. Returns the dense (B, T_m, T_l) plan in ``OTAlignment.plan``."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    t_m = source_mask.shape[1]
    with torch.autocast(values.device.type, enabled=False):
        dtype = torch.promote_types(values.dtype, torch.float32)
        mass = row_mass(source_mask, dtype)  # (B, T_m)
        blocked_out = values.new_zeros(anchor_mask.shape, dtype=dtype).masked_fill(~anchor_mask, float("-inf"))
        blocked_out = blocked_out.unsqueeze(1)  # (B, 1, T_l)
        plan = torch.cat([torch.softmax(scores(start, block_size, blocked_out), dim=-1)
                          for start in range(0, t_m, block_size)], dim=1) * mass[:, :, None]  # rows sum to mass
    return _soft_transport(plan, values, anchor_mask, rescale, reduce)


def _soft_transport(plan: Tensor, values: Tensor, anchor_mask: Tensor, rescale: bool, reduce: str) -> OTAlignment:
    """aligned = scale · Mᵀ X, or each anchor row divided by the mass it received (``"mean"``)."""
    plan = plan.to(values.dtype)
    scale = anchor_scale(anchor_mask, rescale, values.dtype)  # (B,)
    aligned = torch.bmm(plan.transpose(1, 2), values)  # (B, T_l, d_v)
    if check_reduce(reduce) == "mean":  # barycentric projection: divide by the mass each anchor step got
        aligned = aligned / plan.sum(1).clamp_min(torch.finfo(plan.dtype).tiny)[:, :, None]
        scale = torch.ones_like(scale)
    else:
        aligned = aligned * scale[:, None, None]
    return OTAlignment(aligned=aligned, scale=scale, plan=plan)


def neg_cost(src_unit: Tensor, anc_unit: Tensor, temperature: float) -> Tensor:
    """−C/τ = (cos − 1)/τ for unit rows (B, t, d) × (B, T_l, d) → (B, t, T_l), in [−2/τ, 0]."""
    return (torch.bmm(src_unit, anc_unit.transpose(1, 2)) - 1.0) / temperature


def padding_fill(log_kernel: Tensor, valid: Tensor) -> float:
    """A finite log-kernel value for padded entries, 10⁴ below the lowest valid one (and below 0)."""
    lowest = log_kernel.detach().masked_fill(~valid, float("inf")).amin() if bool(valid.any()) else log_kernel.new_zeros(())
    return float(torch.clamp(lowest, max=0.0)) - 1.0e4


def sinkhorn_plan(
    neg_cost: Tensor,
    source_mask: Tensor,
    anchor_mask: Tensor,
    mass: Tensor,
    temperature: float,
    iters: int,
) -> Tensor:
    """Log-domain entropic OT plan (B, T_m, T_l) with row marginal ``mass``, columns 1/T_l.

    ``iters`` ≥ 1 (the caller uses the softmax plan for 0).

    Padded entries use a finite fill 10⁴ below the lowest valid log-kernel value instead of −inf:
    a fully padded row or column then never yields logsumexp(−inf…) = −inf, whose backward is NaN.
    Their share of any valid row/column sum is < T·e^(−10⁴), i.e. zero, and they are set to exactly
    0 at the end. The fill is measured, not −2/τ − 10⁴: with the position prior, −C/τ − β·δ²/τ goes
    far below −2/τ (β = 1, τ = 0.1, 50 words: −2.4·10⁴).
    """
    valid = source_mask[:, :, None] & anchor_mask[:, None, :]  # (B, T_m, T_l)
    fill = padding_fill(neg_cost, valid)
    log_k = neg_cost.masked_fill(~valid, fill)
    log_a = torch.where(source_mask, mass.clamp_min(1e-30).log(), torch.full_like(mass, fill))
    col_mass = row_mass(anchor_mask, neg_cost.dtype)  # (B, T_l)
    log_b = torch.where(anchor_mask, col_mass.clamp_min(1e-30).log(),
                        torch.full_like(col_mass, fill))
    f = torch.zeros_like(log_a)  # (B, T_m) row potential
    for _ in range(iters):
        g = log_b - torch.logsumexp(log_k + f[:, :, None], dim=1)  # (B, T_l)
        f = log_a - torch.logsumexp(log_k + g[:, None, :], dim=2)  # (B, T_m)
    plan = torch.exp(log_k + f[:, :, None] + g[:, None, :])
    return plan.masked_fill(~valid, 0.0)


class SoftOT:
    """The component ``soft_ot`` (ours): every frame spreads its mass over the words, a softmax of
    −cost/τ on the cosine cost (Sinkhorn-balanced with ``sinkhorn_iters`` > 0), or the learned
    cost's posterior itself. Options, from the model config: ``ot_rescale``, ``ot_reduce``,
    ``ot_block_size`` and, on the cosine cost, ``ot_temperature``, ``ot_position_prior``,
    ``ot_sinkhorn_iters``."""

    def __init__(self, rescale: bool = True, reduce: str = "mean", block_size: int = 1024,
                 temperature: float = 0.1, position_prior: float = 0.0, sinkhorn_iters: int = 0):
        self.rescale, self.reduce, self.block_size = rescale, check_reduce(reduce), block_size
        self.temperature, self.position_prior, self.sinkhorn_iters = temperature, position_prior, sinkhorn_iters

    @classmethod
    def from_config(cls, cfg) -> "SoftOT":
        return cls(cfg.ot_rescale, cfg.ot_reduce, cfg.ot_block_size, cfg.ot_temperature, cfg.ot_position_prior,
                   cfg.ot_sinkhorn_iters)

    def __call__(self, source: Tensor, source_mask: Tensor, anchor: Tensor, anchor_mask: Tensor, *,
                 scores: Optional[ScoreBlock] = None) -> OTAlignment:
        common = dict(rescale=self.rescale, reduce=self.reduce)
        if scores is not None:
            return soft_ot_from_scores(scores, source, source_mask, anchor_mask, self.block_size, **common)
        return soft_ot_align(source, anchor, source_mask, anchor_mask, temperature=self.temperature,
                             block_size=self.block_size, sinkhorn_iters=self.sinkhorn_iters, values=source,
                             position_prior=self.position_prior, **common)
