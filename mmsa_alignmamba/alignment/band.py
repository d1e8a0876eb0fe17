"""The banded lattice of the learned aligner (ours): each grid step considers W words, not T_l.

The word chain of :mod:`.lattice` is O(G·T_l) in time and memory (G grid steps, T_l words), so
the model is quadratic wherever the words grow with the frames. A speech forced aligner prunes
the lattice; here the pruning is fixed in advance: grid step g of a sample with n_m steps and n_l
words keeps the W words around its time-proportional word c_g = ⌊g·(n_l − 1)/(n_m − 1) + ½⌋,
starting at ``starts[g] = clamp(c_g − ⌊W/2⌋, 0, max(n_l − W, 0))``. The emissions, the
forward–backward and the posteriors are then (B, G, W) tensors (band slot k of step g = word
starts[g] + k), O(G·W). The time-proportional path itself stays in the band and moves at most
two words a step (a move or a skip) while n_l − 1 ≤ 2 (n_m − 1), so every sample keeps a path and
finite, normalised posteriors; a batch with a sample whose words outnumber its frames more than
twice over, and W = 0 or W ≥ T_l, use the full lattice.

What the band cannot represent: a frame whose true word lies more than about W/2 words from its
time-proportional word gets posterior 0 there and goes to the nearest word the band keeps (see
docs/method.md, §7).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

__all__ = ["band_starts", "band_words", "BandPosterior"]


def band_starts(grid_mask: Tensor, word_mask: Tensor, width: int) -> Optional[Tensor]:
    """The first word of each grid step's band, (B, G) long, or None for the full lattice
    (``width`` 0 or ≥ T_l, or a sample with n_l − 1 > 2 (n_m − 1), whose chain cannot follow
    the time-proportional path). ``grid_mask`` (B, G), ``word_mask`` (B, T_l): prefixes.
    Padded steps keep the last valid step's band (the chain carries its state there)."""
    t_l = word_mask.shape[1]
    if width <= 0 or width >= t_l:
        return None
    n_m = grid_mask.sum(1).clamp_min(1)                                        # (B,)
    n_l = word_mask.sum(1).clamp_min(1)
    if bool(((n_l - 1) > 2 * (n_m - 1)).any()):
        return None
    step = torch.arange(grid_mask.shape[1], device=grid_mask.device)[None, :]
    step = torch.minimum(step, (n_m - 1)[:, None])                              # (B, G)
    slope = (n_l - 1).double() / (n_m - 1).clamp_min(1).double()
    centre = torch.floor(step.double() * slope[:, None] + 0.5).long()           # time-proportional word
    highest = (n_l - width).clamp_min(0)[:, None]
    return torch.minimum((centre - width // 2).clamp_min(0), highest)


def band_words(starts: Tensor, width: int) -> Tensor:
    """The word of every band slot: (B, G) starts -> (B, G, W) word indices (all < T_l)."""
    return starts[..., None] + torch.arange(width, device=starts.device)


@dataclass
class BandPosterior:
    """Each frame's log posterior over the words of its band: ``values`` (B, T_m, W), −inf on
    padding and impossible words, band slot k of frame i being word ``starts[:, i] + k``
    (``starts`` (B, T_m) long); ``words`` = T_l. Every word outside a frame's band has
    posterior 0 (log −inf)."""
    values: Tensor
    starts: Tensor
    words: int

    def rows(self, start: int, rows: int) -> Tensor:
        """Frames [start, start + rows) as the full lattice's rows: (B, rows, T_l), −inf outside
        the band. Only a block of rows at a time is dense."""
        values = self.values[:, start:start + rows]
        dense = values.new_full((values.shape[0], values.shape[1], self.words), float("-inf"))
        return dense.scatter_(2, band_words(self.starts[:, start:start + rows], values.shape[2]), values)

    def best(self) -> Tensor:
        """Each frame's most probable word, (B, T_m) long (the lowest on ties, as the argmax of
        :meth:`rows` gives it): read in the band, O(T_m·W). Padded frames get their band's first word."""
        return self.starts + self.values.argmax(-1)
