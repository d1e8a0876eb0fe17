"""The experiment driver behind the `mmsa` command: runs (model, dataset, protocol, rate, seed)
cells through MMSA's own loaders, models, trainers and metrics, and keeps every finished cell.

Each finished cell is one JSON file under `<res_save_dir>/cells/`, written atomically, so a
killed run or sweep started again skips what is done and redoes at most the cell that was
running. Summaries (CSV + markdown) are always rebuilt from the cell files, never appended.
Missing-modality sweeps without `train_missing` train once per seed on complete data and test
that checkpoint at every missing rate (the model is the same for every rate).
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


def build_args(cell: Cell, settings: RunSettings):
    """MMSA's config for the cell, with this run's data paths, device and overrides."""
    args = host.load_config(cell.model, cell.dataset, settings.config_file)
    if settings.aligned:
        args.update(host.aligned_dataset_params(cell.dataset))
    args.update(
        featurePath=settings.feature_path or args["featurePath"], custom_feature=None,
        feature_T=settings.feature_T, feature_A=settings.feature_A, feature_V=settings.feature_V,
        device=torch.device(settings.device), train_mode="regression",
        model_save_path=settings.checkpoint_path(cell),
    )
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


def check_cells(cells: list[Cell], settings: RunSettings) -> None:
    """Before anything is trained or written: each distinct (model, variant, dataset)'s config
    loads and its model accepts it, so a bad config is one error, not a traceback mid-sweep."""
    for cell in {Cell(c.model, c.dataset, c.data, 0, variant=c.variant): c for c in cells}.values():
        host.check_model_args(build_args(cell, settings))


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
    args = build_args(cell, settings)
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


def run_cells(cells: list[Cell], settings: RunSettings, progress=None, executor=None,
              poll_s: float = 2.0) -> list[tuple[Cell, dict]]:
    """Run every cell not already finished, on ``executor`` (default: this process, one training
    after another). Cells that differ only in missing rate share one trained model when training
    sees complete data. Each training is claimed in the results folder before it starts
    (claims.py), so runners sharing the folder never train the same cells twice; trainings that
    another live runner holds are waited for. ``progress(total, done)`` makes a progress bar over
    the trainings, told how many were finished before this run. -> [(cell, metrics or None)]."""
    from .claims import ClaimBook
    from .executors import Job, LocalExecutor
    executor = executor or LocalExecutor()
    store = ResultStore(settings.res_save_dir, settings.fingerprint())
    if settings.oracle:
        for dataset, data in sorted({(c.dataset, c.data) for c in cells}):
            store.save_oracle(dataset, data, settings.oracle)
    groups: dict[tuple, list[Cell]] = {}
    for cell in cells:
        train_key = (cell.model, cell.variant, cell.dataset, cell.data, cell.seed,
                     (cell.protocol, cell.rate) if settings.train_missing else None)
        groups.setdefault(train_key, []).append(cell)
    jobs = []
    for group in groups.values():
        todo = [c for c in group if store.load(c) is None]
        for c in group:
            if c not in todo:
                logger.info("already finished, skipping: %s", c.slug)
        if todo:
            first = todo[0]
            train_cell = first if settings.train_missing else Cell(first.model, first.dataset, first.data,
                                                                   first.seed, variant=first.variant)
            jobs.append(Job(train_cell, tuple(todo)))
    bar = progress(len(groups), len(groups) - len(jobs)) if progress is not None else None
    failed: dict[str, BaseException] = {}
    claims = ClaimBook(settings.res_save_dir)

    def done(job, error):
        claims.release(job.name)
        if error is not None:
            failed[job.name] = error
            cause = likely_cause(error)
            logger.error("FAILED %s: %s", job.name, cause)
            for cell in job.test_cells:
                store.save_failure(cell, f"{type(error).__name__}: {str(error)[:2000]}", cause)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(failed=len(failed), refresh=False)

    def running(count):
        if bar is not None:
            bar.set_postfix(running=count, failed=len(failed))

    try:
        pending = jobs
        while pending:
            mine = [job for job in pending if claims.claim(job.name)]
            waiting = [job for job in pending if job not in mine]
            for job in waiting:
                logger.info("another runner is training %s: waiting for it", job.name)
            executor.run(mine, settings, store, done, running=running)
            # what the other runners held: finished meanwhile (skip), still held (wait), or abandoned (claim)
            pending = [job for job in waiting if job.name not in failed
                       and any(store.load(c) is None for c in job.test_cells)]
            while pending and all(claims.held_by_others(job.name) for job in pending):
                time.sleep(poll_s)
                pending = [job for job in pending if any(store.load(c) is None for c in job.test_cells)]
            for job in waiting:
                if job not in pending and bar is not None:
                    bar.update(1)
    finally:
        claims.close()
    if failed:
        logger.error("%d training(s) failed: %s", len(failed), ", ".join(sorted(failed)))
    return [(c, store.load(c)) for group in groups.values() for c in group]


def likely_cause(error: BaseException) -> str:
    """One line on why a training did not finish, from the error its executor reported."""
    kind = type(error).__name__
    text = str(error)
    if kind == "OutOfMemoryError" or "memory monitor" in text.lower():
        return "killed for lack of memory (Ray's memory monitor; the memory use is in the error record)"
    if kind in ("WorkerCrashedError", "NodeDiedError") or "SIGKILL" in text or "signal 9" in text:
        return (f"{kind}: its process was killed (signal 9; on a memory-starved machine the kernel's OOM killer "
                "is the usual cause), after Ray's retries")
    first = text.strip().splitlines()[-1] if text.strip() else ""
    return f"{kind}: {first[:300]}"
