"""Global alignment (the paper's, §3): MMD² between the aligned sources and language.

:func:`mmd2` is the biased per-sample MMD² with Gaussian kernels; :func:`alignment_loss` is
``L_align = MMD²(X̃_v, X_l) + MMD²(X̃_a, X_l)``. The components ``mmd`` (:class:`MMDAlignment`)
and ``none`` (:class:`NoGlobalAlignment`) wrap them with the options of the model's config.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

from .common import valid_mask

__all__ = ["SigmaSpec", "mmd2", "alignment_loss", "bandwidth_spec", "MMDAlignment", "NoGlobalAlignment"]

#: ``sigmas`` of :func:`mmd2`: one bandwidth, several (their kernels are averaged), or "median".
SigmaSpec = Union[float, Sequence[float], str]


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
    x_mask, y_mask = valid_mask(x_mask, x), valid_mask(y_mask, y)
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
    lang_mask = valid_mask(lang_mask, language)
    has_language = lang_mask.any(1)  # (B,)
    total = language.new_zeros((), dtype=torch.promote_types(language.dtype, torch.float32))
    for name, x in aligned.items():
        both = has_language if present is None or name not in present else has_language & present[name].bool()
        per_sample = mmd2(x, language, lang_mask, lang_mask, sigmas)  # (B,)
        total = total + (per_sample * both).sum() / both.sum().clamp_min(1)
    return total




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


class MMDAlignment:
    """The component ``mmd``, the paper's L_align (:func:`alignment_loss`). Option, from the model
    config: ``mmd_sigmas``."""

    def __init__(self, sigmas: SigmaSpec = (1.0,)):
        self.sigmas = bandwidth_spec(sigmas)

    @classmethod
    def from_config(cls, cfg) -> "MMDAlignment":
        return cls(cfg.mmd_sigmas)

    def __call__(self, aligned: Mapping[str, Tensor], anchor: Tensor, anchor_mask: Tensor, *,
                 present: Optional[Mapping[str, Tensor]] = None) -> Tensor:
        return alignment_loss(aligned, anchor, anchor_mask, self.sigmas, present=present)


class NoGlobalAlignment:
    """The component ``none``: no global alignment loss (the "w/o MMD" ablation)."""

    @classmethod
    def from_config(cls, cfg) -> "NoGlobalAlignment":
        return cls()

    def __call__(self, aligned: Mapping[str, Tensor], anchor: Tensor, anchor_mask: Tensor, *,
                 present: Optional[Mapping[str, Tensor]] = None) -> Tensor:
        return anchor.new_zeros(())
