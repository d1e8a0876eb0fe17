"""Which text slots are words: the attention mask in ``text_bert`` where the data has one, else zero rows.

MMSA's processed pickles pad ``text`` to a fixed length (MOSI/MOSEI 50, SIMS 39). Two conventions
meet in practice:

* BERT-style padding: ``text`` is BERT's last layer, whose outputs at [PAD] positions are *not*
  zero, and the valid slots are marked by the attention mask, row 1 of ``text_bert`` (N, 3, T_l):
  [CLS] tokens [SEP] as ones, then zeros. MMSA's own BERT models read their lengths from it.
* zero padding (MMSA-FET's feature files): [PAD] rows are exactly zero, there may be no mask.

Counting non-zero rows is right only for the second, and silently counts every [PAD] as a word
for the first, so the mask wins wherever it exists and zero rows are the fallback. Pure numpy:
the data checks (validate), the MMSA adapter (host), prediction and inspection all use it.
"""
from __future__ import annotations

import logging

import numpy as np

from .errors import DataFileError

logger = logging.getLogger("mmsa_alignmamba")

MASK_ROW = 1   # text_bert[:, 1]: BERT's attention mask

MASK = "mask"        # the attention mask in text_bert says which slots are words
ZERO_ROWS = "zero"   # no mask: exactly-zero rows of text are padding
NO_PADDING = "none"  # neither: every slot counts as a word
CONVENTIONS = {MASK: "attention mask in text_bert", ZERO_ROWS: "zero rows of text are padding",
               NO_PADDING: "nothing marks padding: every slot counts as a word"}


def mask_lengths(text_bert, steps: int, where: str) -> np.ndarray:
    """The attention mask of ``text_bert`` (N, 3, T_l) as valid-token counts (N,) int64, after
    checking that it describes text of ``steps`` slots: 0/1 values, 1s then 0s, at least one valid
    token per sample. ``where`` names the split in the error."""
    arr = np.asarray(text_bert)
    if arr.ndim != 3 or arr.shape[1] != 3:
        raise DataFileError(f"{where}: text_bert must be (N, 3, T) token ids / mask / segments, got {arr.shape}")
    if arr.shape[2] != steps:
        raise DataFileError(f"{where}: text_bert's mask has {arr.shape[2]} slots but the text has {steps}")
    mask = arr[:, MASK_ROW].astype(np.float64)
    checks = (
        (~np.isin(mask, (0.0, 1.0))).any(1), "holds values other than 0 and 1",
        np.diff(mask, axis=1).max(1, initial=0.0) > 0, "is not ones then zeros ([CLS] tokens [SEP], then [PAD])",
        mask.sum(1) == 0, "marks no valid token",
    )
    for bad, problem in zip(checks[::2], checks[1::2]):
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DataFileError(f"{where}: text_bert's attention mask {problem} in sample {first} "
                                f"({int(bad.sum())} sample(s) in all)")
    return mask.sum(1).astype(np.int64)


def nonzero_rows(text) -> np.ndarray:
    """(N, T_l, d) text features -> (N, T_l) bool: rows that are not exactly zero."""
    return np.any(np.asarray(text) != 0, axis=-1)


def convention(part) -> str:
    """The convention that a split's text follows (MASK, ZERO_ROWS or NO_PADDING)."""
    if "text_bert" in part:
        return MASK
    return ZERO_ROWS if not nonzero_rows(part["text"]).all() else NO_PADDING


def text_lengths(part, where: str) -> np.ndarray | None:
    """A split's valid-token counts (N,) from its mask, checked; None when it has no mask."""
    if "text_bert" not in part:
        return None
    return mask_lengths(part["text_bert"], np.asarray(part["text"]).shape[1], where)


def valid_slots(part, where: str) -> np.ndarray:
    """(N, T_l) bool: the slots of a split's text that are words, by the convention it follows."""
    lengths = text_lengths(part, where)
    if lengths is None:
        return nonzero_rows(part["text"])
    return np.arange(np.asarray(part["text"]).shape[1])[None, :] < lengths[:, None]


def warn_if_unmarked(part, where: str) -> bool:
    """Log one warning line when nothing marks a split's padding; True if so."""
    if convention(part) != NO_PADDING:
        return False
    logger.warning("%s: text has no attention mask (text_bert) and no zero rows, so every one of its %d slots "
                   "counts as a word", where, np.asarray(part["text"]).shape[1])
    return True
