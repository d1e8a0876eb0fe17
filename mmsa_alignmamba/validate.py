"""Check an MMSA-format dataset before any training starts.

MMSA trusts whatever pickle it is given and fails deep inside a model (or worse, trains on NaN).
`validate_dataset` reads the file once with the allow-list unpickler and raises one
`DataFileError` naming the file, split, key and problem. MMSA's own convention of −inf in audio
(it sets those to 0) is accepted and counted; any other non-finite value is an error unless the
caller asks to fix it, in which case a cleaned copy is written beside the outputs and used instead.
"""
from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import text_padding
from .errors import DataFileError
from .safeio import atomic_write, safe_pickle_load
from .synthetic.common import TRUE_MAP_KEYS

logger = logging.getLogger("mmsa_alignmamba")

SPLITS = ("train", "valid", "test")
LABEL_RANGE = {"mosi": 3.0, "mosei": 3.0, "sims": 1.0}


@dataclass
class DataReport:
    path: Path
    samples: dict[str, int]
    feature_dims: tuple[int, int, int]
    audio_neg_inf: int = 0
    fixed_nonfinite: dict[str, int] = field(default_factory=dict)
    true_alignment: bool = False   # every split carries the true frame->word maps (TRUE_MAP_KEYS)
    text_padding: str = text_padding.MASK   # how the train split marks text padding (text_padding.CONVENTIONS)


def _fail(path, message: str):
    raise DataFileError(f"invalid dataset {path}: {message}")


def checked_array(path, split, key, value, ndim: int):
    """``value`` as a numeric array of ``ndim`` dimensions, or one DataFileError naming the file, split and key."""
    try:
        arr = np.asarray(value)
    except Exception:  # ragged per-sample arrays: numpy refuses to stack them
        _fail(path, f"{split}['{key}'] has samples of different shapes")
    if arr.dtype == object and ndim > 1:
        _fail(path, f"{split}['{key}'] has samples of different shapes")
    if arr.ndim != ndim:
        _fail(path, f"{split}['{key}'] must have {ndim} dimensions, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":  # strings / objects would crash the checks below (and MMSA)
        _fail(path, f"{split}['{key}'] must hold numbers, got dtype {arr.dtype}")
    return arr


def _required_keys(dataset: str, use_bert: bool, aligned: bool) -> list[str]:
    keys = ["text_bert" if use_bert else "text", "audio", "vision", "regression_labels", "id", "raw_text"]
    if not aligned:
        keys += ["audio_lengths", "vision_lengths"]
    if dataset == "sims":
        keys += [f"regression_labels_{m}" for m in "TAV"]
    return keys


def _check_true_maps(path, split, part, n, audio, vision, t_l) -> None:
    """Optional true frame->word maps: (N, T_m) integers in [-1, T_l) beside each modality."""
    for modality, frames in (("audio", audio), ("vision", vision)):
        key = TRUE_MAP_KEYS[modality]
        if key not in part:
            continue
        arr = checked_array(path, split, key, part[key], 2)
        if arr.dtype.kind not in "iu":
            _fail(path, f"{split}['{key}'] must hold integer token indices, got dtype {arr.dtype}")
        if arr.shape != (n, frames.shape[1]):
            _fail(path, f"{split}['{key}'] must be (samples, {modality} steps) = {(n, frames.shape[1])}, got {arr.shape}")
        if arr.size and (arr.min() < -1 or arr.max() >= t_l):
            _fail(path, f"{split}['{key}'] must hold text token indices in [-1, {t_l}), got [{arr.min()}, {arr.max()}]")


def validate_dataset(path, dataset: str, use_bert: bool = False, aligned: bool = False,
                     fix_nonfinite: bool = False, fixed_copy: Path | None = None) -> DataReport:
    """Validate the pickle at `path`; with fix_nonfinite, write a cleaned copy to `fixed_copy`
    (NaN/±inf in features set to 0) and report it as the path to use."""
    path = Path(path)
    data = safe_pickle_load(path)
    if not isinstance(data, dict):
        _fail(path, f"top level must be a dict of splits {SPLITS}, got {type(data).__name__}")
    missing_splits = [s for s in SPLITS if s not in data]
    if missing_splits:
        _fail(path, f"missing split(s) {missing_splits}; MMSA needs {list(SPLITS)}")
    report = DataReport(path, {}, (0, 0, 0))
    dims_seen = None
    for split in SPLITS:
        part = data[split]
        if not isinstance(part, dict):
            _fail(path, f"split '{split}' must be a dict of arrays, got {type(part).__name__}")
        missing = [k for k in _required_keys(dataset, use_bert, aligned) if k not in part]
        if missing:
            _fail(path, f"split '{split}' lacks key(s) {missing}")
        text_key = "text_bert" if use_bert else "text"
        text, audio, vision = (checked_array(path, split, k, part[k], 3) for k in (text_key, "audio", "vision"))
        labels = checked_array(path, split, "regression_labels", np.reshape(part["regression_labels"], -1), 1)
        n = labels.shape[0]
        if n == 0:
            _fail(path, f"split '{split}' is empty")
        if n < 2:  # one sample has no spread: correlation, std and early stopping mean nothing
            _fail(path, f"split '{split}' has 1 sample; every split needs at least 2")
        for key, arr in ((text_key, text), ("audio", audio), ("vision", vision)):
            if arr.shape[0] != n:
                _fail(path, f"{split}['{key}'] has {arr.shape[0]} samples but {split}['regression_labels'] has {n}")
        if use_bert and text.shape[1] != 3:
            _fail(path, f"{split}['text_bert'] must be (N, 3, T) token ids/mask/segments, got {text.shape}")
        if "text_bert" in part:   # the mask says which text slots are words: it must fit the text
            mask_of = checked_array(path, split, "text_bert", part["text_bert"], 3)
            if mask_of.shape[0] != n:
                _fail(path, f"{split}['text_bert'] has {mask_of.shape[0]} samples but {split}['regression_labels'] has {n}")
            text_padding.mask_lengths(mask_of, text.shape[2] if use_bert else text.shape[1],
                                      f"invalid dataset {path}: split '{split}'")
        dims = (768 if use_bert else text.shape[2], audio.shape[2], vision.shape[2])
        if dims_seen is not None and dims != dims_seen:
            _fail(path, f"feature dims (text, audio, vision) differ across splits: {dims_seen} vs {dims} in '{split}'")
        dims_seen = dims
        if not aligned:
            for key, arr in (("audio_lengths", audio), ("vision_lengths", vision)):
                lengths = checked_array(path, split, key, part[key], 1)
                if lengths.shape[0] != n:
                    _fail(path, f"{split}['{key}'] has {lengths.shape[0]} entries for {n} samples")
                if not np.all(np.isfinite(lengths.astype(float))):
                    _fail(path, f"{split}['{key}'] holds non-finite lengths")
                if lengths.min() < 1 or lengths.max() > arr.shape[1]:
                    _fail(path, f"{split}['{key}'] must lie in [1, {arr.shape[1]}] (the padded length), "
                                f"got [{lengths.min()}, {lengths.max()}]")
        bound = LABEL_RANGE[dataset]
        for key in ["regression_labels"] + ([f"regression_labels_{m}" for m in "TAV"] if dataset == "sims" else []):
            values = checked_array(path, split, key, np.reshape(part[key], -1), 1).astype(float)
            if np.isnan(values).any():
                _fail(path, f"{split}['{key}'] contains NaN")
            if np.abs(values).max(initial=0) > bound + 1e-6:
                _fail(path, f"{split}['{key}'] must lie in [-{bound:g}, {bound:g}] for {dataset.upper()}, "
                            f"got [{values.min():g}, {values.max():g}]")
        _check_true_maps(path, split, part, n, audio, vision, text.shape[1] if not use_bert else text.shape[2])
        report.samples[split] = n
        report.audio_neg_inf += int(np.isneginf(audio).sum())
        for key, arr in ((text_key, text), ("audio", audio), ("vision", vision)):
            bad = ~np.isfinite(arr)
            if key == "audio":
                bad &= ~np.isneginf(arr)  # MMSA's loader sets audio −inf to 0 itself
            count = int(bad.sum())
            if count and not fix_nonfinite:
                _fail(path, f"{split}['{key}'] contains {count} NaN/inf value(s); clean the features or "
                            "pass --fix-nonfinite to set them to 0")
            if count:
                part[key] = np.where(np.isfinite(arr), arr, 0).astype(arr.dtype)
                report.fixed_nonfinite[f"{split}.{key}"] = count
    report.feature_dims = dims_seen
    if not use_bert:
        report.text_padding = text_padding.convention(data["train"])
    report.true_alignment = all(all(k in data[s] for k in TRUE_MAP_KEYS.values()) for s in SPLITS)
    if report.audio_neg_inf:
        logger.info("%s: %d audio value(s) are -inf; MMSA's loader sets them to 0", path, report.audio_neg_inf)
    if report.fixed_nonfinite:
        if fixed_copy is None:
            raise ValueError("fix_nonfinite needs a path for the cleaned copy")
        with atomic_write(fixed_copy) as f:
            pickle.dump(data, f, protocol=4)
        logger.warning("%s: set non-finite feature values to 0 (%s); using the cleaned copy %s",
                       path, ", ".join(f"{k}: {v}" for k, v in report.fixed_nonfinite.items()), fixed_copy)
        report.path = Path(fixed_copy)
    return report


def validate_modality_file(path, flag: str, key: str, samples: dict[str, int], use_bert: bool = False,
                           aligned: bool = False) -> None:
    """A custom single-modality feature file (-Ft/-Fa/-Fv): readable, right keys, same sample counts."""
    path = Path(path)
    data = safe_pickle_load(path)
    key = "text_bert" if key == "text" and use_bert else key
    needed = [key] + ([f"{key}_lengths"] if key in ("audio", "vision") and not aligned else [])
    for split in SPLITS:
        part = data.get(split) if isinstance(data, dict) else None
        if not isinstance(part, dict) or any(k not in part for k in needed):
            _fail(path, f"{flag} file needs {split}{needed} (MMSA's per-modality feature format)")
        arr = checked_array(path, split, key, part[key], 3)
        if arr.shape[0] != samples[split]:
            _fail(path, f"{flag} file has {arr.shape[0]} {split} samples, the dataset has {samples[split]}")
        if not np.all(np.isfinite(arr[~np.isneginf(arr)] if key == "audio" else arr)):
            _fail(path, f"{flag} file: {split}['{key}'] contains NaN/inf values")
