"""Synthetic MMSA-format datasets (NOT real data) for tests, smoke runs and CPU experiments.

The generators write pickles that MMSA 2.2.1's own ``MMDataLoader`` reads unchanged:
``data[split][key]`` with split in ``train/valid/test`` and the keys of MMSA's processed
pickles (``MOSI/Processed/unaligned_50.pkl`` etc.):

====================  ===========================  ==============================================
key                   shape / dtype                 content
====================  ===========================  ==============================================
``text``              (N, T_l, 768) float32         BERT-like token features; [PAD] rows as BERT
                                                    gives them (``padding="bert"``) or zero
``text_bert``         (N, 3, T_l) float32           input_ids / attention_mask / segment_ids
                                                    (the mask: [CLS] words [SEP] = 1, [PAD] = 0)
``audio``             (N, T_a, d_a) float32         frames, zero after the true length
``vision``            (N, T_v, d_v) float32         frames, zero after the true length
``audio_lengths``     (N,) int64                    true audio length (unaligned only)
``vision_lengths``    (N,) int64                    true vision length (unaligned only)
``regression_labels`` (N,) float32                  score in [-3, 3] (SIMS: [-1, 1])
``regression_labels_T/A/V``  (N,) float32           SIMS only: unimodal scores
``classification_labels``    (N,) float32           0 negative / 1 neutral / 2 positive
``annotations``       (N,) object                   "Negative" / "Neutral" / "Positive"
``id``                (N,) object                   ``"synthetic_<split>_00001$_$0"``
``raw_text``          (N,) object                   pseudo-words, one per token
====================  ===========================  ==============================================

Two families (``task``), each with its own signal model:

* ``pooled`` (:mod:`.pooled`, the default): the label rests mostly on utterance-level cues of
  each modality; word timing is a mild monotone warp and frames carry nothing that identifies
  the word, so the time-proportional plan is already close to the true alignment.
* ``wordlevel`` (:mod:`.wordlevel`): the label rests on which audio/vision frames co-occur with
  which words, word durations vary freely, and frames carry a weak signature of the word
  being spoken. Its unaligned pickles add the true frame→token maps ``audio_token`` /
  ``vision_token`` (keys MMSA's loader ignores), and its sidecar holds the oracle ladder
  (:mod:`.oracle`) measured on the test split.

Aligned variant (``aligned=True``): audio and vision have T = T_l (word-aligned: the frames of
word k are averaged into token slot k+1) and there are no ``*_lengths`` keys (MMSA's loader
does not read them when ``need_data_aligned``).

Shapes (``PRESETS``). The real unaligned pickles are MOSI text 50x768, audio 375x5,
vision 500x20; MOSEI 50x768, 500x74, 500x35; SIMS 39x768, 400x33, 55x709. MMSA's
``config_regression.json`` lists ``seq_lens`` ``[50, 500, 375]`` for both MOSI and MOSEI
unaligned (order [text, audio, vision] per ``MMDataset.__truncate``); that does not match the
real MOSI files (audio 375, vision 500) and published inspections of the real MOSEI file
report audio 500, vision 500. The config value is never used for shapes: ``MMDataLoader``
overwrites ``args['seq_lens']`` with the shapes of the loaded data. We follow the real files
(MOSEI vision T = 500). SIMS: config and files agree ([39, 400, 55]); SIMS has no aligned
pickle in MMSA, ``aligned=True`` is still allowed.

Padding (``padding``, common.PADDINGS): "bert" (the default, the harder case real pickles may
have) writes the [PAD] rows of ``text`` as BERT's last layer gives them: a pad vector shared by
the file plus small noise per slot, so only the attention mask in ``text_bert`` marks them;
"zero" writes them exactly zero. Everything else is identical between the two.

Determinism: ``numpy.random.SeedSequence([seed, preset index])`` (plus the family's index for
families after the first) spawns one generator for the fixed projections/vocabulary and one per
split, so the same seed gives byte-identical arrays, and a split's content does not depend on
the sizes of the other splits. The pad rows come from a stream of their own (that entropy plus
PAD_SEED_TAG), so both paddings hold the same words. Generation runs in chunks of 256 samples
to bound memory.
"""
from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import check_seed
from ..registry import Registry
from ..safeio import atomic_write, atomic_write_text
from ..text_padding import MASK_ROW
from .common import PAD_SCALE, PAD_SEED_TAG, PADDINGS, PRESETS, SPLITS, pad_like_bert, preset, resolve_sizes, size_label

__all__ = [
    "FAMILIES",
    "TASKS",
    "PRESETS",
    "PADDINGS",
    "SPLITS",
    "resolve_sizes",
    "make_synthetic",
    "write_synthetic",
    "synthetic_path",
    "ensure_synthetic",
    "read_metadata",
    "data_tag",
]

logger = logging.getLogger("mmsa_alignmamba")

# The families, by name (``--synthetic-task``). A family is a module (or object) with
#   VERSION   its signal model's version: a bump makes cached files stale;
#   SEED_TAG  the entropy it adds to [seed, preset index] (None: nothing, the first family's files),
#             fixed per family, so that adding a family never changes another's data;
#   structure(rng, preset) and make_split(rng, structure, preset, split, n, aligned, keep_latents);
#   optionally oracle(data, like): the oracle ladder its sidecar keeps.
# A distribution adds one under the entry-point group ``mmsa.synthetic_families``.
FAMILIES = Registry("synthetic task", "mmsa.synthetic_families", {
    "pooled": "mmsa_alignmamba.synthetic.pooled",
    "wordlevel": "mmsa_alignmamba.synthetic.wordlevel",
})
TASKS = FAMILIES.names()


def _task(task: str):
    return FAMILIES.get(task)


def _check_padding(padding: str) -> str:
    if padding not in PADDINGS:
        raise ValueError(f"synthetic padding must be one of {PADDINGS}, got {padding!r}")
    return padding


def make_synthetic(like: str = "mosi", aligned: bool = False,
                   size: str | Mapping[str, int] = "small", seed: int = 0, *,
                   n_train: int | None = None, n_valid: int | None = None,
                   n_test: int | None = None, return_latents: bool = False, task: str = "pooled",
                   padding: str = "bert"):
    """Generate a synthetic MMSA-format dataset ``{split: {key: array}}`` (see module doc).

    ``size``: "small", "full" or a dict of split sizes; ``n_train/n_valid/n_test`` override.
    ``task``: the signal model, ``pooled`` or ``wordlevel``. ``padding``: "bert" or "zero".
    With ``return_latents=True`` returns ``(data, latents)``: ``latents[split]`` holds the
    generator's hidden variables (``n_words``, per-word cues, the label terms and the true
    frame->word maps; see the family's module).
    """
    family = _task(task)
    p = preset(like)
    seed = check_seed(seed)
    _check_padding(padding)
    sizes = resolve_sizes(like, size)
    overrides = {"train": n_train, "valid": n_valid, "test": n_test}
    if any(v is not None for v in overrides.values()):
        sizes = resolve_sizes(like, {**sizes, **{k: v for k, v in overrides.items() if v is not None}})
    entropy = [seed, p["index"]] + ([] if family.SEED_TAG is None else [family.SEED_TAG])
    s_struct, *s_splits = np.random.SeedSequence(entropy).spawn(1 + len(SPLITS))
    st = family.structure(np.random.default_rng(s_struct), p)
    s_pad_vector, *pad_splits = np.random.SeedSequence(entropy + [PAD_SEED_TAG]).spawn(1 + len(SPLITS))
    pad_vector = np.random.default_rng(s_pad_vector).standard_normal(p["feature_dims"][0]).astype(np.float32)
    pad_vector *= np.float32(PAD_SCALE)   # one [PAD] vector for the whole file, a token's scale
    data, lats = {}, {}
    for split, s_ss, s_pad in zip(SPLITS, s_splits, pad_splits):
        data[split], lats[split] = family.make_split(np.random.default_rng(s_ss), st, p, split,
                                                     sizes[split], bool(aligned), return_latents)
        if padding == "bert":
            part = data[split]
            pad_like_bert(part["text"], part["text_bert"][:, MASK_ROW] > 0, pad_vector, np.random.default_rng(s_pad))
    return (data, lats) if return_latents else data


def _metadata(like, aligned, size, seed, task, padding) -> dict[str, Any]:
    p = preset(like)
    family = _task(task)
    T = p["seq_lens"]["aligned" if aligned else "unaligned"]
    return {
        "synthetic": True,
        "note": "synthetic data generated by mmsa_alignmamba.synthetic; NOT real data",
        "task": task,
        "like": p["name"].lower(),
        "aligned": bool(aligned),
        "size": size if isinstance(size, str) else size_label(like, size),
        "sizes": resolve_sizes(like, size),
        "seed": int(seed),
        "generator_version": family.VERSION,
        "seed_tag": family.SEED_TAG,
        "padding": _check_padding(padding),
        "seq_lens": list(T),
        "feature_dims": list(p["feature_dims"]),
    }


def data_tag(meta: Mapping[str, Any]) -> str:
    """The results' Data column for a synthetic file: ``synthetic-<size>-<padding>pad`` for the
    pooled family (as before there were two), ``synthetic-<task>-<size>-<padding>pad`` for the
    others; files from before the padding choice were zero-padded and keep their old tag."""
    task = meta.get("task", "pooled")
    size = meta.get("size", "custom")
    padding = f"-{meta['padding']}pad" if "padding" in meta else ""
    return (f"synthetic-{size}" if task == "pooled" else f"synthetic-{task}-{size}") + padding


def _dump(data, f) -> None:
    # protocol 4 turns every array into a bytes copy; the pickler's memo would keep all of them
    # alive until the end (2x peak memory on MOSEI full). The data holds no shared or recursive
    # references, so the memo is not needed: ``fast`` mode drops it (same loadable stream).
    p = pickle.Pickler(f, protocol=4)
    p.fast = True
    p.dump(data)


def write_synthetic(path, like: str = "mosi", aligned: bool = False,
                    size: str | Mapping[str, int] = "small", seed: int = 0, task: str = "pooled",
                    padding: str = "bert") -> Path:
    """Generate and write the pickle (atomic, protocol 4) plus the sidecar ``<path>.json``;
    for the wordlevel family the sidecar also holds the oracle ladder on the test split."""
    path = Path(path)
    meta = _metadata(like, aligned, size, check_seed(seed), task, padding)
    data = make_synthetic(like, aligned=aligned, size=size, seed=seed, task=task, padding=padding)
    oracle = getattr(_task(task), "oracle", None)
    if oracle is not None:
        meta["oracle"] = oracle(data, meta["like"])
    with atomic_write(path) as f:
        _dump(data, f)
    del data
    atomic_write_text(str(path) + ".json", json.dumps(meta, indent=2) + "\n")
    return path


def synthetic_path(cache_dir, like: str, aligned: bool = False,
                   size: str | Mapping[str, int] = "small", seed: int = 0, task: str = "pooled",
                   padding: str = "bert") -> Path:
    """Canonical cache file, e.g. ``<cache_dir>/synthetic/MOSI/Processed/unaligned_50-synthetic-small-bertpad-seed0.pkl``
    (``…-synthetic-wordlevel-small-zeropad-seed0.pkl`` for the wordlevel family with zero pads)."""
    p = preset(like)
    seed = check_seed(seed)
    _task(task)
    stem = p["file_stem"]["aligned" if aligned else "unaligned"]
    label = size_label(like, size) if task == "pooled" else f"{task}-{size_label(like, size)}"
    label += f"-{_check_padding(padding)}pad"
    return Path(cache_dir) / "synthetic" / p["name"] / "Processed" / f"{stem}-synthetic-{label}-seed{seed}.pkl"


def read_metadata(path) -> dict[str, Any] | None:
    """Sidecar metadata of a synthetic pickle, or None if absent/unreadable."""
    try:
        with open(str(path) + ".json", "r") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def ensure_synthetic(cache_dir, like: str, aligned: bool = False,
                     size: str | Mapping[str, int] = "small", seed: int = 0, task: str = "pooled",
                     padding: str = "bert") -> Path:
    """Return the cached synthetic file, generating it if missing or stale (other version)."""
    path = synthetic_path(cache_dir, like, aligned, size, seed, task, padding)
    meta = read_metadata(path)
    want = _metadata(like, aligned, size, seed, task, padding)
    if path.is_file() and meta is not None and meta.get("task", "pooled") == task and all(
            meta.get(k) == want[k] for k in ("synthetic", "like", "aligned", "sizes", "seed", "generator_version",
                                             "seed_tag", "padding")):
        return path
    logger.info("generating synthetic %s-format data (not real data), %s family, %s pads, at %s",
                preset(like)["name"], task, padding, path)
    return write_synthetic(path, like=like, aligned=aligned, size=size, seed=seed, task=task, padding=padding)
