"""Where trainings run: in this process, one after another (``local``, the default), or as tasks
on a Ray cluster (``ray``, the optional ``[ray]`` extra), each a (model, dataset, data, protocol,
rate, seed) training with its tests.

A Ray task needs no file system shared with the driver. The driver puts the dataset's bytes (and
the config's text, and any -Ft/-Fa/-Fv file) into Ray's object store once; each task writes them
to its own temporary folder, trains and tests there with the driver's settings and fingerprint,
and returns the finished records and the checkpoint's bytes, which the driver writes into its
own --res-save-dir and --model-save-dir. So a task that dies (its worker process or its node) and
is retried elsewhere by Ray leaves nothing behind, and nothing is counted twice: only the driver
writes, once per finished task.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .results import Cell, ResultStore
from .errors import InputError
from .safeio import atomic_write, atomic_write_text
from .settings import RunSettings

__all__ = ["Job", "LocalExecutor", "RayExecutor", "make_executor", "import_ray", "EXECUTORS"]

logger = logging.getLogger("mmsa_alignmamba")

EXECUTORS = ("local", "ray")
RAY_TASK_RETRIES = 3


@dataclass(frozen=True)
class Job:
    """One training (``train_cell``) and the test settings it is tested in (``test_cells``)."""
    train_cell: Cell
    test_cells: tuple[Cell, ...]

    @property
    def name(self) -> str:
        return self.train_cell.slug


Done = Callable[[Job, BaseException | None], None]


def import_ray(what: str):
    """The ray module, or one InputError saying that ``what`` needs the ``[ray]`` extra."""
    try:
        import ray
    except ImportError:
        raise InputError(f'{what} needs the ray extra: pip install -e ".[ray]"') from None
    return ray


def _set_threads(cpus_per_run: int | None) -> None:
    if cpus_per_run:
        import torch
        torch.set_num_threads(int(cpus_per_run))


class LocalExecutor:
    """Each training in this process, one after another. A model that crashes (ModelCrashed) is
    reported as failed and the rest go on, as on Ray; its traceback goes to the debug log
    (``-v 2``). Anything else (bad input, an interrupt, a bug of this package) stops the run."""
    name = "local"

    def __init__(self, cpus_per_run: int | None = None):
        self.cpus_per_run = cpus_per_run

    def run(self, jobs: list[Job], settings: RunSettings, store: ResultStore, done: Done, running=None) -> None:
        """Train and test each job here; ``running(count)`` is not called: one runs at a time."""
        from .cell_training import ModelCrashed, train_and_test
        _set_threads(self.cpus_per_run)
        for job in jobs:
            logger.info("running %s (%d test setting(s))", job.name, len(job.test_cells))
            try:
                train_and_test(job.train_cell, settings, list(job.test_cells), store)
            except ModelCrashed as e:
                logger.debug("%s: %s", job.name, e, exc_info=e.__cause__)
                done(job, e)
                continue
            done(job, None)

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------------------- Ray
def _inputs_of(settings: RunSettings) -> dict[str, bytes]:
    """The files a task needs, by the settings field that names them: read once, on the driver."""
    files = {}
    for field in ("feature_path", "config_file", "feature_T", "feature_A", "feature_V"):
        path = getattr(settings, field)
        if path:
            files[field] = Path(path).read_bytes()
    return files


def _ray_train(job: Job, settings: RunSettings, fingerprint: str, inputs: dict, cpus_per_run) -> dict:
    """A Ray task: train and test ``job`` in a temporary folder; -> the files the driver writes."""
    from .cell_training import train_and_test
    _set_threads(cpus_per_run)
    with tempfile.TemporaryDirectory(prefix="mmsa-ray-task-") as tmp:
        tmp = Path(tmp)
        local = {}
        for field, data in inputs.items():
            path = tmp / "inputs" / f"{field}{Path(getattr(settings, field)).suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            local[field] = str(path)
        here = dataclasses.replace(settings, **local, res_save_dir=tmp / "results", model_save_dir=tmp / "models",
                                   log_dir=tmp / "logs")
        for d in (here.res_save_dir, here.model_save_dir, here.log_dir):
            Path(d).mkdir(parents=True)
        train_and_test(job.train_cell, here, list(job.test_cells), ResultStore(here.res_save_dir, fingerprint))
        records = {str(p.relative_to(here.res_save_dir)): p.read_text()
                   for p in Path(here.res_save_dir, "cells").rglob("*") if p.is_file()}
        checkpoint = here.checkpoint_path(job.train_cell)
        import ray
        return {"records": records, "checkpoint": (checkpoint.name, checkpoint.read_bytes()),
                "node": f"{os.uname().nodename} (Ray node {ray.get_runtime_context().get_node_id()[:8]})"}


class RayExecutor:
    """Each training a Ray task (``num_cpus=cpus_per_run``, ``num_gpus=gpus_per_run``), retried
    by Ray up to RAY_TASK_RETRIES times if its worker or node dies."""
    name = "ray"

    def __init__(self, address: str | None = None, cpus_per_run: int = 1, gpus_per_run: float = 0):
        ray = import_ray("--executor ray")
        self.ray = ray
        self.cpus_per_run, self.gpus_per_run = cpus_per_run, gpus_per_run
        address = address or os.environ.get("RAY_ADDRESS") or None
        if not ray.is_initialized():
            # no address: a Ray instance on this machine, started for this run and stopped after it
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONUNBUFFERED": "1"}})
            self.started_here = True
        else:
            self.started_here = False
        self.remote = ray.remote(max_retries=RAY_TASK_RETRIES)(_ray_train)

    def run(self, jobs: list[Job], settings: RunSettings, store: ResultStore, done: Done, running=None) -> None:
        ray = self.ray
        if not jobs:
            return
        inputs = ray.put(_inputs_of(settings))
        options = {"num_cpus": self.cpus_per_run, "num_gpus": self.gpus_per_run}
        if self.gpus_per_run and settings.device == "cpu":
            settings = dataclasses.replace(settings, device="cuda")
        pending = {self.remote.options(**options).remote(job, settings, store.fingerprint, inputs, self.cpus_per_run): job
                   for job in jobs}
        logger.info("submitted %d training(s) to Ray (%s per run)", len(pending),
                    f"{self.cpus_per_run} CPU" + (f", {self.gpus_per_run} GPU" if self.gpus_per_run else ""))
        while pending:
            if running is not None:
                running(len(pending))
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            try:
                out = ray.get(ready[0])
            except Exception as e:  # noqa: BLE001 - the task's failure, after Ray's retries: reported, not fatal
                done(job, e)
                continue
            name, data = out["checkpoint"]    # first the checkpoint, then the records that point to it
            with atomic_write(Path(settings.model_save_dir) / name) as f:
                f.write(data)
            for relative, text in sorted(out["records"].items(), key=lambda kv: kv[0].endswith(".json")):
                atomic_write_text(Path(store.res_dir) / relative, text)   # a cell last: it marks the work done
            logger.info("finished %s on %s", job.name, out["node"])
            done(job, None)

    def close(self) -> None:
        if self.started_here:
            self.ray.shutdown()


def make_executor(name: str, address: str | None = None, cpus_per_run: int | None = None,
                  gpus_per_run: float = 0):
    if name == "ray":
        return RayExecutor(address, cpus_per_run or 1, gpus_per_run)
    if name != "local":
        raise InputError(f"unknown executor {name!r}; choose from {', '.join(EXECUTORS)}")
    return LocalExecutor(cpus_per_run)
