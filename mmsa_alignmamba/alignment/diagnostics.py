"""Alignment diagnostics: how often a plan sends source steps to their true anchor step, where
the true alignment is known (synthetic data)."""
from __future__ import annotations

import torch
from torch import Tensor

from .common import OTAlignment

__all__ = ["plan_hits"]


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


