"""The experiment driver behind the `mmsa` command: runs (model, dataset, protocol, rate, seed)
cells through MMSA's own loaders, models, trainers and metrics, and keeps every finished cell.

Each finished cell is one JSON file under `<res_save_dir>/cells/`, written atomically, so a
killed run or sweep started again skips what is done and redoes at most the cell that was
running. Summaries (CSV + markdown) are always rebuilt from the cell files, never appended.
Missing-modality sweeps without `train_missing` train once per seed on complete data and test
that checkpoint at every missing rate (the model is the same for every rate).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

from . import host
from .cell_training import cell_args
from .results import Cell, ResultStore
from .settings import RunSettings

logger = logging.getLogger("mmsa_alignmamba")


def fingerprint(settings: RunSettings) -> str:
    """What makes two runs of the same cell comparable: config contents, data, training budget.
    Without -c the config is MMSA's and the plugins' shipped defaults, so those count: after an
    upgrade that changes a default, old results are run again rather than silently reused."""
    config_text = Path(settings.config_file).read_text() if settings.config_file else host.default_configs_text()
    relevant = {k: str(v) for k, v in asdict(settings).items()
                if k not in ("device", "num_workers", "model_save_dir", "res_save_dir", "log_dir", "config_file",
                             "true_alignment", "oracle")}
    relevant["config"] = config_text
    return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def check_cells(cells: list[Cell], settings: RunSettings) -> None:
    """Before anything is trained or written: each distinct (model, variant, dataset)'s config
    loads and its model accepts it, so a bad config is one error, not a traceback mid-sweep."""
    for cell in {Cell(c.model, c.dataset, c.data, 0, variant=c.variant): c for c in cells}.values():
        host.check_model_args(cell_args(cell, settings))



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
    store = ResultStore(settings.res_save_dir, fingerprint(settings))
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
    if kind == "ModelCrashed":            # its message names the model, the phase and the cause
        return text
    if kind == "OutOfMemoryError" or "memory monitor" in text.lower():
        return "killed for lack of memory (Ray's memory monitor; the memory use is in the error record)"
    if kind in ("WorkerCrashedError", "NodeDiedError") or "SIGKILL" in text or "signal 9" in text:
        return (f"{kind}: its process was killed (signal 9; on a memory-starved machine the kernel's OOM killer "
                "is the usual cause), after Ray's retries")
    first = text.strip().splitlines()[-1] if text.strip() else ""
    return f"{kind}: {first[:300]}"
