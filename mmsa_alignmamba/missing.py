"""Incomplete-modality protocols applied to MMSA batch dicts (docs/method.md §6).

A *protocol* rewrites one MMSA batch dict **before any model sees it**, so that
AlignMamba and MMSA's built-in models are evaluated on exactly the same
corrupted inputs.  This module is model-agnostic (torch + numpy only, no MMSA
import) and never mutates its input: ``apply`` returns a shallow copy of the
batch in which every changed key holds a *new* tensor.

Batch layout (MMSA 2.2.1 ``data_loader.py``)
--------------------------------------------
``text``   (B, T, d_t) features, or (B, 3, T) when ``use_bert`` — rows are
           ``input_ids``, ``attention_mask``, ``segment_ids`` stored as floats;
``audio``  (B, T_a, d_a); ``vision`` (B, T_v, d_v);
``audio_lengths`` / ``vision_lengths`` (B,) only for unaligned data;
``text_lengths`` (B,) where the data has an attention mask (``text_bert``; the host adds it):
           the valid tokens, since BERT's [PAD] rows are not zero;
``index``  (B,) dataset indices; ``labels``, ``id``, ``raw_text`` untouched.

Every protocol adds ``batch['modality_mask']``: a (B, 3) bool tensor, order
``MODALITIES = (text, audio, vision)``, True = the modality is present.

What "missing" means for a whole modality
-----------------------------------------
* feature tensors (audio, vision, non-BERT text) are zeroed;
* BERT text (B, 3, T): the ``input_ids`` of the real tokens strictly between
  [CLS] (position 0) and [SEP] (position L-1, L = attention-mask sum) become
  [UNK] = 100; the attention mask and segment ids are left unchanged, so the
  sequence keeps its length and a BERT encoder still sees a well-formed
  "[CLS] [UNK] ... [UNK] [SEP]" input (the same convention TFR-Net's
  ``generate_m`` uses per token);
* ``audio_lengths`` / ``vision_lengths`` are kept unchanged: a zeroed modality
  still has its lengths, and ``modality_mask`` is what tells a model it is
  absent (changing lengths to 0 would break packed-sequence encoders of the
  built-in models).

Protocols, one class each, whose docstring says what it drops and where it comes from:
``imder`` (:class:`ImderProtocol`), ``sample`` (:class:`SampleProtocol`), ``frame``
(:class:`FrameProtocol`). They are registered by name under the entry-point group
``mmsa.missing_protocols``, where other distributions can add their own (:func:`make_protocol`).

Seeding uses ``numpy.random.SeedSequence`` entropy lists
``[seed, crc32(protocol), crc32(split), ...]`` so streams are stable across
processes (no Python ``hash`` randomisation) and independent between
protocols and splits.
"""
from __future__ import annotations

import math
import numbers
import zlib
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from . import components
from .datasets import MODALITIES
from .errors import InputError, check_seed

__all__ = [
    "MODALITIES",
    "UNK_TOKEN_ID",
    "IMDER_MISS_2",
    "IMDER_MISS_1",
    "imder_shares",
    "MissingProtocol",
    "ImderProtocol",
    "SampleProtocol",
    "FrameProtocol",
    "make_protocol",
    "mark_absent",
    "MissingModalityLoader",
]

UNK_TOKEN_ID = 100  # bert-base-(un)cased [UNK]; TFR-Net's generate_m uses the same id.

# IMDer's lists verbatim (trains/singleTask/IMDER.py).  miss_2[i] = share of
# batches with TWO modalities missing (one kept); miss_1[i] = share with ONE
# missing (two kept); i = round(MR * 10) - 1.
IMDER_MISS_2 = (0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)
IMDER_MISS_1 = (0.1, 0.2, 0.3, 0.2, 0.1, 0.0, 0.0)

_MAX_DROPPABLE = 2.0 / 3.0  # with one modality always kept, at most 2 of 3 slots drop


# --------------------------------------------------------------------------- helpers
def _validate_rate(rate: Any) -> float:
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
        raise InputError(f"missing rate must be a real number in [0, 1), got {rate!r}")
    rate = float(rate)
    if not math.isfinite(rate) or not 0.0 <= rate < 1.0:
        raise InputError(f"missing rate must be in [0, 1), got {rate!r}")
    return rate


def _code(text: str) -> int:
    # crc32 is stable across processes, unlike hash() on str.
    return zlib.crc32(str(text).encode("utf-8"))


def imder_shares(rate: float) -> tuple[float, float]:
    """Return IMDer's ``(a, b)`` for missing rate ``rate``.

    ``a`` = share of batches keeping exactly one modality (IMDer ``miss_2``),
    ``b`` = share keeping exactly two (IMDer ``miss_1``); the expected dropped
    fraction of modality slots is ``(2a + b) / 3`` (== rate for rate ≤ 2/3).
    See the module docstring for off-grid rates and the 2/3 cap.
    """
    rate = _validate_rate(rate)
    grid_r = [0.0] + [(i + 1) / 10 for i in range(6)]  # 0, .1, ..., .6
    grid_a = [0.0] + list(IMDER_MISS_2[:6])
    grid_b = [0.0] + list(IMDER_MISS_1[:6])
    k = round(rate * 10)
    if abs(rate * 10 - k) < 1e-9 and 1 <= k <= 7:
        # Exact grid point: IMDer's lists as written (avoids int(MR*10-1) float issues).
        return IMDER_MISS_2[k - 1], IMDER_MISS_1[k - 1]
    if rate <= 0.6:
        # Linear interpolation between listed points keeps 2a + b = 3·MR.
        return float(np.interp(rate, grid_r, grid_a)), float(np.interp(rate, grid_r, grid_b))
    if rate <= _MAX_DROPPABLE:
        return 1.5 * rate, 0.0
    return 1.0, 0.0


def _as_tensor(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _indices(batch: dict) -> np.ndarray:
    if "index" not in batch:
        raise KeyError("this protocol keys its masks by dataset index: the batch needs an 'index' entry "
                       "(MMSA's MMDataset provides it)")
    idx = np.asarray(_as_tensor(batch["index"]).detach().cpu()).astype(np.int64).reshape(-1)
    if (idx < 0).any():
        raise InputError("dataset indices must be non-negative")
    return idx


def _batch_size(batch: dict) -> int:
    return int(_as_tensor(batch["audio"]).shape[0])


def _bert_lengths(text: torch.Tensor) -> np.ndarray:
    # L = number of attention-mask ones (CLS ... SEP); MMSA masks are contiguous.
    return np.asarray((text[:, 1, :] > 0.5).sum(dim=1).detach().cpu()).astype(np.int64)


def _nonzero_rows(x: torch.Tensor) -> np.ndarray:
    return np.asarray((x != 0).any(dim=-1).detach().cpu())


def _valid_steps(batch: dict, modality: str, use_bert: bool) -> np.ndarray:
    """(B, T) bool: steps that carry data (see module docstring, ``frame``)."""
    x = _as_tensor(batch[modality])
    if modality == "text" and use_bert:
        T = x.shape[2]
        return np.arange(T)[None, :] < _bert_lengths(x)[:, None]
    T = x.shape[1]
    key = f"{modality}_lengths"
    if key in batch:   # text too: text_lengths counts the attention mask's valid tokens
        lengths = np.asarray(_as_tensor(batch[key]).detach().cpu()).astype(np.int64).reshape(-1)
        return np.arange(T)[None, :] < np.clip(lengths, 0, T)[:, None]
    if modality != "text" and use_bert:
        text = _as_tensor(batch["text"])
        if text.dim() == 3 and text.shape[1] == 3 and text.shape[2] == T:
            # Aligned data: MMSA sets audio/vision lengths from the text mask.
            return np.arange(T)[None, :] < _bert_lengths(text)[:, None]
    return _nonzero_rows(x)


def _drop_whole(out: dict, present: np.ndarray, use_bert: bool) -> None:
    """Replace (in ``out``, a copy) each absent modality with its 'missing' form."""
    for m, name in enumerate(MODALITIES):
        absent = ~present[:, m]
        if not absent.any():
            continue
        x = _as_tensor(out[name])
        if name == "text" and use_bert:
            T = x.shape[2]
            L = _bert_lengths(x)
            pos = np.arange(T)[None, :]
            real = (pos >= 1) & (pos <= L[:, None] - 2) & absent[:, None]
            new = x.clone()
            sel = torch.from_numpy(real).to(x.device)
            new[:, 0, :] = torch.where(sel, torch.full_like(new[:, 0, :], UNK_TOKEN_ID), new[:, 0, :])
        else:
            keep = torch.from_numpy(~absent).to(device=x.device, dtype=x.dtype)
            new = x * keep.view(-1, *([1] * (x.dim() - 1)))
        out[name] = new


def mark_absent(batch: dict, present: np.ndarray, use_bert: bool = False) -> dict:
    """A copy of ``batch`` in which the modalities that ``present`` (B, 3) bool marks absent
    take their 'missing' form, with the matching ``modality_mask`` — what every protocol does
    with the masks it draws, for masks chosen by the caller (e.g. ``mmsa predict --absent``)."""
    out = dict(batch)
    _mark_absent_(out, np.asarray(present, dtype=bool), use_bert)
    return out


def _mark_absent_(out: dict, present: np.ndarray, use_bert: bool) -> None:
    _drop_whole(out, present, use_bert)
    out["modality_mask"] = torch.from_numpy(present).to(_as_tensor(out["audio"]).device)


# --------------------------------------------------------------------------- protocols
class MissingProtocol:
    """Base class. ``apply`` returns a new batch dict; subclasses fill ``_apply``."""

    name: str = ""

    def __init__(self, rate: float, seed: int, use_bert: bool = False):
        self.rate = _validate_rate(rate)
        self.seed = check_seed(seed)
        self.use_bert = bool(use_bert)
        self._tag = _code(self.name)

    @property
    def realised_rate(self) -> float:
        """Expected fraction actually dropped (may differ from ``rate``; see the protocol's docstring)."""
        return self.rate

    def _seq(self, *entropy: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, self._tag, *map(int, entropy)]))

    def apply(self, batch: dict, split: str, batch_index: int, epoch: int = 0,
              num_batches: int | None = None) -> dict:
        """Return a shallow copy of ``batch`` with the protocol applied.

        ``num_batches`` (batches per pass) is used only by ``imder`` for its
        exact per-pass shares; ``MissingModalityLoader`` passes it.
        """
        out = dict(batch)
        self._apply(out, str(split), int(batch_index), int(epoch), num_batches)
        return out

    def _apply(self, out: dict, split: str, batch_index: int, epoch: int,
               num_batches: int | None) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(rate={self.rate}, seed={self.seed}, use_bert={self.use_bert}, "
                f"realised_rate={self.realised_rate:.4f})")


class ImderProtocol(MissingProtocol):
    """``imder``: whole modalities dropped per batch, on IMDer's schedule.

    IMDer (Wang et al., NeurIPS 2023; github.com/mdswyz/IMDer,
    ``trains/singleTask/IMDER.py`` and ``trains/singleTask/model/imder.py``).
    Whole modalities are dropped **per batch** (every sample of a batch gets the
    same pattern), at train, valid and test.  IMDer's code holds::

        miss_2 = [0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0]   # "missing two modal"
        miss_1 = [0.1, 0.2, 0.3, 0.2, 0.1, 0.0, 0.0]   # "missing one modal"

    indexed by ``int(MR*10 - 1)``.  A batch counted in ``miss_2`` calls the
    model with ``num_modal=1`` (ONE modality kept, two dropped); one counted in
    ``miss_1`` calls it with ``num_modal=2`` (TWO kept, one dropped); the
    kept modalities are ``random.sample([t, v, a], num_modal)``.  So the share
    of batches keeping one modality is ``a = miss_2[i]`` and keeping two is
    ``b = miss_1[i]``; the expected fraction of dropped modality slots is
    ``(2a + b) / 3`` and IMDer's lists satisfy ``2a + b = 3·MR`` exactly for
    MR = 0.1 … 0.6 (0.1: a=.1, b=.1; 0.2: .2/.2; 0.3: .3/.3; 0.4: .5/.2;
    0.5: .7/.1; 0.6: .9/0).  At MR = 0.7 the lists give a = 1, b = 0: with one
    modality always kept at most 2 of 3 slots can be dropped, so MR 0.7 is
    realised as "every batch keeps exactly one modality", a dropped fraction of
    2/3 ≈ 0.667 — exposed as ``realised_rate`` so reports can print it.
    Rates off the 0.1 grid are interpolated linearly between the listed points
    (which keeps ``2a + b = 3·MR``) up to 0.6; for 0.6 < MR ≤ 2/3 we use
    ``a = 1.5·MR, b = 0``; above 2/3 ``a = 1, b = 0`` (realised 2/3).  MR = 0
    gives complete batches (IMDer would index ``miss_2[-1]`` there and drop
    two modalities from every batch).

    IMDer does not draw the batch kind independently: it keeps counters and
    marks the *first* ``a·N₁₀`` batches of every pass as one-kept, the next
    ``b·N₁₀`` as two-kept and the rest complete (``N₁₀ = round(N/10)·10``,
    N = batches per pass).  We keep its *exact per-pass shares* but place the
    kinds at seeded random positions: when the number of batches N is known
    (``MissingModalityLoader`` passes ``num_batches=len(loader)``),
    ``round(a·N)`` batches keep one modality, ``round(b·N)`` keep two and the
    rest are complete, permuted by a generator seeded from
    (seed, split, epoch, N).  This removes IMDer's N₁₀ rounding quirk and the
    dependence on loader order (valid/test loaders are not guaranteed to
    shuffle in other hosts, and front-loading every hard batch at the start of
    each epoch is an artefact).  Without ``num_batches`` each batch kind is
    drawn independently with probabilities (a, b, 1-a-b) — same expectation.
    Which modalities survive is drawn uniformly (as IMDer's ``random.sample``)
    from a generator seeded by (seed, split, epoch, batch_index), so every
    model run with the same seed sees the same schedule.
    """

    name = "imder"

    def __init__(self, rate: float, seed: int, use_bert: bool = False):
        super().__init__(rate, seed, use_bert)
        self.share_one_kept, self.share_two_kept = imder_shares(self.rate)
        self._kinds_cache: dict[tuple[str, int, int], np.ndarray] = {}

    @property
    def realised_rate(self) -> float:
        return (2 * self.share_one_kept + self.share_two_kept) / 3

    def _kinds(self, split: str, epoch: int, num_batches: int) -> np.ndarray:
        """Number of kept modalities (1, 2 or 3) for each batch of a pass."""
        key = (split, epoch, num_batches)
        kinds = self._kinds_cache.get(key)
        if kinds is None:
            n1 = min(num_batches, int(math.floor(self.share_one_kept * num_batches + 0.5)))
            n2 = min(num_batches - n1, int(math.floor(self.share_two_kept * num_batches + 0.5)))
            kinds = np.array([1] * n1 + [2] * n2 + [3] * (num_batches - n1 - n2), dtype=np.int64)
            self._seq(0, _code(split), epoch, num_batches).shuffle(kinds)
            if len(self._kinds_cache) > 64:  # bounded: epochs x splits
                self._kinds_cache.clear()
            self._kinds_cache[key] = kinds
        return kinds

    def batch_plan(self, split: str, batch_index: int, epoch: int = 0,
                   num_batches: int | None = None) -> np.ndarray:
        """(3,) bool presence pattern [text, audio, vision] for one batch."""
        rng = self._seq(1, _code(split), epoch, batch_index)
        u = rng.random()  # always drawn, so the modality draw below is the same stream in both modes
        if num_batches is not None and 0 <= batch_index < num_batches:
            n_keep = int(self._kinds(split, epoch, int(num_batches))[batch_index])
        else:
            a, b = self.share_one_kept, self.share_two_kept
            n_keep = 1 if u < a else (2 if u < a + b else 3)
        present = np.zeros(3, dtype=bool)
        present[rng.permutation(3)[:n_keep]] = True  # uniform subset, as random.sample
        return present

    def _apply(self, out, split, batch_index, epoch, num_batches):
        B = _batch_size(out)
        present = np.broadcast_to(self.batch_plan(split, batch_index, epoch, num_batches), (B, 3)).copy()
        _mark_absent_(out, present, self.use_bert)


class SampleProtocol(MissingProtocol):
    """``sample``: an independent whole-modality mask per sample, at least one modality kept.

    CPM-Net (Zhang et al., TPAMI 2020, ``get_sn``) / GCNet (Lian et
    al., TPAMI 2023) style per-sample masks.  Each sample first keeps one
    modality chosen uniformly at random (CPM-Net's one-hot ``view_preserve``),
    then keeps each of the two other modalities independently with probability
    ``q = 1 - 1.5·MR``.  The number of dropped modalities is Binomial(2, 1-q)
    with mean ``2(1-q) = 3·MR``, and by symmetry every (sample, modality) slot
    is missing with probability exactly MR — unlike "drop each slot with
    probability MR then re-keep one if all were dropped", which biases the
    rate down by MR³/3 per slot.  (CPM-Net reaches the same calibration with an
    iterative search on ``int(ratio*100)``; here it is closed-form.)  At
    MR ≥ 2/3, ``q = 0``: every sample keeps exactly one modality and the
    realised rate is capped at 2/3 (``realised_rate``).  Masks are keyed by
    (seed, split, dataset index ``batch['index']``), so a sample gets the same
    mask in every epoch, batch order and model.
    """

    name = "sample"

    @property
    def keep_other_prob(self) -> float:
        """q: probability each non-guaranteed modality is kept."""
        return max(0.0, 1.0 - 1.5 * self.rate)

    @property
    def realised_rate(self) -> float:
        return min(self.rate, _MAX_DROPPABLE)

    def sample_masks(self, indices: Iterable[int], split: str) -> np.ndarray:
        """(N, 3) bool presence masks for dataset ``indices`` of ``split``."""
        q = self.keep_other_prob
        sc = _code(split)
        idx = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices, dtype=np.int64)
        out = np.zeros((idx.size, 3), dtype=bool)
        for row, i in enumerate(idx.reshape(-1)):
            rng = self._seq(sc, i)
            guaranteed = rng.integers(3)
            keep = rng.random(3) < q
            keep[guaranteed] = True
            out[row] = keep
        return out

    def _apply(self, out, split, batch_index, epoch, num_batches):
        present = self.sample_masks(_indices(out), split)
        _mark_absent_(out, present, self.use_bert)


class FrameProtocol(MissingProtocol):
    """``frame``: individual frames and tokens dropped, a static mask per sample.

    MMSA's TFR-Net ``MMDataset.generate_m`` style per-time-step
    masks.  Every valid step is dropped independently with probability MR
    (``u < MR`` for ``u ~ U[0, 1)``, as MMSA's ``uniform > missing_rate``
    keep rule): audio/vision frames are zeroed; BERT text tokens become [UNK]
    (100) except [CLS] at 0 and [SEP] at L-1 which are always kept; non-BERT
    text feature rows are zeroed.  Only valid steps are dropped:
    ``t < audio_lengths/vision_lengths/text_lengths`` when present (unaligned
    data; text_lengths where the data has an attention mask), the attention
    mask for BERT text (and for aligned audio/vision when their length equals
    the text length — MMSA itself derives aligned lengths from the text mask),
    otherwise rows with any non-zero feature (zero padding).  MMSA draws one
    static mask per split from ``missing_seed``; we draw static masks per
    sample from (seed, split, dataset index, modality), so they are identical
    every epoch and for every model regardless of batch order.  Differences
    from ``generate_m``: text length L is the attention-mask sum (MMSA's
    ``argmin`` returns 0 for a full-length sequence), and one rate is shared
    by the three modalities.  The batch also gets ``text_step_mask``,
    ``audio_step_mask``, ``vision_step_mask``: (B, T_m) bool, True = a valid
    step that is still present (padding and dropped steps are False; [CLS]
    and [SEP] are True).  ``modality_mask`` counts a modality present unless it
    had at least one droppable step and all of them were dropped.
    """

    name = "frame"

    def step_uniforms(self, index: int, split: str, modality: str, length: int) -> np.ndarray:
        """U[0,1) draws for one sample's steps; a step drops iff its draw < rate."""
        return self._seq(_code(split), int(index), MODALITIES.index(modality)).random(length)

    def _apply(self, out, split, batch_index, epoch, num_batches):
        idx = _indices(out)
        B = idx.size
        present = np.ones((B, 3), dtype=bool)
        for m, name in enumerate(MODALITIES):
            x = _as_tensor(out[name])
            bert_text = name == "text" and self.use_bert
            valid = _valid_steps(out, name, self.use_bert)
            T = valid.shape[1]
            droppable = valid.copy()
            if bert_text:
                droppable[:, 0] = False  # [CLS]
                L = _bert_lengths(x)
                rows = np.nonzero(L >= 1)[0]
                droppable[rows, L[rows] - 1] = False  # [SEP]
            u = np.stack([self.step_uniforms(i, split, name, T) for i in idx]) if B else np.zeros((0, T))
            dropped = droppable & (u < self.rate)
            kept = valid & ~dropped
            present[:, m] = ~(droppable.any(axis=1) & ~(droppable & ~dropped).any(axis=1))
            sel = torch.from_numpy(dropped).to(x.device)
            if bert_text:
                new = x.clone()
                new[:, 0, :] = torch.where(sel, torch.full_like(new[:, 0, :], UNK_TOKEN_ID), new[:, 0, :])
            else:
                new = x * (~sel).to(x.dtype).unsqueeze(-1)
            out[name] = new
            out[f"{name}_step_mask"] = torch.from_numpy(kept).to(x.device)
        out["modality_mask"] = torch.from_numpy(present).to(_as_tensor(out["audio"]).device)


def make_protocol(name: str, rate: float, seed: int, use_bert: bool = False) -> MissingProtocol:
    """Build a registered protocol (entry-point group ``mmsa.missing_protocols``: ``imder``,
    ``sample``, ``frame`` and any third party's) by name; rate must be in [0, 1)."""
    return components.MISSING_PROTOCOLS.create(name, rate, seed, use_bert)


# --------------------------------------------------------------------------- loader
class MissingModalityLoader:
    """Wrap an iterable loader of one split and apply ``protocol`` to every batch.

    Each call to ``__iter__`` starts a new epoch (0, 1, 2, ...); the epoch and
    the batch position are what the ``imder`` schedule is seeded with
    (``sample``/``frame`` masks depend on dataset indices only).  ``len`` and
    ``.dataset`` (and any other attribute) pass through to the wrapped loader.
    With ``protocol=None`` batches pass through unchanged.
    """

    def __init__(self, loader: Iterable, protocol: MissingProtocol | None, split: str):
        self.loader = loader
        self.protocol = protocol
        self.split = str(split)
        self.epoch = 0  # index of the next pass

    def __iter__(self) -> Iterator[dict]:
        epoch = self.epoch
        self.epoch += 1
        try:
            num_batches: int | None = len(self.loader)  # type: ignore[arg-type]
        except TypeError:
            num_batches = None
        for i, batch in enumerate(self.loader):
            if self.protocol is None:
                yield batch
            else:
                yield self.protocol.apply(batch, self.split, i, epoch, num_batches=num_batches)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    @property
    def dataset(self):
        return self.loader.dataset

    def __getattr__(self, item: str):
        # Only called for attributes not found normally; guard against recursion
        # before __init__ has set self.loader (e.g. during unpickling).
        if item == "loader":
            raise AttributeError(item)
        return getattr(self.loader, item)
