"""Training one cell: MMSA's config for it, its data loaders, the training (with an epoch
budget any trainer obeys), the tests at each missing rate, and the self-describing checkpoint.

Below both the runner (which decides what to run) and the executors (which decide where):
:func:`train_and_test` is what a local run and a Ray task each call.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from . import checkpoints, host
from .results import COMPLETE, Cell, ResultStore
from .settings import RunSettings

__all__ = ["EpochBudget", "EpochBudgetReached", "cell_args", "attach_true_alignment", "train_and_test",
           "test_setting"]

logger = logging.getLogger("mmsa_alignmamba")


class EpochBudgetReached(Exception):
    pass


class EpochBudget:
    """Wraps the train loader to stop any trainer (MMSA's loop until early stop) after N epochs."""

    def __init__(self, loader, epochs: int):
        self.loader, self.epochs, self.started = loader, epochs, 0
        self.dataset = loader.dataset

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        self.started += 1
        if self.started > self.epochs:
            raise EpochBudgetReached
        return iter(self.loader)


def cell_args(cell: Cell, settings: RunSettings):
    """MMSA's config for the cell, with this run's data paths, device and overrides."""
    args = host.load_config(cell.model, cell.dataset, settings.config_file)
    if settings.aligned:
        args.update(host.aligned_dataset_params(cell.dataset))
    args.update(host.mmsa_run_args(settings.feature_path or args["featurePath"], settings.device,
                                   settings.checkpoint_path(cell), settings.feature_T, settings.feature_A,
                                   settings.feature_V))
    if settings.early_stop is not None:
        args["early_stop"] = settings.early_stop
    if settings.epochs is not None:
        args["max_epochs"] = settings.epochs
    if settings.pretrained:
        args["pretrained"] = settings.pretrained
    if cell.variant:
        from .model import ABLATIONS
        args.update(ABLATIONS[cell.variant])
    args.update(settings.overrides)
    return args



def attach_true_alignment(loaders, feature_path) -> None:
    """Give each split's dataset its true frame->word maps (``dataset.true_tokens``: modality ->
    (N, T_m) long tensor), which the trainer uses to measure how well plans align."""
    from .safeio import safe_pickle_load
    from .synthetic.common import TRUE_MAP_KEYS
    data = safe_pickle_load(feature_path)
    for split, loader in loaders.items():
        loader.dataset.true_tokens = {m: torch.as_tensor(np.asarray(data[split][key]), dtype=torch.long)
                                      for m, key in TRUE_MAP_KEYS.items() if key in data[split]}
    del data


def _wrap_missing(loaders, cell: Cell, args, train_missing: bool):
    from .missing import MissingModalityLoader, make_protocol
    protocol = make_protocol(cell.protocol, cell.rate, cell.seed, use_bert=bool(args.get("use_bert")))
    splits = ("train", "valid", "test") if train_missing else ("test",)
    return {s: MissingModalityLoader(l, protocol, s) if s in splits else l for s, l in loaders.items()}


def _train(cell: Cell, settings: RunSettings, args, loaders, store: "ResultStore"):
    """Train the model for `cell` unless a finished training of it is on record; return it loaded
    with its best-on-validation checkpoint, the trainer, the training record and the checkpoint's
    description (None for a bare one)."""
    model = host.build_model(args).to(args["device"])
    trainer = host.build_trainer(args)
    record = store.training_record(cell)
    checkpoint = Path(args["model_save_path"])
    if record is None or not checkpoint.is_file():
        train_loaders = _wrap_missing(loaders, cell, args, True) if settings.train_missing else loaders
        if settings.epochs is not None:
            train_loaders = {**train_loaders, "train": EpochBudget(train_loaders["train"], settings.epochs)}
        started = time.time()
        try:
            trainer.do_train(model, train_loaders)
        except EpochBudgetReached:
            logger.info("stopped %s after the --epochs budget of %d", cell.slug, settings.epochs)
        record = {"train_seconds": round(time.time() - started, 2), "checkpoint": checkpoint.name}  # in --model-save-dir
        store.save_training_record(cell, record)
    else:
        logger.info("reusing the finished training of %s (%s)", cell.slug, checkpoint)
    loaded = checkpoints.load(checkpoint)
    checkpoints.load_weights_into(model, loaded)
    return model.to(args["device"]), trainer, record, loaded.meta


def train_and_test(cell: Cell, settings: RunSettings, test_cells: list[Cell], store: "ResultStore") -> None:
    """Train one model for `cell` (complete data unless train_missing) and test it on each of
    `test_cells` (same model and seed, different missing rates), saving each result at once."""
    args = cell_args(cell, settings)
    args["cur_seed"] = cell.seed
    host.setup_seed(cell.seed)
    loaders = host.build_dataloaders(args, settings.num_workers)
    if settings.true_alignment:
        attach_true_alignment(loaders, args["featurePath"])
    model, trainer, record, described = _train(cell, settings, args, loaders, store)
    tested = dict((described or {}).get("test_metrics") or {})
    results = []
    for test_cell in test_cells:
        host.setup_seed(cell.seed)
        test_loaders = loaders if test_cell.protocol == COMPLETE else _wrap_missing(loaders, test_cell, args, False)
        metrics = trainer.do_test(model, test_loaders["test"], mode="TEST")
        metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, np.floating))}
        results.append((test_cell, metrics))
        tested[test_setting(test_cell)] = metrics
    # The checkpoint describes itself (model, config, widths, data, scores) before any cell is
    # recorded, so that a finished cell always has a described checkpoint.
    meta = checkpoints.describe(args, dataset=cell.dataset, data=cell.data, seed=cell.seed,
                                variant=cell.variant or None, test_metrics=tested)
    checkpoints.save(args["model_save_path"], model.state_dict(), meta)
    for test_cell, metrics in results:
        store.save(test_cell, metrics, {"train_cell": asdict(cell), "train_seconds": record["train_seconds"]})


def test_setting(cell: Cell) -> str:
    """How a checkpoint names the test it records: 'complete', or '<protocol>@<rate>'."""
    return COMPLETE if cell.protocol == COMPLETE else f"{cell.protocol}@{cell.rate:g}"


