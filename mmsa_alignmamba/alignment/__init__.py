"""Token- and distribution-level alignment of AlignMamba (docs/method.md §2–4), one idea per module.

Pure PyTorch, no MMSA import. Shapes: ``B`` batch, ``T_m`` source (audio / vision) steps,
``T_l`` anchor (language) steps, ``d`` common width; masks are bool, ``True`` = valid step.

=================  =============================================================================
module             idea
=================  =============================================================================
``common``         the result of a local alignment (:class:`OTAlignment`), masks, marginals, the
                   position prior, blockwise scores (``ScoreBlock``)
``ot``             the paper's relaxed OT (every frame to its cheapest word) on the cosine cost or
                   on any scores, and the time-proportional plan; components ``ot``, ``none``
``soft``           soft plans (ours): softmax rows or Sinkhorn-balanced entropic OT; ``soft_ot``
``lattice``        the forward–backward pass over a left-to-right word chain (C kernel on CPU)
``aligner``        the learned aligner (ours, the default OT cost): each word predicts its frames,
                   posteriors over the words from the chain (``monotone``) or a mixture
``mmd``            the paper's global alignment, MMD² between aligned sources and language; ``mmd``
``diagnostics``    plan accuracy against a known true alignment (synthetic data)
=================  =============================================================================

The components are found by name through :mod:`mmsa_alignmamba.components`; the names below are
re-exported for convenience.
"""
from .aligner import FrameEmission, WordAligner
from .common import OTAlignment, ScoreBlock, position_gap
from .diagnostics import plan_hits
from .lattice import monotone_alignment
from .mmd import MMDAlignment, NoGlobalAlignment, alignment_loss, bandwidth_spec, mmd2
from .ot import RelaxedOT, TimeProportional, relaxed_ot_align, relaxed_ot_from_scores, time_proportional
from .soft import SoftOT, soft_ot_align, soft_ot_from_scores

__all__ = ["OTAlignment", "ScoreBlock", "position_gap", "relaxed_ot_align", "relaxed_ot_from_scores",
           "time_proportional", "soft_ot_align", "soft_ot_from_scores", "monotone_alignment", "FrameEmission",
           "WordAligner", "mmd2", "alignment_loss", "bandwidth_spec", "plan_hits", "RelaxedOT", "SoftOT",
           "TimeProportional", "MMDAlignment", "NoGlobalAlignment"]
