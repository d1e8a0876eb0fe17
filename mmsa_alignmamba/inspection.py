"""What is inside an MMSA-format pickle, from the file alone (`mmsa inspect`).

One table per split: samples; the label range and its share of exact zeros (MMSA's Has0 metrics
count them as non-negative, Non0 drops them); valid text tokens counted from the attention mask and
from non-zero rows, and whether the two agree (they do not when [PAD] rows are BERT's outputs);
audio/vision lengths and the share that fill the padded axis; each modality's mean/std and
non-finite values; and the text padding convention the model will use (text_padding.py).
Pure numpy; the file is read with the allow-list unpickler.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import text_padding
from .datasets import MODALITIES
from .errors import DataFileError
from .safeio import safe_pickle_load
from .validate import checked_array

__all__ = ["SplitSummary", "inspect_file", "format_summary"]

SPLITS = ("train", "valid", "test")
CHUNK = 1024   # samples per pass of the moment sums, so MOSEI's text is never copied whole


@dataclass
class SplitSummary:
    split: str
    samples: int
    label_range: tuple[float, float] | None
    label_zero_share: float | None
    tokens_by_mask: np.ndarray | None      # (N,) valid tokens from text_bert's mask, None without one
    tokens_by_rows: np.ndarray             # (N,) non-zero rows of text
    convention: str                        # text_padding.CONVENTIONS key
    lengths: dict[str, tuple[np.ndarray, int]]   # audio/vision -> ((N,) lengths, padded T)
    moments: dict[str, tuple[float, float, int]]  # modality -> (mean, std, non-finite count) over finite values


def _moments(arr: np.ndarray) -> tuple[float, float, int]:
    total = squares = 0.0
    count = bad = 0
    for start in range(0, arr.shape[0], CHUNK):
        block = np.asarray(arr[start:start + CHUNK], dtype=np.float64)
        finite = np.isfinite(block)
        values = block[finite]
        total, squares = total + values.sum(), squares + np.square(values).sum()
        count, bad = count + values.size, bad + int((~finite).sum())
    mean = total / max(count, 1)
    return mean, float(np.sqrt(max(squares / max(count, 1) - mean * mean, 0.0))), bad


def summarize_split(part: dict, split: str, where: str) -> SplitSummary:
    missing = [k for k in MODALITIES if k not in part]
    if missing:
        raise DataFileError(f"{where}: split '{split}' lacks key(s) {missing}")
    arrays = {m: checked_array(where, split, m, part[m], 3) for m in MODALITIES}
    n = arrays["text"].shape[0]
    if n == 0:
        raise DataFileError(f"{where}: split '{split}' is empty")
    labels = np.asarray(part["regression_labels"], np.float64).reshape(-1) if "regression_labels" in part else None
    lengths = {}
    for m in ("audio", "vision"):
        T = arrays[m].shape[1]
        given = part.get(f"{m}_lengths")
        lengths[m] = (np.asarray(given).reshape(-1).astype(np.int64) if given is not None
                      else text_padding.nonzero_rows(arrays[m]).sum(1), T)
    return SplitSummary(
        split=split, samples=n,
        label_range=(float(np.nanmin(labels)), float(np.nanmax(labels))) if labels is not None and labels.size else None,
        label_zero_share=float(np.mean(labels == 0)) if labels is not None and labels.size else None,
        tokens_by_mask=text_padding.text_lengths(part, f"{where}: split '{split}'"),
        tokens_by_rows=text_padding.nonzero_rows(arrays["text"]).sum(1),
        convention=text_padding.convention(part), lengths=lengths,
        moments={m: _moments(a) for m, a in arrays.items()})


def inspect_file(path) -> list[SplitSummary]:
    """Every split of the pickle at ``path`` that is present, summarised."""
    data = safe_pickle_load(path)
    if not isinstance(data, dict):
        raise DataFileError(f"{path}: top level must be a dict of splits {SPLITS}, got {type(data).__name__}")
    present = [s for s in SPLITS if s in data]
    if not present:
        raise DataFileError(f"{path} has none of the splits {SPLITS}")
    for s in present:
        if not isinstance(data[s], dict):
            raise DataFileError(f"{path}: split '{s}' must be a dict of arrays, got {type(data[s]).__name__}")
    return [summarize_split(data[s], s, str(path)) for s in present]


def _spread(values: np.ndarray) -> str:
    return f"{int(values.min())} / {int(np.median(values))} / {int(values.max())}"


def format_summary(summary: SplitSummary) -> str:
    """One split's table, as plain text."""
    rows = [("samples", str(summary.samples))]
    if summary.label_range is not None:
        rows.append(("labels", f"[{summary.label_range[0]:.3g}, {summary.label_range[1]:.3g}], exact zeros "
                               f"{100 * summary.label_zero_share:.1f}% (Has0 counts them as positive, Non0 drops them)"))
    else:
        rows.append(("labels", "none"))
    by_rows = summary.tokens_by_rows
    if summary.tokens_by_mask is not None:
        agree = float(np.mean(summary.tokens_by_mask == by_rows))
        rows.append(("text tokens (mask)", f"{_spread(summary.tokens_by_mask)} (min / median / max)"))
        rows.append(("text tokens (rows)", f"{_spread(by_rows)} non-zero rows; agree with the mask in "
                                           f"{100 * agree:.1f}% of samples"))
    else:
        rows.append(("text tokens (rows)", f"{_spread(by_rows)} non-zero rows (no attention mask)"))
    rows.append(("text padding", f"the model will use: {text_padding.CONVENTIONS[summary.convention]}"))
    for m, (lengths, T) in summary.lengths.items():
        rows.append((f"{m} lengths", f"{_spread(lengths)} of T = {T}; {100 * float(np.mean(lengths >= T)):.1f}% fill T"))
    for m, (mean, std, bad) in summary.moments.items():
        rows.append((f"{m} features", f"mean {mean:.4g}, std {std:.4g}; non-finite values: {bad or 'none'}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join([f"== {summary.split} =="] + [f"  {k:<{width}}  {v}" for k, v in rows])
