"""Named, pluggable components, found through entry points (timm-style: register by name, create
by name, list what exists). Any installed distribution can add one without editing this package,
which registers its own the same way (pyproject.toml).

Entry-point groups, and the contract of what each entry point loads:

``mmsa.local_alignments`` (config key ``local_alignment``) — a :class:`LocalAlignment`: maps one
    source modality onto the language grid.
``mmsa.global_alignments`` (config key ``global_alignment``) — a :class:`GlobalAlignment`: the
    training loss L_align between the aligned sources and language.
``mmsa.missing_protocols`` (``--missing-protocol``) — a subclass of
    :class:`mmsa_alignmamba.missing.MissingProtocol`: constructed as ``cls(rate, seed, use_bert)``,
    its ``apply(batch, split, batch_index, epoch, num_batches)`` returns a new MMSA batch dict
    with ``modality_mask`` (B, 3) bool set.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Mapping, Optional, Protocol

from torch import Tensor

from .errors import InputError

logger = logging.getLogger("mmsa_alignmamba")

GROUPS = {
    "local_alignment": "mmsa.local_alignments",
    "global_alignment": "mmsa.global_alignments",
    "missing_protocol": "mmsa.missing_protocols",
}

ScoreBlock = Callable[[int, int, Tensor], Tensor]


@dataclass(frozen=True)
class AlignOptions:
    """What AlignMamba's config says about every local alignment (each uses what it needs)."""
    rescale: bool = True          # ot_rescale: rows of the scale of a mean under "sum"
    reduce: str = "mean"          # ot_reduce: "sum" (MᵀX) or "mean" of the frames sent to a word
    block_size: int = 1024        # ot_block_size: source rows per block
    temperature: float = 0.1      # ot_temperature: softmax temperature of soft plans on the cosine cost
    position_prior: float = 0.0   # ot_position_prior: + β·δ² on the cosine cost


class LocalAlignment(Protocol):
    def __call__(self, source: Tensor, source_mask: Tensor, anchor: Tensor, anchor_mask: Tensor, *,
                 scores: Optional[ScoreBlock], options: AlignOptions) -> Any:
        """source (B, T_m, d) encoded frames, source_mask (B, T_m) bool; anchor (B, T_l, d) encoded
        words, anchor_mask (B, T_l) bool; ``scores``: the learned cost as blockwise scores
        ``(start, rows, blocked_out) -> (B, rows, T_l)`` (higher = closer), or None for the cosine
        cost on ``source``/``anchor``. Returns an :class:`mmsa_alignmamba.alignment.OTAlignment`
        whose ``aligned`` (B, T_l, d) is the source on the word grid (zero on padded words)."""


class GlobalAlignment(Protocol):
    def __call__(self, aligned: Mapping[str, Tensor], anchor: Tensor, anchor_mask: Tensor, *,
                 sigmas: Any, present: Mapping[str, Tensor]) -> Tensor:
        """aligned: source modality -> (B, T_l, d) on the word grid; anchor (B, T_l, d) and its
        (B, T_l) mask; ``sigmas``: the config's ``mmd_sigmas``; present: modality -> (B,) bool,
        the samples that have both that source and language. Returns a scalar loss."""


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    obj: Any
    distribution: str


class UnknownComponentError(InputError):
    pass


@functools.lru_cache(maxsize=None)
def registry(kind: str) -> dict[str, Component]:
    """Every installed component of ``kind`` ('local_alignment', 'global_alignment',
    'missing_protocol'), by name. A broken third-party entry point is skipped with a warning."""
    found = {}
    for ep in metadata.entry_points(group=GROUPS[kind]):
        try:
            obj = ep.load()
        except Exception as e:
            logger.warning("%s %r could not be loaded and is skipped: %s: %s", kind, ep.name, type(e).__name__, e)
            continue
        dist = getattr(ep, "dist", None)
        found[ep.name.lower()] = Component(kind, ep.name.lower(), obj, dist.name if dist is not None else "?")
    return dict(sorted(found.items()))


def names(kind: str) -> tuple[str, ...]:
    return tuple(registry(kind))


def get(kind: str, name: str) -> Any:
    """The component ``name`` of ``kind``; an unknown name is one error listing what is installed."""
    key = name.strip().lower() if isinstance(name, str) else name
    components = registry(kind)
    if key not in components:
        raise UnknownComponentError(f"unknown {kind} {name!r}; registered: {', '.join(components) or 'none'}")
    return components[key].obj


def refresh() -> None:
    """Forget cached discovery (after installing a distribution at run time, e.g. in tests)."""
    registry.cache_clear()
