"""Self-describing checkpoints: the weights together with what it takes to use them elsewhere.

A checkpoint written here is one dict that ``torch.load(weights_only=True)`` accepts, so its
description is kept to plain types (str, int, float, bool, None, lists, dicts)::

    {"format": "mmsa-alignmamba-checkpoint", "format_version": 1,
     "state_dict": {name: tensor, ...},          # exactly the model's state dict
     "meta": {"model": "alignmamba", "variant": None | "wo_local_ot", "dataset": "mosi",
              "data": "real" | "synthetic-…", "seed": 1111,
              "feature_dims": [768, 5, 20],      # text, audio, vision input widths
              "config": {...},                   # MMSA's full config dict for the run, minus
                                                 #   machine-local paths and the device
              "test_metrics": {"complete": {...}, "sample@0.4": {...}},
              "versions": {"mmsa-alignmamba": …, "mmsa": …, "torch": …}}}

Training writes bare state dicts (MMSA's own ``MMSA_run`` reloads them with a plain
``load_state_dict``); the runner adds the description once the model has been tested. A bare
state dict, including every checkpoint made before this format existed, still loads: it is a
checkpoint without ``meta``.
"""
from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from .errors import DataFileError
from .safeio import atomic_write

__all__ = ["FORMAT", "FORMAT_VERSION", "Checkpoint", "describe", "save", "load", "load_weights_into"]

FORMAT = "mmsa-alignmamba-checkpoint"
FORMAT_VERSION = 1
# Config keys that only make sense on the machine that trained: data and output locations, device.
_LOCAL_KEYS = ("featurePath", "custom_feature", "feature_T", "feature_A", "feature_V", "model_save_path",
               "checkpoint_base", "res_save_dir", "model_save_dir", "log_dir", "device", "cur_seed")


@dataclass
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    meta: dict | None           # None: a bare state dict (an older checkpoint, or MMSA's own)
    path: Path

    @property
    def model_name(self) -> str | None:
        return (self.meta or {}).get("model")


def plain(value: Any) -> Any:
    """``value`` as types weights-only loading accepts; anything else (devices, paths, numpy
    scalars) becomes its plain equivalent or its text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:   # numpy / torch scalars
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return str(value)


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def describe(args: Mapping, *, dataset: str, data: str, seed: int | None, variant: str | None = None,
             test_metrics: Mapping[str, Mapping] | None = None) -> dict:
    """The ``meta`` of a checkpoint trained with MMSA config ``args``."""
    config = {k: plain(v) for k, v in args.items() if k not in _LOCAL_KEYS}
    return {
        "model": str(args["model_name"]).lower(), "variant": variant, "dataset": dataset.lower(), "data": data,
        "seed": seed, "feature_dims": [int(d) for d in args["feature_dims"]], "config": config,
        "test_metrics": plain(dict(test_metrics or {})),
        "versions": {d: _version(d) for d in ("mmsa-alignmamba", "mmsa", "torch")},
    }


def save(path, state_dict: Mapping[str, torch.Tensor], meta: Mapping | None) -> None:
    """Write atomically: a bare state dict without ``meta``, the described format with it."""
    weights = {k: v.detach().cpu() for k, v in state_dict.items()}
    payload = weights if meta is None else {"format": FORMAT, "format_version": FORMAT_VERSION,
                                            "state_dict": weights, "meta": plain(dict(meta))}
    with atomic_write(path) as f:
        torch.save(payload, f)


def load(path) -> Checkpoint:
    """Weights only: a checkpoint that asks to unpickle anything else (code) is refused, not run.
    Every failure is one DataFileError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is a paragraph; the line that names what the file asked for is the one to show
        asked = [line.strip() for line in str(e).splitlines() if "GLOBAL" in line]
        detail = asked[0] if asked else (str(e).split(". ")[0] or type(e).__name__)
        raise DataFileError(f"refused to load checkpoint {path}: it holds more than weights ({detail})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        detail = str(e).split(". ")[0].splitlines()[0] if str(e) else type(e).__name__
        raise DataFileError(f"cannot read checkpoint {path} (truncated or corrupt?): {detail}") from None
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        if payload.get("format_version", 0) > FORMAT_VERSION:
            raise DataFileError(f"checkpoint {path} has format version {payload['format_version']}; "
                                f"this mmsa-alignmamba reads up to {FORMAT_VERSION}: upgrade it")
        state, meta = payload.get("state_dict"), payload.get("meta")
    else:
        state, meta = payload, None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataFileError(f"checkpoint {path} holds no state dict of tensors")
    return Checkpoint(state, meta if isinstance(meta, dict) else None, path)


def load_weights_into(model: torch.nn.Module, checkpoint: Checkpoint | str | Path) -> None:
    """Load a checkpoint's weights strictly; a state dict that does not fit ``model`` (another
    model's checkpoint, other widths) is one DataFileError naming the first mismatch."""
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else load(checkpoint)
    own = model.state_dict()
    missing = [k for k in own if k not in ck.state_dict]
    unexpected = [k for k in ck.state_dict if k not in own]
    if missing or unexpected:
        names = ", ".join((missing + unexpected)[:3])
        raise DataFileError(f"checkpoint {ck.path} does not fit this model ({len(missing)} weight(s) missing, "
                            f"{len(unexpected)} unexpected, e.g. {names}): is it a checkpoint of another model?")
    for name, tensor in ck.state_dict.items():
        if tensor.shape != own[name].shape:
            raise DataFileError(f"checkpoint {ck.path}: weight {name} has shape {tuple(tensor.shape)}, "
                                f"the model expects {tuple(own[name].shape)} (other feature widths or config?)")
    model.load_state_dict(ck.state_dict)
