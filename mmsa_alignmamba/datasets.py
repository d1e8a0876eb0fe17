"""What MMSA's data looks like, defined once: the modality order and the real datasets' shapes.

Plain constants (no torch, no MMSA), so the model, the protocols, the benchmarks and the synthetic
generators all read the same numbers.
"""
from __future__ import annotations

# The order of every (B, 3) modality mask and every per-modality triple in this package.
MODALITIES = ("text", "audio", "vision")

# MMSA's processed features, per modality [text, audio, vision]: feature widths (BERT, then the
# audio / vision extractor's), and sequence lengths of the unaligned and word-aligned files.
SHAPES: dict[str, dict] = {
    "mosi": {"feature_dims": (768, 5, 20),                # COVAREP subset, Facet
             "seq_lens": {"unaligned": (50, 375, 500), "aligned": (50, 50, 50)}},
    "mosei": {"feature_dims": (768, 74, 35),              # COVAREP, Facet
              "seq_lens": {"unaligned": (50, 500, 500), "aligned": (50, 50, 50)}},
    "sims": {"feature_dims": (768, 33, 709),              # LibROSA, OpenFace
             "seq_lens": {"unaligned": (39, 400, 55), "aligned": (39, 39, 39)}},
}
MOSI_FEATURE_DIMS = SHAPES["mosi"]["feature_dims"]
