"""What every synthetic family shares: MMSA's shapes per dataset, split sizes, argument checks,
the annotation grid of the labels and MMSA's word-aligned layout."""
from __future__ import annotations

from typing import Any, Mapping

import math

import numpy as np

from ..datasets import SHAPES
from ..errors import InputError

SPLITS = ("train", "valid", "test")

# Read-only by convention. seq_lens / feature_dims (datasets.SHAPES) are [text, audio, vision].
PRESETS: dict[str, dict[str, Any]] = {
    "mosi": {
        "name": "MOSI",
        "index": 0,
        **SHAPES["mosi"],
        "sizes": {
            "full": {"train": 1284, "valid": 229, "test": 686},
            "small": {"train": 600, "valid": 150, "test": 300},
        },
        "label_scale": 3.0,
        "label_step": 0.2,
        "unimodal_labels": False,
        "file_stem": {"unaligned": "unaligned_50", "aligned": "aligned_50"},
    },
    "mosei": {
        "name": "MOSEI",
        "index": 1,
        **SHAPES["mosei"],
        "sizes": {
            "full": {"train": 16326, "valid": 1871, "test": 4659},
            "small": {"train": 600, "valid": 150, "test": 300},
        },
        "label_scale": 3.0,
        "label_step": 1.0 / 3.0,
        "unimodal_labels": False,
        "file_stem": {"unaligned": "unaligned_50", "aligned": "aligned_50"},
    },
    "sims": {
        "name": "SIMS",
        "index": 2,
        **SHAPES["sims"],
        "sizes": {
            "full": {"train": 1368, "valid": 456, "test": 457},
            "small": {"train": 600, "valid": 150, "test": 300},
        },
        "label_scale": 1.0,
        "label_step": 0.2,
        "unimodal_labels": True,
        "file_stem": {"unaligned": "unaligned_39", "aligned": "aligned_39"},
    },
}

# Extra keys of a dataset pickle holding the true frame->word map (MMSA's loader ignores them):
# (N, T_m) ints, the text token index of the word spoken in each frame, -1 where none.
TRUE_MAP_KEYS = {"audio": "audio_token", "vision": "vision_token"}

# Samples generated at once: bounds temporary memory (MOSEI full is 16k samples).
CHUNK = 256
CLS, SEP = 101, 102   # BERT's [CLS] / [SEP] ids in text_bert


def preset(like: str) -> dict[str, Any]:
    if not isinstance(like, str):
        raise InputError(f"like must be one of {sorted(PRESETS)}, got {like!r}")
    key = like.strip().lower()
    if key not in PRESETS:
        raise InputError(f"unknown synthetic preset {like!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[key]


def resolve_sizes(like: str, size: str | Mapping[str, int] = "small") -> dict[str, int]:
    """Return ``{"train": n, "valid": n, "test": n}`` for a size name or a (partial) dict.

    A dict may give any of train/valid/test (or n_train/n_valid/n_test); missing splits are
    taken from the ``small`` preset.
    """
    p = preset(like)
    if isinstance(size, str):
        if size not in p["sizes"]:
            raise InputError(f"unknown size {size!r}; expected 'small', 'full' or a dict of split sizes")
        return dict(p["sizes"][size])
    if not isinstance(size, Mapping):
        raise InputError(f"size must be 'small', 'full' or a dict, got {size!r}")
    out = dict(p["sizes"]["small"])
    for k, v in size.items():
        split = k[2:] if isinstance(k, str) and k.startswith("n_") else k
        if split not in SPLITS:
            raise InputError(f"unknown split {k!r} in size; expected train/valid/test")
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise InputError(f"size of split {split!r} must be an integer >= 1, got {v!r}")
        out[split] = int(v)
    return out


def size_label(like: str, size: str | Mapping[str, int]) -> str:
    if isinstance(size, str):
        resolve_sizes(like, size)
        return size
    s = resolve_sizes(like, size)
    return f"n{s['train']}-{s['valid']}-{s['test']}"


def empty_split(n: int, p: Mapping[str, Any], aligned: bool) -> dict[str, np.ndarray]:
    """A split's feature arrays in MMSA's keys, zero-filled: (n, T, width) per modality, text_bert (n, 3, T_l)."""
    d_t, d_a, d_v = p["feature_dims"]
    T_l, T_a, T_v = p["seq_lens"]["aligned" if aligned else "unaligned"]
    return {"text": np.zeros((n, T_l, d_t), np.float32), "text_bert": np.zeros((n, 3, T_l), np.float32),
            "audio": np.zeros((n, T_a, d_a), np.float32), "vision": np.zeros((n, T_v, d_v), np.float32)}


def utterance_chunks(rng: np.random.Generator, n: int, sigma_polarity: float):
    """The split in chunks of at most CHUNK samples, each with its utterance-level draws:
    yields (first sample, slice, size B, polarity p ~ N(0, σ²), audio cue a_s, vision cue v_s ~ N(0, 1))."""
    for s0 in range(0, n, CHUNK):
        B = min(CHUNK, n - s0)
        yield (s0, slice(s0, s0 + B), B, rng.normal(0.0, sigma_polarity, B), rng.normal(0.0, 1.0, B),
               rng.normal(0.0, 1.0, B))


def word_counts(rng: np.random.Generator, B: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """Words per utterance, log-normal around 14, clipped to [2, W]: (n_words (B,), mask (B, W))."""
    n_words = np.clip(np.round(np.exp(rng.normal(math.log(14.0), 0.5, B))), 2, W).astype(np.int64)
    return n_words, np.arange(W)[None, :] < n_words[:, None]


def quantize(y, scale, step):
    """Scores rounded to the annotation grid (MOSI 0.2, MOSEI 1/3) and clipped to [-scale, scale]."""
    y = np.round(y / step) * step
    return np.clip(y, -scale, scale).astype(np.float32)


def word_average(idx, frames, T_l):
    """MMSA's word-aligned layout: the frames of word k averaged into token slot k+1 of a
    (B, T_l, d) array. ``idx`` (B, T) is the word index of each frame, < 0 where none.

    Each word's frames are contiguous in time, so they are contiguous in the flattened valid
    frames too and ``np.add.reduceat`` sums them in one pass.
    """
    B, T, d = frames.shape
    W = T_l - 2
    valid = idx >= 0
    gi = (np.arange(B)[:, None] * W + idx)[valid]
    x = frames[valid]
    out = np.zeros((B * W, d), np.float32)
    if gi.size:
        starts = np.flatnonzero(np.diff(gi, prepend=-1))
        sums = np.add.reduceat(x, starts, axis=0)
        counts = np.diff(np.append(starts, gi.size)).astype(np.float32)
        out[gi[starts]] = sums / counts[:, None]
    res = np.zeros((B, T_l, d), np.float32)
    res[:, 1:W + 1] = out.reshape(B, W, d)
    return res


VOCAB_OFFSET = 1000  # word w is BERT id w + 1000 (clear of [PAD], [CLS], [SEP], [UNK])
TEXT_NOISE = 0.3     # std of the noise on the text features

# How [PAD] rows of ``text`` are written (``--synthetic-padding``). "bert": as BERT's last layer
# gives them, not zero: one pad vector shared by the whole file (per-dimension scale like a
# token's, ≈1.5) plus small noise per slot; only the attention mask in text_bert tells them
# from words. "zero": exactly zero, as MMSA-FET's feature files are.
PADDINGS = ("bert", "zero")
PAD_SCALE = 1.5
PAD_NOISE = 0.15
PAD_SEED_TAG = 20653  # entropy of the pad rows' stream, far from any family's SEED_TAG: the words' streams stay as they are


def pad_like_bert(text: np.ndarray, mask: np.ndarray, pad_vector: np.ndarray, rng: np.random.Generator) -> None:
    """Fill the [PAD] rows (``mask`` (N, T_l) False) of ``text`` (N, T_l, d) in place with
    ``pad_vector`` (d,) plus N(0, PAD_NOISE²) noise per slot."""
    pads = ~mask.astype(bool)
    noise = rng.standard_normal((int(pads.sum()), text.shape[2]), dtype=np.float32)
    noise *= np.float32(PAD_NOISE)
    text[pads] = pad_vector[None, :] + noise


def write_text(out: dict, sl: slice, s0: int, rng: np.random.Generator, tokens: np.ndarray, tok_mask: np.ndarray,
               projection: np.ndarray, word_ids: np.ndarray, wmask: np.ndarray, n_words: np.ndarray,
               vocab_words, raw_text) -> None:
    """One chunk's text in MMSA's keys: features = latent ``tokens`` (B, T_l, d_z) projected to the
    text width plus noise (padding exactly 0), BERT ids ([CLS] words [SEP]) and mask, raw text."""
    B, T_l = tok_mask.shape
    W = word_ids.shape[1]
    txt = tokens[tok_mask].astype(np.float32) @ projection      # only real tokens
    noise = rng.standard_normal(txt.shape, dtype=np.float32)
    noise *= np.float32(TEXT_NOISE)
    txt += noise
    out["text"][sl][tok_mask] = txt
    ids = np.zeros((B, T_l), np.float32)
    ids[:, 1:W + 1] = np.where(wmask, word_ids + VOCAB_OFFSET, 0)
    ids[:, 0] = CLS
    ids[np.arange(B), n_words + 1] = SEP
    out["text_bert"][sl, 0] = ids
    out["text_bert"][sl, 1] = tok_mask.astype(np.float32)
    for i in range(B):
        raw_text[s0 + i] = " ".join(vocab_words[t] for t in word_ids[i, : n_words[i]])


def add_labels(out: dict, labels: np.ndarray, unimodal: Mapping[str, np.ndarray], preset: Mapping[str, Any],
               split: str, raw_text) -> None:
    """A split's labels in MMSA's keys, in MMSA's order: regression labels (and SIMS's unimodal
    ones), 3-class labels, annotations, sample ids, raw text."""
    out["regression_labels"] = labels
    if preset["unimodal_labels"]:
        for m in "TAV":
            out["regression_labels_" + m] = unimodal[m]
    out.update(labels_and_ids(labels, split))
    out["raw_text"] = raw_text


def labels_and_ids(labels: np.ndarray, split: str) -> dict[str, np.ndarray]:
    """MMSA's label companions: 3-class labels, annotations and sample ids."""
    n = labels.shape[0]
    cls = np.where(labels < 0, 0, np.where(labels > 0, 2, 1))
    ids = np.empty(n, dtype=object)
    for i in range(n):
        ids[i] = f"synthetic_{split}_{i + 1:05d}$_$0"
    return {"classification_labels": cls.astype(np.float32),
            "annotations": np.array(["Negative", "Neutral", "Positive"], dtype=object)[cls],
            "id": ids}
