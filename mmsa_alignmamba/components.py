"""AlignMamba's named, pluggable components: one :class:`~mmsa_alignmamba.registry.Registry` per
kind. This package's own are the built-in entries below (import strings, loaded on first use);
any installed distribution adds its own under the entry-point group of the kind, with no change
here. `mmsa components` lists them with the distribution that provides each.

Kinds, their entry-point groups, and the contract of what an entry is:

``local_alignment`` (config key ``local_alignment``, group ``mmsa.local_alignments``) — a factory
    ``f(cfg) -> align``, called once when the model is built with its
    :class:`~mmsa_alignmamba.model.AlignMambaConfig`, from which it takes its own options; ``align``
    maps one source modality onto the language grid (:class:`LocalAlignment`).
``global_alignment`` (config key ``global_alignment``, group ``mmsa.global_alignments``) — a
    factory ``f(cfg) -> loss``: the training loss L_align between the aligned sources and language
    (:class:`GlobalAlignment`).
``missing_protocol`` (``--missing-protocol``, group ``mmsa.missing_protocols``) — a subclass of
    :class:`mmsa_alignmamba.missing.MissingProtocol`: constructed as ``cls(rate, seed, use_bert)``,
    its ``apply(batch, split, batch_index, epoch, num_batches)`` returns a new MMSA batch dict with
    ``modality_mask`` (B, 3) bool set.

The local alignment that computes no alignment is called ``none`` in configs (``local_alignment:
"none"``, as ``global_alignment: "none"``): it is the time-proportional plan
(:class:`~mmsa_alignmamba.alignment.ot.TimeProportional`).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Protocol

from torch import Tensor

from .registry import Registry

__all__ = ["LOCAL_ALIGNMENTS", "GLOBAL_ALIGNMENTS", "MISSING_PROTOCOLS", "KINDS", "LocalAlignment",
           "GlobalAlignment", "refresh"]

LOCAL_ALIGNMENTS = Registry("local_alignment", "mmsa.local_alignments", {
    "none": "mmsa_alignmamba.alignment.ot:TimeProportional.from_config",
    "ot": "mmsa_alignmamba.alignment.ot:RelaxedOT.from_config",
    "soft_ot": "mmsa_alignmamba.alignment.soft:SoftOT.from_config",
})
GLOBAL_ALIGNMENTS = Registry("global_alignment", "mmsa.global_alignments", {
    "mmd": "mmsa_alignmamba.alignment.mmd:MMDAlignment.from_config",
    "none": "mmsa_alignmamba.alignment.mmd:NoGlobalAlignment.from_config",
})
MISSING_PROTOCOLS = Registry("missing_protocol", "mmsa.missing_protocols", {
    "frame": "mmsa_alignmamba.missing:FrameProtocol",
    "imder": "mmsa_alignmamba.missing:ImderProtocol",
    "sample": "mmsa_alignmamba.missing:SampleProtocol",
})
#: every component registry by kind, in the order `mmsa components` lists them
KINDS: dict[str, Registry] = {r.kind: r for r in (LOCAL_ALIGNMENTS, GLOBAL_ALIGNMENTS, MISSING_PROTOCOLS)}


class LocalAlignment(Protocol):
    def __call__(self, source: Tensor, source_mask: Tensor, anchor: Tensor, anchor_mask: Tensor, *,
                 scores: Optional[Any] = None) -> Any:
        """source (B, T_m, d) encoded frames, source_mask (B, T_m) bool; anchor (B, T_l, d) encoded
        words, anchor_mask (B, T_l) bool; ``scores``: the learned cost as blockwise scores
        ``(start, rows, blocked_out) -> (B, rows, T_l)`` (higher = closer), or None for the cosine
        cost on ``source``/``anchor``. Returns an :class:`mmsa_alignmamba.alignment.OTAlignment`
        whose ``aligned`` (B, T_l, d) is the source on the word grid (zero on padded words)."""


class GlobalAlignment(Protocol):
    def __call__(self, aligned: Mapping[str, Tensor], anchor: Tensor, anchor_mask: Tensor, *,
                 present: Mapping[str, Tensor]) -> Tensor:
        """aligned: source modality -> (B, T_l, d) on the word grid; anchor (B, T_l, d) and its
        (B, T_l) mask; present: modality -> (B,) bool, the samples that have both that source and
        language. Returns a scalar loss."""


def refresh() -> None:
    """Forget cached discovery (after installing a distribution at run time, e.g. in tests)."""
    for registry in KINDS.values():
        registry.refresh()
