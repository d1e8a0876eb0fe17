"""Training one cell: MMSA's config for it, its data loaders, the training (with an epoch
budget any trainer obeys), the tests at each missing rate, and the self-describing checkpoint.

Below both the runner (which decides what to run) and the executors (which decide where):
:func:`train_and_test` is what a local run and a Ray task each call.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from . import checkpoints, host
from .errors import InputError
from .results import COMPLETE, Cell, ResultStore
from .settings import RunSettings

__all__ = ["EpochBudget", "EpochBudgetReached", "ModelCrashed", "cell_args", "attach_true_alignment", "train_and_test",
           "test_setting"]

logger = logging.getLogger("mmsa_alignmamba")


class EpochBudgetReached(Exception):
    pass


class ModelCrashed(Exception):
    """A model's or trainer's own code raised while training, validating or testing one cell."""

    def __init__(self, model: str, phase: str, error: BaseException):
        self.model, self.phase = model, phase
        last = str(error).strip().splitlines()[-1] if str(error).strip() else ""
        super().__init__(f"{model} crashed while {phase}: {type(error).__name__}: {last[:300]}")


@contextlib.contextmanager
def _crash_names(model: str, phase):
    """An error raised inside (the model's or its trainer's own code) becomes ModelCrashed, naming
    the model and ``phase`` (a string, or a callable giving it at the time of the crash). The
    budget's stop, bad input and interrupts pass through unchanged."""
    try:
        yield
    except (EpochBudgetReached, InputError):
        raise
    except Exception as e:
        raise ModelCrashed(model, phase() if callable(phase) else phase, e) from e


class EpochBudget:
    """Knows which pass a trainer is in (``phase``: 'training' or 'validating', for a crash's
    message) and, given ``epochs``, stops any trainer (MMSA's loop until early stop) after that many
    epochs. An epoch is counted as one pass over the valid loader: every trainer validates once per
    epoch, after its training passes, but some go over the train loader more than once an epoch
    (MMIM: its MMILB stage, then the rest) or once before the first (Self-MM: its label
    initialisation). The train loader raises EpochBudgetReached when a pass would start epoch N + 1."""

    def __init__(self, loaders: dict, epochs: int | None = None):
        self.epochs, self.validated, self.phase = epochs, 0, "training"
        self.loaders = {**loaders, "train": _Counted(loaders["train"], self._before_train),
                        "valid": _Counted(loaders["valid"], self._before_valid)}

    def _before_train(self) -> None:
        if self.epochs is not None and self.validated >= self.epochs:
            raise EpochBudgetReached
        self.phase = "training"

    def _before_valid(self) -> None:
        self.validated += 1
        self.phase = "validating"


class _Counted:
    """A loader that calls ``before()`` at the start of every pass over it."""

    def __init__(self, loader, before):
        self.loader, self.before, self.dataset = loader, before, loader.dataset

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        self.before()
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
    with _crash_names(cell.model, "building the model"):
        model = host.build_model(args).to(args["device"])
        trainer = host.build_trainer(args)
    record = store.training_record(cell)
    checkpoint = Path(args["model_save_path"])
    if record is None or not checkpoint.is_file():
        train_loaders = _wrap_missing(loaders, cell, args, True) if settings.train_missing else loaders
        budget = EpochBudget(train_loaders, settings.epochs)
        started = time.time()
        try:
            with _crash_names(cell.model, lambda: budget.phase):
                trainer.do_train(model, budget.loaders)
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
        with _crash_names(cell.model, "testing"):
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


