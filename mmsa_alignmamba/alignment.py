"""Token- and distribution-level alignment of AlignMamba (METHOD.md §2–3).

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
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["OTAlignment", "relaxed_ot_align", "soft_ot_align", "uniform_align", "mmd2", "alignment_loss"]

#: ``sigmas`` of :func:`mmd2`: one bandwidth, several (their kernels are averaged), or "median".
SigmaSpec = Union[float, Sequence[float], str]

#: Most entries of one (B, rows, T_l) similarity block in :func:`relaxed_ot_align` (16 MB float32).
_COST_BLOCK_ELEMS = 1 << 22


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

    Raises:
        ValueError: if a sample has no valid anchor step (missing language must be handled by
            the caller), or on inconsistent shapes.
    """
    source, anchor, source_mask, anchor_mask = _prepare(source, anchor, source_mask, anchor_mask)
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    t_m = source.shape[1]

    with torch.no_grad(), torch.autocast(source.device.type, enabled=False):
        # Unit vectors in >= float32 (autocast off) so near-ties are not decided in half precision.
        src_unit, anc_unit = _unit(source), _unit(anchor)  # (B, T_m, d), (B, T_l, d)
        # 0 for valid anchor steps, -inf for padded ones, added inside the matmul (baddbmm):
        # one pass over each similarity block fewer than a masked_fill after it.
        blocked_out = src_unit.new_zeros(anchor_mask.shape).masked_fill_(~anchor_mask, float("-inf"))
        blocked_out = blocked_out.unsqueeze(1)  # (B, 1, T_l)
        anc_t = anc_unit.transpose(1, 2)  # (B, d, T_l)
        # Rows per block: at most block_size, and few enough that a (B, rows, T_l) block stays
        # in cache while argmax reads it back (2-3x faster at T_l = 3200 on CPU).
        rows = max(1, min(block_size, _COST_BLOCK_ELEMS // max(1, anchor.shape[0] * anchor.shape[1])))
        # argmin_j (1 − cos) = argmax_j cos
        assignment = torch.cat(
            [torch.baddbmm(blocked_out, src_unit[:, start:start + rows], anc_t).argmax(dim=-1)
             for start in range(0, t_m, rows)],
            dim=1,
        ).masked_fill(~source_mask, -1)  # (B, T_m)

    return _hard_transport(source, assignment, source_mask, anchor_mask, rescale)


def uniform_align(
    source: Tensor,
    source_mask: Optional[Tensor],
    anchor_mask: Tensor,
    rescale: bool = False,
) -> OTAlignment:
    """The time-proportional plan: valid source step of rank r (of T_m true steps) sends its
    mass 1/T_m to the valid anchor step of rank ⌊r·T_l/T_m⌋ (of T_l true steps).

    Not the paper's: it is what AlignMamba falls back to where OT has nothing to align to (the
    language anchor is missing) and the plan of the "w/o local alignment" ablation, which still
    needs audio and vision on the T_l grid to interleave them. Same result type and scale
    convention as :func:`relaxed_ot_align`; ``anchor_mask`` (B, T_l) only gives the grid.
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
    return _hard_transport(source, assignment.masked_fill(~source_mask, -1), source_mask, anchor_mask, rescale)


def _hard_transport(source: Tensor, assignment: Tensor, source_mask: Tensor, anchor_mask: Tensor,
                    rescale: bool) -> OTAlignment:
    """aligned = scale · Mᵀ X for a hard plan given as one anchor index per source step."""
    batch, t_m, width = source.shape
    t_l = anchor_mask.shape[1]
    mass = _row_mass(source_mask, source.dtype)  # (B, T_m)
    scale = _scale(anchor_mask, rescale, source.dtype)  # (B,)
    # Source row (b, i) is added to flat row b·T_l + assignment[b, i]. Padded rows were zeroed
    # and have mass 0, so parking them on column 0 adds nothing (and avoids a boolean-index sync).
    rows = assignment.clamp_min(0) + torch.arange(batch, device=source.device)[:, None] * t_l
    weighted = source * (mass * scale[:, None])[:, :, None]  # (B, T_m, d)
    aligned = source.new_zeros(batch * t_l, width).index_add(
        0, rows.flatten(), weighted.reshape(batch * t_m, width)
    ).view(batch, t_l, width)
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
) -> OTAlignment:
    """Our differentiable alignment (not the paper's); same interface as :func:`relaxed_ot_align`.

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
    t_m = source.shape[1]

    with torch.autocast(source.device.type, enabled=False):
        src_unit, anc_unit = _unit(source), _unit(anchor)  # (B, T_m, d), (B, T_l, d) >= float32
        mass = _row_mass(source_mask, src_unit.dtype)  # (B, T_m)
        if sinkhorn_iters == 0:
            blocked_out = ~anchor_mask[:, None, :]  # (B, 1, T_l)
            plan = torch.cat(
                [
                    torch.softmax(
                        _neg_cost(src_unit[:, start:start + block_size], anc_unit, temperature)
                        .masked_fill(blocked_out, float("-inf")),
                        dim=-1,
                    )
                    for start in range(0, t_m, block_size)
                ],
                dim=1,
            ) * mass[:, :, None]  # (B, T_m, T_l), rows sum to mass
        else:
            plan = _sinkhorn_plan(
                _neg_cost(src_unit, anc_unit, temperature),
                source_mask, anchor_mask, mass, temperature, sinkhorn_iters,
            )
    plan = plan.to(source.dtype)
    scale = _scale(anchor_mask, rescale, source.dtype)  # (B,)
    aligned = torch.bmm(plan.transpose(1, 2), source) * scale[:, None, None]  # (B, T_l, d)
    return OTAlignment(aligned=aligned, scale=scale, plan=plan)


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
        d_xx, d_yy, d_xy = _sq_dists(x, x), _sq_dists(y, y), _sq_dists(x, y)  # (B, T, T')
        sigma = _bandwidths(sigmas, d_xx, d_yy, d_xy, x_mask, y_mask, valid)  # (B, S)
        inv_two_var = (0.5 / sigma.square())[:, :, None, None]  # (B, S, 1, 1)
        out = (mean_kernel(d_xx, w_x, w_x) + mean_kernel(d_yy, w_y, w_y)
               - 2 * mean_kernel(d_xy, w_x, w_y))
    return torch.where(valid, out, torch.zeros_like(out))


def alignment_loss(
    aligned_a: Optional[Tensor],
    aligned_v: Optional[Tensor],
    language: Tensor,
    lang_mask: Optional[Tensor] = None,
    sigmas: SigmaSpec = (1.0,),
) -> Tensor:
    """``L_align = MMD²(X̃_v, X_l) + MMD²(X̃_a, X_l)``, a scalar.

    ``aligned_a`` / ``aligned_v``: (B, T_l, d) outputs of the OT alignment, living on the
    language steps, so ``lang_mask`` (B, T_l) masks them as well as ``language`` (B, T_l, d).
    ``None`` drops that term (ablations without a modality). The mean runs over the samples with
    at least one valid language token (so the scale does not depend on how many samples lack
    language); 0 when there is none.
    """
    lang_mask = _mask(lang_mask, language)
    per_sample = language.new_zeros(language.shape[0], dtype=torch.promote_types(
        language.dtype, torch.float32))  # (B,)
    for aligned in (aligned_v, aligned_a):
        if aligned is not None:
            per_sample = per_sample + mmd2(aligned, language, lang_mask, lang_mask, sigmas)
    has_language = lang_mask.any(1)  # (B,)
    return per_sample.sum() / has_language.sum().clamp_min(1)


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
    if isinstance(sigmas, str):
        if sigmas != "median":
            raise ValueError(f"sigmas must be a float, a sequence of floats or 'median', got {sigmas!r}")
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
    values = [float(sigmas)] if isinstance(sigmas, (int, float)) else [float(s) for s in sigmas]
    if not values or not all(s > 0 and math.isfinite(s) for s in values):
        raise ValueError(f"sigmas must be positive and finite, got {sigmas!r}")
    return torch.tensor(values, dtype=dtype, device=device).expand(batch, len(values))
