"""Relaxed optimal transport (the paper's local alignment) and the other hard plans.

The paper's relaxed OT drops the column constraint of ``min Σ M(i,j) C(i,j)``; the optimum is
closed form: every valid source step i sends its whole mass ``1/T_m`` (true length) to
``argmin_j C(i, j)`` over the valid anchor steps, and ``X̃_m = Mᵀ X_m`` (T_l × d). The plan is
kept in sparse form (one anchor index and one mass per source step), so memory is linear in T_m.

* :func:`relaxed_ot_align`: on the paper's cost ``C = 1 − cos`` of the encoded features;
* :func:`relaxed_ot_from_scores`: on any cost given as blockwise scores (e.g. the learned
  aligner's posteriors, :mod:`.aligner`);
* :func:`time_proportional`: frame r of n to word ⌊r·n_l/n⌋, no cost at all (the "w/o local
  alignment" ablation, and the model's fallback where language is missing).

The components ``ot`` (:class:`RelaxedOT`) and ``none`` (:class:`TimeProportional`) wrap them
with the options of the model's config (:mod:`mmsa_alignmamba.components`).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .common import (OTAlignment, ScoreBlock, SparseScores, anchor_scale, check_reduce, position_gap, prepare_pair,
                     prior_weight, row_mass, transported, unit_rows, valid_mask)

__all__ = ["relaxed_ot_align", "relaxed_ot_from_scores", "time_proportional", "RelaxedOT", "TimeProportional"]

#: Most entries of one (B, rows, T_l) similarity block in :func:`relaxed_ot_from_scores` (16 MB float32).
_COST_BLOCK_ELEMS = 1 << 22


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
    source, anchor, source_mask, anchor_mask = prepare_pair(source, anchor, source_mask, anchor_mask)
    values = transported(values, source, source_mask)
    prior = prior_weight(position_prior)
    with torch.autocast(source.device.type, enabled=False):
        # Unit vectors in >= float32 (autocast off) so near-ties are not decided in half precision.
        src_unit, anc_t = unit_rows(source.detach()), unit_rows(anchor.detach()).transpose(1, 2)  # (B, T_m, d), (B, d, T_l)

    def scores(start: int, rows: int, blocked_out: Tensor) -> Tensor:
        # argmin_j (1 − cos + β·δ²) = argmax_j (cos − β·δ²); the mask rides inside the matmul
        # (baddbmm): one pass over each block fewer than a masked_fill after it.
        if prior is not None:
            blocked_out = blocked_out - prior * position_gap(source_mask, anchor_mask, start, rows, src_unit.dtype).square()
        return torch.baddbmm(blocked_out, src_unit[:, start:start + rows], anc_t)

    return relaxed_ot_from_scores(scores, values, source_mask, anchor_mask, block_size, rescale, reduce)


def relaxed_ot_from_scores(
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
        if isinstance(scores, SparseScores):   # a band or best words: read without dense rows
            assignment = scores.argmax()
        else:
            rows = max(1, min(block_size, _COST_BLOCK_ELEMS // max(1, batch * anchor_mask.shape[1])))
            assignment = torch.cat([scores(start, rows, blocked_out).argmax(dim=-1) for start in range(0, t_m, rows)],
                                   dim=1)
        assignment = assignment.masked_fill(~source_mask, -1)  # (B, T_m)
    return _hard_transport(values, assignment, source_mask, anchor_mask, rescale, reduce)


def time_proportional(
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
    source_mask = valid_mask(source_mask, source)
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
    mass = row_mass(source_mask, source.dtype)  # (B, T_m)
    scale = anchor_scale(anchor_mask, rescale, source.dtype)  # (B,)
    # Source row (b, i) is added to flat row b·T_l + assignment[b, i]. Padded rows were zeroed
    # and have mass 0, so parking them on column 0 adds nothing (and avoids a boolean-index sync).
    if torch.jit.is_tracing():
        return _dense_transport(source, assignment, mass, scale, anchor_mask, reduce)
    rows = assignment.clamp_min(0) + torch.arange(batch, device=source.device)[:, None] * t_l
    weights = mass * scale[:, None]  # (B, T_m)
    if check_reduce(reduce) == "mean":  # each anchor row: the mean of what it receives
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



class RelaxedOT:
    """The component ``ot`` (the paper's): every frame to its cheapest word. On the cosine cost of
    ``source``/``anchor``, or on a learned cost given as ``scores`` (the aligner's posteriors).
    Options, from the model config: ``ot_rescale``, ``ot_reduce``, ``ot_block_size`` and, on the
    cosine cost, ``ot_position_prior``."""

    def __init__(self, rescale: bool = True, reduce: str = "mean", block_size: int = 1024,
                 position_prior: float = 0.0):
        self.rescale, self.reduce, self.block_size = rescale, check_reduce(reduce), block_size
        self.position_prior = position_prior

    @classmethod
    def from_config(cls, cfg) -> "RelaxedOT":
        return cls(cfg.ot_rescale, cfg.ot_reduce, cfg.ot_block_size, cfg.ot_position_prior)

    def __call__(self, source: Tensor, source_mask: Tensor, anchor: Tensor, anchor_mask: Tensor, *,
                 scores: Optional[ScoreBlock] = None) -> OTAlignment:
        common = dict(rescale=self.rescale, reduce=self.reduce)
        if scores is not None:
            return relaxed_ot_from_scores(scores, source, source_mask, anchor_mask, self.block_size, **common)
        return relaxed_ot_align(source, anchor, source_mask, anchor_mask, self.block_size, values=source,
                                position_prior=self.position_prior, **common)


class TimeProportional:
    """The component ``none``: no alignment learned or computed, frame r of n to word ⌊r·n_l/n⌋
    (:func:`time_proportional`). Options: ``ot_rescale``, ``ot_reduce``."""

    def __init__(self, rescale: bool = True, reduce: str = "mean"):
        self.rescale, self.reduce = rescale, check_reduce(reduce)

    @classmethod
    def from_config(cls, cfg) -> "TimeProportional":
        return cls(cfg.ot_rescale, cfg.ot_reduce)

    def __call__(self, source: Tensor, source_mask: Tensor, anchor: Optional[Tensor], anchor_mask: Tensor, *,
                 scores: Optional[ScoreBlock] = None) -> OTAlignment:
        return time_proportional(source, source_mask, anchor_mask, rescale=self.rescale, reduce=self.reduce)
