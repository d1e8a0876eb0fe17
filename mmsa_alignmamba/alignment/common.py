"""What every local alignment shares: the result type, masks, marginals and the position prior.

Shapes: ``B`` batch, ``T_m`` source (audio / vision) steps, ``T_l`` anchor (language) steps, ``d``
common width. Masks are bool, ``True`` = valid step, ``None`` = every step valid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["OTAlignment", "ScoreBlock", "SparseScores", "valid_mask", "prepare_pair", "position_gap", "prior_weight",
           "check_reduce", "transported", "unit_rows", "row_mass", "anchor_scale"]

#: The cost of a plan as blockwise scores: ``scores(start, rows, blocked_out) -> (B, rows, T_l)``,
#: −cost of source steps [start, start+rows) against every anchor step, plus ``blocked_out``
#: (B, 1, T_l): 0 on valid anchor steps, −inf on padding.
ScoreBlock = Callable[[int, int, Tensor], Tensor]


@dataclass(frozen=True)
class SparseScores:
    """Scores that are −inf outside a few anchor steps per source step (the learned aligner's
    band, or its best words): a :data:`ScoreBlock` that makes them dense one block of rows at a
    time (what the soft plan reads), plus ``argmax() -> (B, T_m)``, each source step's
    highest-scoring anchor step read without any dense row (what the relaxed-OT plan reads), so
    the plan stays O(T_m·W) instead of O(T_m·T_l). Both give the same steps (lowest on ties)."""
    block: ScoreBlock
    argmax: Callable[[], Tensor]

    def __call__(self, start: int, rows: int, blocked_out: Tensor) -> Tensor:
        return self.block(start, rows, blocked_out)


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



def valid_mask(mask: Optional[Tensor], x: Tensor) -> Tensor:
    """(B, T) bool mask for ``x`` (B, T, d); ``None`` means all valid."""
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if mask.shape != x.shape[:2]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match {tuple(x.shape[:2])}")
    return mask.to(device=x.device, dtype=torch.bool)


def prepare_pair(
    source: Tensor, anchor: Tensor, source_mask: Optional[Tensor], anchor_mask: Optional[Tensor]
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Checks shapes, builds masks, zeroes padded rows; raises if a sample lacks any anchor."""
    if source.dim() != 3 or anchor.dim() != 3:
        raise ValueError(f"source and anchor must be (B, T, d), got {tuple(source.shape)} and "
                         f"{tuple(anchor.shape)}")
    if source.shape[0] != anchor.shape[0] or source.shape[2] != anchor.shape[2]:
        raise ValueError(f"source {tuple(source.shape)} and anchor {tuple(anchor.shape)} need "
                         "the same batch size and width")
    source_mask, anchor_mask = valid_mask(source_mask, source), valid_mask(anchor_mask, anchor)
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


def prior_weight(position_prior: float | Tensor) -> Optional[Tensor | float]:
    """β of the position prior, or None when it is off (0)."""
    if torch.is_tensor(position_prior):
        if position_prior.dim() != 0 or not bool(position_prior.detach() >= 0):
            raise ValueError("position_prior must be a non-negative scalar")
        return position_prior
    if not (position_prior >= 0 and math.isfinite(position_prior)):
        raise ValueError(f"position_prior must be >= 0, got {position_prior}")
    return float(position_prior) if position_prior > 0 else None


def check_reduce(reduce: str) -> str:
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    return reduce


def transported(values: Optional[Tensor], source: Tensor, source_mask: Tensor) -> Tensor:
    """What a plan transports: ``values`` (B, T_m, d_v) with padding zeroed, or ``source``."""
    if values is None:
        return source
    if values.dim() != 3 or values.shape[:2] != source.shape[:2]:
        raise ValueError(f"values must be (B, T_m, d_v) like source's {tuple(source.shape[:2])}, got "
                         f"{tuple(values.shape)}")
    return values.masked_fill(~source_mask[:, :, None], 0.0)


def unit_rows(x: Tensor) -> Tensor:
    """Rows of ``x`` (B, T, d) scaled to unit norm, in at least float32 (zero rows stay zero)."""
    return F.normalize(x.to(torch.promote_types(x.dtype, torch.float32)), dim=-1, eps=1e-12)


def row_mass(source_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, T_m) source marginal: 1/true length on valid steps, 0 on padding."""
    lengths = source_mask.sum(1, keepdim=True).clamp_min(1).to(dtype)
    return source_mask.to(dtype) / lengths


def anchor_scale(anchor_mask: Tensor, rescale: bool, dtype: torch.dtype) -> Tensor:
    """(B,) factor on top of the plan: the true T_l if ``rescale`` else 1."""
    if rescale:
        return anchor_mask.sum(1).to(dtype)
    return torch.ones(anchor_mask.shape[0], dtype=dtype, device=anchor_mask.device)


