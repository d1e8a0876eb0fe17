"""The learned aligner (ours, not the paper's): a cost for relaxed OT learned from the data.

Each word predicts the frames spoken in it (:class:`FrameEmission`, one per source modality), and
:class:`WordAligner` turns those likelihoods into each frame's log posterior over the words,
under a left-to-right word chain on one clock for every source (``monotone``, the forward–backward
of :mod:`.lattice`) or a per-frame mixture with a position prior (``mixture``). Trained by the
frames' negative log-likelihood (L_plan); its posteriors' argmax is the relaxed-OT plan.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Mapping, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .band import BandPosterior, band_starts, band_words
from .common import ScoreBlock, SparseScores, position_gap
from .lattice import best_words, monotone_alignment, posterior_best

__all__ = ["FrameEmission", "EmissionTerms", "WordAligner", "BestWords"]

_BAND_BLOCK_ELEMS = 1 << 22   # floats of band words' expected frames gathered at once (16 MB)


class EmissionTerms(NamedTuple):
    """Frames' log-likelihoods under words, ``log p(x_t | word j) = frame_term[t] + word_term[j]
    + frames[t] · means[j]``: the Gaussian's quadratic form expanded, so that every (frame, word)
    pair is one entry of a batched matrix product, not a dozen element-wise passes over a
    (B, T, T_l) tensor and their backward. frames (B, T, d): x / s²; frame_term (B, T):
    −½ Σ_d x²/s² − Σ_d log s − (d/2) log 2π; means (B, T_l, d): each word's expected frame μ_j;
    word_term (B, T_l): −½ Σ_d μ²/s²."""
    frames: Tensor
    frame_term: Tensor
    means: Tensor
    word_term: Tensor

    def dense(self) -> Tensor:
        """Every frame under every word: (B, T, T_l)."""
        return torch.baddbmm(self.frame_term[..., None] + self.word_term[:, None, :], self.frames,
                             self.means.transpose(1, 2))

    def banded(self, starts: Tensor, width: int) -> Tensor:
        """Frame t under the words starts[t] + k, k < ``width`` only: ``starts`` (B, T) -> (B, T, W),
        O(T·W·d) work instead of the (B, T, T_l) product. Each band word's expected frame is
        gathered for a block of frames at a time, at most ``_BAND_BLOCK_ELEMS`` floats, so that
        without gradient nothing beyond the (B, T, W) result grows with T·W·d."""
        batch, steps, dim = self.frames.shape
        rows = max(1, _BAND_BLOCK_ELEMS // max(1, batch * width * dim))
        blocks = []
        for t0 in range(0, steps, rows):
            slots = band_words(starts[:, t0:t0 + rows], width).flatten(1)               # (B, rows·W)
            means = _gather_rows(self.means, slots).view(batch, -1, width, dim)         # (B, rows, W, d)
            blocks.append(self.frame_term[:, t0:t0 + rows, None] + self.word_term.gather(1, slots).view(batch, -1, width)
                          + torch.einsum("btd,btwd->btw", self.frames[:, t0:t0 + rows], means))
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks, 1)

    def weighted(self, weight: Tensor) -> "EmissionTerms":
        """weight (B,) · the log-likelihoods (the means stay: the weight rides on the frames)."""
        w = weight.to(self.frames.dtype)
        return self._replace(frames=self.frames * w[:, None, None], frame_term=self.frame_term * w[:, None],
                             word_term=self.word_term * w[:, None])

    def at(self, index: Tensor) -> "EmissionTerms":
        """The frames ``index`` (B, G) reads, in its order: frame t of the result is frame index[t]."""
        return self._replace(frames=_gather_rows(self.frames, index), frame_term=self.frame_term.gather(1, index))

    @staticmethod
    def beside(terms: List["EmissionTerms"]) -> "EmissionTerms":
        """Sources with the same frames' positions side by side along the features: their
        log-likelihoods' sum, as one product."""
        return EmissionTerms(torch.cat([t.frames for t in terms], -1), sum(t.frame_term for t in terms),
                             torch.cat([t.means for t in terms], -1), sum(t.word_term for t in terms))


def _grid_emissions(terms: List[EmissionTerms], frames: List[Tensor], starts: Optional[Tensor],
                    width: int) -> Tensor:
    """The grid's emissions, Σ_sources weight · log p(the step's frame of that source | word):
    (B, G, T_l), or with a band (``starts`` (B, G)) (B, G, W). ``terms``: per source, weighted
    (0 where a sample lacks it), over its own frames; ``frames``: the frame each grid step reads.

    The sources are read by grid step first and share one product, except, on the full lattice,
    a source whose frames each cover two or more grid steps on average (SIMS's vision: 55 frames
    of 709 features on 400 steps): its product is taken at its own frames and then read by step,
    since read first its wide rows would enter the product once per step."""
    grid_steps = frames[0].shape[1]
    stretched = [starts is None and 2 * t.frames.shape[1] <= grid_steps for t in terms]
    shared = [t.at(f) for t, f, s in zip(terms, frames, stretched) if not s]
    emit = None
    if shared:
        grid = EmissionTerms.beside(shared)
        emit = grid.dense() if starts is None else grid.banded(starts, width)
    for t, f, s in zip(terms, frames, stretched):
        if s:
            own = _gather_rows(t.dense(), f)
            emit = own if emit is None else emit + own
    return emit


@dataclass
class BestWords:
    """Each frame's most probable word only, ``words`` (B, T_m) long, −1 on padding; ``count`` = T_l.
    What the relaxed-OT plan reads of the posteriors (their argmax), kept without them."""
    words: Tensor
    count: int

    def best(self) -> Tensor:
        """The words themselves, (B, T_m)."""
        return self.words

    def rows(self, start: int, rows: int) -> Tensor:
        """Frames [start, start + rows) as one-hot log posteriors: (B, rows, T_l), 0 at the frame's
        word, −inf elsewhere (everywhere on padding)."""
        best = self.words[:, start:start + rows, None]
        hit = torch.arange(self.count, device=best.device) == best
        return torch.zeros(hit.shape, device=best.device).masked_fill(~hit, float("-inf"))


def _grid_frames(masks: List[Tensor]) -> Tuple[List[Tensor], List[Tensor], Tensor, Tensor]:
    """The sources on one clock: per sample a grid of G = max(n_m) steps, step g reading each
    source's frame at relative time (g + ½)/G, weighted n_m/G so that every frame counts once.
    ``masks``: (B, T_m) per source. -> (per source the frame of each step (B, G) and the weight
    (B,), the grid mask (B, G), G per sample (B,))."""
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
    frames = [(g * count.clamp_min(1)[:, None] / n_grid[:, None]).floor().long().clamp(max=mask.shape[1] - 1)
              for count, mask in zip(counts, masks)]
    return frames, [count / n_grid for count in counts], grid_mask, n_grid     # weight 0 where absent


def _gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """x[b, index[b, g]] : (B, T, D) and (B, G) -> (B, G, D)."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[2]))


def _frame_steps(masks: List[Tensor], n_grid: Tensor, steps: int) -> List[Tensor]:
    """Each source frame's grid step, whose posterior is the frame's: (B, T_m) per source."""
    frame_steps = []
    for mask in masks:
        count = mask.sum(1).clamp_min(1)
        k = torch.arange(mask.shape[1], device=mask.device, dtype=torch.float64)[None, :] + 0.5
        frame_steps.append((k * n_grid[:, None] / count[:, None]).floor().long().clamp(max=steps - 1))
    return frame_steps


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

    def terms(self, obs: Tensor, words: Tensor) -> EmissionTerms:
        """log p(x_t | word j) of the frames ``obs`` (B, T_m, d) under the words (B, T_l, d_model),
        as :class:`EmissionTerms`."""
        mean = self.read(words)                                                # (B, T_l, d)
        inv_var = torch.exp(-2 * self.log_spread)                              # (d,)
        constant = self.log_spread.sum() + 0.5 * self.width * math.log(2 * math.pi)
        return EmissionTerms(frames=obs * inv_var, frame_term=-0.5 * (obs.square() * inv_var).sum(-1) - constant,
                             means=mean, word_term=-0.5 * (mean.square() * inv_var).sum(-1))

    def log_likelihood(self, obs: Tensor, words: Tensor) -> Tensor:
        """log p(x_i | word j), (B, T_m, T_l)."""
        return self.terms(obs, words).dense()


class WordAligner(nn.Module):
    """A learned cost for relaxed OT (ours, not the paper's): ``C(i, j) = −log p(frame i of a
    source is spoken in word j | frames, words)``, the negative log posterior of a small
    alignment model learned from the data alone (no true alignments).

    Why: the paper's cost, ``1 − cos`` between encoded frames and words, is only meaningful if
    the encoders already map a frame and its word to similar vectors, and nothing trains them to:
    the argmin passes no gradient, and the task loss cannot say which frame belongs to which
    word. This model learns the alignment the way speech forced aligners and IBM-style translation
    models do: each word predicts its frames (:class:`FrameEmission`, one per source), and the
    model is trained by maximising the likelihood of the frames (:meth:`forward`, :meth:`nll`),
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
    :func:`.ot.relaxed_ot_from_scores` / :func:`.soft.soft_ot_from_scores`).
    """

    STRUCTURES = ("monotone", "mixture")

    def __init__(self, d_model: int, frame_dims: Mapping[str, int], structure: str = "monotone",
                 position_prior: float = 0.05, skip: float = 0.05, band: int = 0):
        super().__init__()
        if structure not in self.STRUCTURES:
            raise ValueError(f"structure must be one of {self.STRUCTURES}, got {structure!r}")
        if not position_prior > 0:
            raise ValueError(f"position_prior must be > 0 (it is learned in log space), got {position_prior}")
        if not 0 < skip < 1:
            raise ValueError(f"skip must be in (0, 1), got {skip}")
        if band < 0:
            raise ValueError(f"band must be >= 0 (0: the full lattice), got {band}")
        self.structure, self.skip, self.band = structure, skip, int(band)
        self.emissions = nn.ModuleDict({m: FrameEmission(d_model, d) for m, d in frame_dims.items()})
        if structure == "mixture":
            self.log_beta = nn.Parameter(torch.tensor(math.log(position_prior)))

    def forward(self, frames: Mapping[str, Tuple[Tensor, Tensor]], words: Tensor, word_mask: Tensor,
                present: Optional[Mapping[str, Tensor]] = None, best_only: bool = False) -> Tuple[Tensor, dict]:
        """``frames``: source -> (raw frames (B, T_m, d_m), mask (B, T_m)); ``words`` (B, T_l, d_model);
        ``present``: source -> (B,) bool, which samples have it (default all).
        -> (log_lik (B,): log p(the present sources' frames), {source: log posteriors (B, T_m, T_l),
        −inf on padding and impossible pairs, or with a band (``monotone``, ``band`` > 0) a
        :class:`.band.BandPosterior`}). ``best_only`` (``monotone``): each frame's most probable
        word instead (:class:`BestWords`, what the relaxed-OT plan reads), without the frames'
        posteriors: with no gradient, from the kernel that keeps no lattice
        (:func:`.lattice.best_words`); in training, the argmax of the grid's posteriors.
        In training it updates the running statistics."""
        obs, masks = {}, {}
        for m, (x, mask) in frames.items():
            keep = mask if present is None else mask & present[m][:, None]
            obs[m], masks[m] = self.emissions[m].observations(x, keep), keep
        if self.structure == "mixture":
            return self._mixture({m: self.emissions[m].log_likelihood(o, words) for m, o in obs.items()},
                                 masks, word_mask)
        return self._monotone(obs, masks, words, word_mask, best_only)

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

    def _monotone(self, obs, masks, words, word_mask, best_only=False):
        names = list(obs)
        frame_masks = [masks[m] for m in names]
        frames, weights, grid_mask, n_grid = _grid_frames(frame_masks)
        starts = band_starts(grid_mask, word_mask, self.band)
        terms = [self.emissions[m].terms(obs[m], words).weighted(w) for m, w in zip(names, weights)]
        # the full lattice (B, G, T_l), or the band's words only (B, G, W)
        grid_emit = _grid_emissions(terms, frames, starts, self.band)
        steps = _frame_steps(frame_masks, n_grid, grid_emit.shape[1])
        if best_only and not torch.is_grad_enabled():   # the kernel keeps no lattice
            log_lik, grid_best = best_words(grid_emit, grid_mask, word_mask, self.skip, starts)
        else:
            log_lik, grid_post = monotone_alignment(grid_emit, grid_mask, word_mask, self.skip, starts)
            grid_best = posterior_best(grid_post, grid_mask, starts) if best_only else None
        if grid_best is not None:   # a frame's best word is its grid step's
            return log_lik, {m: BestWords(grid_best.gather(1, step).masked_fill(~mask, -1), word_mask.shape[1])
                             for m, mask, step in zip(names, frame_masks, steps)}
        posts = {}
        for m, mask, step in zip(names, frame_masks, steps):
            post = _gather_rows(grid_post, step).masked_fill(~mask[..., None], float("-inf"))
            posts[m] = post if starts is None else BandPosterior(post, starts.gather(1, step), word_mask.shape[1])
        return log_lik, posts

    def nll(self, log_lik: Tensor, frames: Mapping[str, Tuple[Tensor, Tensor]],
            present: Optional[Mapping[str, Tensor]] = None, samples: Optional[Tensor] = None) -> Tensor:
        """The training loss L_plan: −log p(frames) per frame and feature, over ``samples`` (B,) bool."""
        samples = torch.ones_like(log_lik, dtype=torch.bool) if samples is None else samples
        size = sum((mask & (samples if present is None else samples & present[m])[:, None]).sum()
                   * self.emissions[m].width for m, (_, mask) in frames.items())
        return -(log_lik * samples).sum() / max(int(size), 1)

    @staticmethod
    def scores(log_post: Union[Tensor, BandPosterior, BestWords]) -> ScoreBlock:
        """The posteriors as blockwise scores for the relaxed and soft plans (:data:`.common.ScoreBlock`);
        a band's posteriors, and best words, are made dense one block of rows at a time, and give
        the relaxed plan their argmax directly (:class:`.common.SparseScores`)."""
        def block(start: int, rows: int, blocked_out: Tensor) -> Tensor:
            dense = log_post[:, start:start + rows] if torch.is_tensor(log_post) else log_post.rows(start, rows)
            # −inf only where impossible; a floor keeps a fully impossible row (padding) finite
            return dense.clamp_min(-1e4) + blocked_out
        if torch.is_tensor(log_post):
            return block
        return SparseScores(block, log_post.best)

