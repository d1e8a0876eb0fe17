"""MMSA's building blocks for this package's own driver (runner, prediction, tuning, benchmarks),
each through MMSA's own code paths: its model and trainer maps, seeds, metrics and datasets."""
from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

import torch

from .fixes import build_dataloaders
from .install import install

__all__ = ["build_model", "build_trainer", "build_dataloaders", "setup_seed", "metrics_for", "prediction_dataset",
           "predict_scores"]


def build_model(args) -> torch.nn.Module:
    from MMSA.models import AMIO
    install()
    return AMIO(args)


def build_trainer(args):
    from MMSA.trains import ATIO
    install()
    return ATIO().getTrain(args)


def setup_seed(seed: int) -> None:
    from MMSA.utils import setup_seed as mmsa_setup_seed
    mmsa_setup_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def metrics_for(dataset_name: str):
    """MMSA's regression metrics for a dataset: callable(pred (N,1), true (N,1)) -> dict."""
    from MMSA.utils import MetricsTop
    return MetricsTop("regression").getMetics(dataset_name)


def prediction_dataset(args, split: dict):
    """MMSA's own MMDataset over one split held in memory (MMSA's dict of arrays, labels filled
    in), so that prediction sees exactly the preprocessing training saw: the -inf audio fix,
    the time averaging of models with need_normalized, the truncation of models with seq_lens.
    MMDataset only reads a file, so the split passes through a temporary one."""
    import pickle

    from MMSA.data_loader import MMDataset
    install()
    with tempfile.TemporaryDirectory(prefix="mmsa-predict-") as tmp:
        path = Path(tmp) / "split.pkl"
        with open(path, "wb") as f:
            pickle.dump({"test": split}, f, protocol=4)
        config = type(args)(dict(args, featurePath=str(path), feature_dims=list(args["feature_dims"])))
        with _mmsa_log_quiet():   # "test samples: (N,)" would mislead here
            return MMDataset(config, mode="test")


@contextlib.contextmanager
def _mmsa_log_quiet():
    """MMSA's logger at WARNING for the duration: its INFO lines describe training, not prediction."""
    mmsa_logger = logging.getLogger("MMSA")
    previous = mmsa_logger.level
    mmsa_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        mmsa_logger.setLevel(previous)


def predict_scores(model: torch.nn.Module, args, loader):
    """Run the model's own trainer's ``do_test`` over ``loader`` (so every model, built-in or
    plugin, is called in its own convention) and collect the regression output ``M`` of every
    batch in order. -> (scores (N,) numpy, the trainer's metric dict). The trainer's log line is
    hidden: its metrics are meaningless where the labels are placeholders."""
    import warnings

    import numpy as np
    trainer = build_trainer(args)
    scores = []
    hook = model.register_forward_hook(lambda _m, _i, out: scores.append(out["M"].detach().reshape(-1).cpu()))
    try:
        with _mmsa_log_quiet(), warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")    # one sample: numpy's "degrees of freedom" warnings
            metrics = trainer.do_test(model, loader, mode="PREDICT")
    finally:
        hook.remove()
    return torch.cat(scores).numpy() if scores else np.zeros(0, dtype=np.float32), metrics
