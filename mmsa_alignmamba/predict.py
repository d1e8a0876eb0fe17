"""Use a trained model: load a checkpoint, predict on new (possibly unlabelled) data.

    from mmsa_alignmamba import load_model
    model, predict, info = load_model("saved_models/alignmamba-mosi-real-complete-seed1111.pth")
    scores = predict(text, audio, vision)                  # numpy in, numpy (B,) sentiment scores out

and on the command line ``mmsa predict --checkpoint CK --feature-path X.pkl --out preds.csv``.

Any registered model works, built-in or plugin: the data goes through MMSA's own dataset class
and the model's own trainer's ``do_test`` (host.py), so each model is called in its own
convention and sees the preprocessing it was trained with. A checkpoint describes itself
(checkpoints.py); an older, bare state dict needs the model and dataset named.

Classes follow MMSA's thresholds for the dataset: on MOSI/MOSEI (scores in [-3, 3]) the binary
class is positive for a score >= 0 (MMSA's "Has0" Acc-2) and the 7-class one is the score rounded
after clipping to [-3, 3] (Acc-7); on SIMS (scores in [-1, 1]) the binary class is positive above
0, the 3-class one splits at ±0.1 and the 5-class one at ±0.1 and ±0.7.
"""
from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from . import checkpoints, host, text_padding
from .datasets import MODALITIES
from .errors import DataFileError, InputError

__all__ = ["LoadedModel", "ModelInfo", "load_model", "sentiment_classes", "predict_file", "data_feature_dims", "SPLIT_CHOICES"]

logger = logging.getLogger("mmsa_alignmamba")

SPLIT_CHOICES = ("test", "valid", "train", "all")
_SPLITS = ("train", "valid", "test")
_LABEL_KEYS = {"sims": ("regression_labels", "regression_labels_T", "regression_labels_A", "regression_labels_V")}
_SIMS_3 = ("negative", "neutral", "positive")


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded checkpoint is: ``meta`` is its recorded description (None for a bare one),
    ``config`` the MMSA config the model was built from (prediction reads the data with it)."""
    model: str
    dataset: str
    feature_dims: tuple[int, int, int] | None
    use_bert: bool
    aligned: bool
    meta: dict | None
    config: dict = field(repr=False, compare=False)


class LoadedModel(NamedTuple):
    model: torch.nn.Module                  # in eval mode, on the CPU
    predict: Callable[..., np.ndarray]      # numpy arrays -> (B,) scores
    info: ModelInfo


# ------------------------------------------------------------------------------------ loading
def load_model(checkpoint, model: str | None = None, dataset: str | None = None,
               feature_dims: Sequence[int] | None = None, config_file=None) -> LoadedModel:
    """Load a checkpoint for prediction. A self-describing checkpoint needs nothing else (a
    ``model`` that is given must match it); a bare state dict needs ``model``, ``dataset`` and
    the ``feature_dims`` (text, audio, vision widths) it was trained with."""
    ck = checkpoint if isinstance(checkpoint, checkpoints.Checkpoint) else checkpoints.load(checkpoint)
    meta = ck.meta
    if meta is not None:
        if model is not None and host.check_model_name(model) != meta["model"]:
            raise DataFileError(f"checkpoint {ck.path} is a checkpoint of '{meta['model']}', not of '{model.lower()}'")
        if dataset is not None and dataset.lower() != meta["dataset"]:
            logger.info("checkpoint %s was trained on %s; predicting with %s's thresholds",
                        ck.path, meta["dataset"].upper(), dataset.upper())
        name, dataset, stored = meta["model"], (dataset or meta["dataset"]).lower(), meta.get("config") or {}
        dims = tuple(int(d) for d in meta["feature_dims"])
    else:
        if model is None or dataset is None:
            raise InputError(f"checkpoint {ck.path} does not describe itself (a bare state dict, e.g. from before "
                             "self-describing checkpoints): name its model and dataset (-m, -d)")
        name, dataset, stored = model, dataset.lower(), {}
        dims = tuple(int(d) for d in feature_dims) if feature_dims is not None else None
        if dims is None:
            raise InputError(f"checkpoint {ck.path} does not record its feature widths: give them (text, audio, vision)")
    args = host.restore_config(name, dataset, stored, config_file)
    args["feature_dims"] = list(dims)
    net = host.build_model(args)
    checkpoints.load_weights_into(net, ck)
    net.eval()
    info = ModelInfo(name, dataset, dims, bool(args.get("use_bert")), bool(args.get("need_data_aligned")), meta, args)

    def predict(text, audio, vision, audio_lengths=None, vision_lengths=None, absent: Sequence[str] = (),
                text_lengths=None) -> np.ndarray:
        """Scores for one sample (text (T_l, d_t), audio (T_a, d_a), vision (T_v, d_v)) or a batch
        (a leading batch axis on each). Audio/vision lengths default to the full padded lengths;
        ``text_lengths``: valid tokens per sample ([CLS] words [SEP], the attention mask's count),
        without which zero rows of text are its padding. ``absent`` names modalities to treat as
        missing (the protocols' modality mask). -> (B,) float32."""
        split = _split_from_arrays(info, text, audio, vision, audio_lengths, vision_lengths, text_lengths)
        scores, _ = _run_split(net, info, split, absent, batch_size=int(args.get("batch_size", 32)))
        return scores

    return LoadedModel(net, predict, info)


# ------------------------------------------------------------------------------------ data
def _batched(x, name: str, ndim: int) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == ndim - 1:
        arr = arr[None]
    if arr.ndim != ndim:
        raise InputError(f"{name} must have {ndim - 1} (one sample) or {ndim} (a batch) dimensions, got shape {arr.shape}")
    return arr


def _split_from_arrays(info: ModelInfo, text, audio, vision, audio_lengths, vision_lengths, text_lengths) -> dict:
    text = _batched(text, "text", 3)
    audio, vision = _batched(audio, "audio", 3), _batched(vision, "vision", 3)
    n = text.shape[0]
    if audio.shape[0] != n or vision.shape[0] != n:
        raise InputError(f"text, audio and vision hold {n}, {audio.shape[0]} and {vision.shape[0]} samples")
    split = {"text_bert" if info.use_bert else "text": text, "audio": audio, "vision": vision,
             "id": np.array([str(i) for i in range(n)], dtype=object), "raw_text": np.array([""] * n, dtype=object)}
    for key, lengths, arr in (("audio_lengths", audio_lengths, audio), ("vision_lengths", vision_lengths, vision)):
        split[key] = np.full(n, arr.shape[1]) if lengths is None else np.asarray(lengths, dtype=np.int64).reshape(-1)
    if text_lengths is not None and not info.use_bert:   # in MMSA's form: the attention mask of text_bert
        lengths = np.asarray(text_lengths, dtype=np.int64).reshape(-1)
        if lengths.shape[0] != n or lengths.min() < 1 or lengths.max() > text.shape[1]:
            raise InputError(f"text_lengths must hold {n} values in [1, {text.shape[1]}]")
        split["text_bert"] = np.zeros((n, 3, text.shape[1]), np.float32)
        split["text_bert"][:, text_padding.MASK_ROW] = np.arange(text.shape[1])[None, :] < lengths[:, None]
    _check_split(info, split, "input")
    return split


def _check_split(info: ModelInfo, split: dict, where: str) -> None:
    """Widths, sample counts, lengths and finiteness of one split, against the model."""
    text_key = "text_bert" if info.use_bert else "text"
    missing = [k for k in (text_key, "audio", "vision") + (() if info.aligned else ("audio_lengths", "vision_lengths"))
               if k not in split]
    if missing:
        raise DataFileError(f"{where} lacks key(s) {missing}")
    arrays = {m: np.asarray(split[k]) for m, k in zip(MODALITIES, (text_key, "audio", "vision"))}
    for m, arr in arrays.items():
        if arr.ndim != 3 or arr.dtype.kind not in "biuf":
            raise DataFileError(f"{where}: {m} must be a 3-d array of numbers, got shape {arr.shape}, dtype {arr.dtype}")
    n = arrays["text"].shape[0]
    if n == 0:
        raise DataFileError(f"{where} holds no samples")
    if any(a.shape[0] != n for a in arrays.values()):
        raise DataFileError(f"{where}: text, audio and vision hold different numbers of samples")
    data_dims = (768 if info.use_bert else arrays["text"].shape[2], arrays["audio"].shape[2], arrays["vision"].shape[2])
    if info.feature_dims is not None and tuple(data_dims) != tuple(info.feature_dims):
        raise DataFileError(f"{where} has feature widths (text, audio, vision) = {data_dims}, but the "
                            f"{info.model} checkpoint was trained on {tuple(info.feature_dims)}")
    if info.use_bert and arrays["text"].shape[1] != 3:
        raise DataFileError(f"{where}: text_bert must be (N, 3, T) token ids / mask / segments")
    for m, arr in arrays.items():
        bad = ~np.isfinite(arr) & ~(np.isneginf(arr) if m == "audio" else False)  # MMSA zeroes audio -inf
        if bad.any():
            raise DataFileError(f"{where}: {m} contains {int(bad.sum())} NaN/inf value(s)")
    if not info.aligned:
        for m in ("audio", "vision"):
            lengths = np.asarray(split[f"{m}_lengths"]).reshape(-1)
            if lengths.shape[0] != n or lengths.min() < 1 or lengths.max() > arrays[m].shape[1]:
                raise DataFileError(f"{where}: {m}_lengths must hold {n} values in [1, {arrays[m].shape[1]}]")
    if not info.use_bert:   # the mask, where there is one, must fit the text; without one, say what counts
        text_padding.text_lengths(split, where)
        text_padding.warn_if_unmarked(split, where)


def _with_labels(split: dict, dataset: str) -> tuple[dict, np.ndarray | None]:
    """MMSA's dataset class needs labels: placeholders where the data has none. -> (split, labels or None)."""
    n = np.asarray(split["audio"]).shape[0]
    keys = _LABEL_KEYS.get(dataset, ("regression_labels",))
    labels = np.asarray(split["regression_labels"], dtype=np.float32).reshape(-1) if "regression_labels" in split else None
    if labels is not None and labels.shape[0] != n:
        raise DataFileError(f"regression_labels hold {labels.shape[0]} values for {n} samples")
    filled = dict(split)
    if labels is not None and (n < 2 or not np.any(labels)):
        logger.info("%d sample(s)%s: no metrics, predictions only", n, "" if n < 2 else " all labelled 0")
        labels = None
        filled.pop("regression_labels")
    # Placeholders of both signs: MMSA's metric code fails on labels that are all 0.
    placeholder = np.where(np.arange(n) % 2 == 0, 1.0, -1.0).astype(np.float32)
    for key in keys:
        if key not in filled:
            filled[key] = placeholder
    filled.setdefault("id", np.array([str(i) for i in range(n)], dtype=object))
    filled.setdefault("raw_text", np.array([""] * n, dtype=object))
    return filled, labels


class AbsentModalities:
    """Marks named modalities missing for every sample, through the same modality mask and the
    same 'missing' inputs the missing-modality protocols use (missing.py)."""

    def __init__(self, absent: Sequence[str], use_bert: bool):
        unknown = sorted(set(absent) - set(MODALITIES))
        if unknown:
            raise InputError(f"--absent takes {', '.join(MODALITIES)}; got {', '.join(unknown)}")
        if set(absent) >= set(MODALITIES):
            raise InputError("--absent cannot remove all three modalities")
        self.present = np.array([m not in absent for m in MODALITIES])
        self.use_bert = use_bert

    def apply(self, batch: dict, split: str, batch_index: int, epoch: int = 0, num_batches=None) -> dict:
        from .missing import mark_absent
        return mark_absent(batch, np.tile(self.present, (len(batch["audio"]), 1)), self.use_bert)


def _run_split(net, info: ModelInfo, split: dict, absent: Sequence[str], batch_size: int):
    """-> (scores (N,), the trainer's metrics or None when the split has no labels)."""
    from torch.utils.data import DataLoader

    from .missing import MissingModalityLoader
    filled, labels = _with_labels(split, info.dataset)
    dataset = host.prediction_dataset(info.config, filled)
    loader = DataLoader(dataset, batch_size=max(1, min(batch_size, len(dataset))), shuffle=False)
    if absent:
        loader = MissingModalityLoader(loader, AbsentModalities(absent, info.use_bert), "test")
    scores, metrics = host.predict_scores(net, info.config, loader)
    if scores.shape[0] != len(dataset):
        raise RuntimeError(f"{info.model}'s trainer ran the model {scores.shape[0]} times for {len(dataset)} samples")
    return scores, (metrics if labels is not None else None)


def data_feature_dims(feature_path, model: str, dataset: str) -> tuple[int, int, int]:
    """(text, audio, vision) widths of an MMSA-format pickle as ``model`` would read it."""
    from .safeio import safe_pickle_load
    use_bert = bool(host.load_config(model, dataset).get("use_bert"))
    data = safe_pickle_load(feature_path)
    for split in _SPLITS:
        part = data.get(split) if isinstance(data, dict) else None
        if isinstance(part, dict) and all(k in part for k in ("text", "audio", "vision")):
            return (768 if use_bert else np.asarray(part["text"]).shape[-1], np.asarray(part["audio"]).shape[-1],
                    np.asarray(part["vision"]).shape[-1])
    raise DataFileError(f"{feature_path} has no split with text, audio and vision")


# ------------------------------------------------------------------------------------ classes
def sentiment_classes(scores: np.ndarray, dataset: str) -> dict[str, list]:
    """Each score's class under MMSA's thresholds for ``dataset`` (see the module docstring)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if dataset == "sims":
        clipped = np.clip(s, -1.0, 1.0)
        three = np.digitize(clipped, [-0.1, 0.1], right=True)               # (-1,-.1] (-.1,.1] (.1,1]
        return {"class_2": ["positive" if v > 0 else "negative" for v in clipped],
                "class_3": [_SIMS_3[i] for i in three],
                "class_5": np.digitize(clipped, [-0.7, -0.1, 0.1, 0.7], right=True).tolist()}
    return {"class_2": ["positive" if v >= 0 else "negative" for v in s],
            "class_7": np.round(np.clip(s, -3.0, 3.0)).astype(int).tolist()}


# ------------------------------------------------------------------------------------ files
def predict_file(loaded: LoadedModel, feature_path, splits: Sequence[str], absent: Sequence[str] = (),
                 batch_size: int | None = None) -> tuple[str, dict[str, dict | None]]:
    """Predict every sample of ``splits`` of an MMSA-format pickle (labels optional).
    -> (the CSV text, {split: metrics or None when unlabelled})."""
    from .safeio import safe_pickle_load
    net, _, info = loaded
    data = safe_pickle_load(feature_path)
    if not isinstance(data, dict):
        raise DataFileError(f"{feature_path}: top level must be a dict of splits, got {type(data).__name__}")
    wanted = list(_SPLITS) if list(splits) == ["all"] else list(splits)
    present = [s for s in wanted if isinstance(data.get(s), dict)]
    if not present:
        raise DataFileError(f"{feature_path} has no split {' / '.join(wanted)}")
    size = batch_size or int(info.config.get("batch_size", 32))
    rows, metrics = [], {}
    for split in present:
        _check_split(info, data[split], f"{feature_path} split '{split}'")
        scores, metrics[split] = _run_split(net, info, data[split], absent, size)
        ids = np.asarray(data[split].get("id", np.arange(len(scores)))).reshape(-1)
        labels = data[split].get("regression_labels")
        classes = sentiment_classes(scores, info.dataset)
        for i, score in enumerate(scores):
            row = {"id": str(ids[i]), "split": split, "score": f"{float(score):.6f}",
                   **{k: v[i] for k, v in classes.items()}}
            if labels is not None:
                row["label"] = f"{float(np.asarray(labels).reshape(-1)[i]):.6f}"
            rows.append(row)
    out = io.StringIO()
    fields = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue(), metrics
