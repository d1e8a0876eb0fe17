"""Resumable sweeps, determinism and atomic writes (issue acceptance).

1. A sweep killed with SIGKILL mid-way and run again skips the finished cells (their files are
   not rewritten), ends with the same summary.csv as an uninterrupted run, and leaves no temp
   file behind.
2. Two identical CPU runs give byte-identical metric rows (train_seconds, wall time, excluded).
3. `safeio.atomic_write` keeps the old file when the writer fails, and leaves no temp file.

The `mmsa` command runs in subprocesses with HOME in the tmp dir and every output dir under tmp.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmsa_alignmamba import safeio
from mmsa_alignmamba.synthetic import write_synthetic

TINY = {"train": 24, "valid": 8, "test": 8}
MMSA_BIN = Path(sys.executable).with_name("mmsa")
TIMING_COLUMNS = ("train_seconds", "train_seconds_std")   # wall time: never reproducible

SWEEP = ["-m", "lf_dnn", "-d", "mosi", "-s", "1", "-s", "2", "-s", "3", "--epochs", "2",
         "--missing-protocol", "sample", "--missing-rates", "0.2", "0.5", "--train-missing"]
SWEEP_CELLS = 6


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def sweep_pkl(tmp_path_factory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("data") / "tiny.pkl", like="mosi", size=TINY, seed=0)


class Out:
    """One run's output dirs (under tmp) and the environment its subprocesses see."""

    def __init__(self, root: Path, home: Path):
        self.root = root
        self.res, self.models, self.logs = root / "res", root / "models", root / "logs"
        self.env = {**os.environ, "HOME": str(home), "PYTHONUNBUFFERED": "1"}
        self.env.pop("MMSA_DATA_DIR", None)

    def argv(self, args: list[str], data: Path) -> list[str]:
        return [str(MMSA_BIN), *args, "--feature-path", str(data), "--res-save-dir", str(self.res),
                "--model-save-dir", str(self.models), "--log-dir", str(self.logs)]

    def cells(self) -> list[Path]:
        root = self.res / "cells"
        return sorted(root.rglob("*.json")) if root.is_dir() else []

    def run(self, args, data, timeout=240) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.argv(args, data), env=self.env, cwd=self.root.parent, capture_output=True,
                              text=True, timeout=timeout)
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
        return proc


@pytest.fixture
def outs(tmp_path):
    home = tmp_path / "run-home"
    home.mkdir()
    return lambda name: Out(tmp_path / name, home)


def metric_rows(summary_csv: Path) -> list[dict]:
    """summary.csv rows as the exact text written, timing columns dropped."""
    with open(summary_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows, f"{summary_csv} has no rows"
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]


def cell_metrics(out: Out) -> dict[str, dict]:
    """slug -> metrics of every finished cell, timing dropped."""
    return {p.stem: {k: v for k, v in json.loads(p.read_text())["metrics"].items() if k not in TIMING_COLUMNS}
            for p in out.cells()}


def temp_files(*roots: Path) -> list[Path]:
    return [p for r in roots if r.exists() for p in r.rglob("*") if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------- 1. kill and resume
def test_killed_sweep_resumes_without_recomputing(sweep_pkl, outs):
    killed = outs("killed")
    proc = subprocess.Popen(killed.argv(SWEEP, sweep_pkl), env=killed.env, cwd=killed.root.parent,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not killed.cells():
            assert proc.poll() is None, f"the sweep ended (exit {proc.returncode}) before finishing a cell"
            assert time.monotonic() < deadline, "no cell finished within 180 s"
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the sweep was not killed mid-way"

    finished = killed.cells()
    assert 1 <= len(finished) < SWEEP_CELLS, f"kill was not mid-way: {len(finished)} of {SWEEP_CELLS} finished"
    assert not (killed.res / "summary.csv").exists()
    # with --train-missing each cell trains its own model, saved under the cell's slug
    checkpoints = [killed.models / f"{p.stem}.pth" for p in finished]
    assert all(c.is_file() for c in checkpoints), checkpoints
    mtimes = {p: p.stat().st_mtime_ns for p in finished + checkpoints}
    first_metrics = {p.stem: json.loads(p.read_text()) for p in finished}

    resumed = killed.run(SWEEP, sweep_pkl)
    for p, mtime in mtimes.items():
        assert p.stat().st_mtime_ns == mtime, f"{p.name} was rewritten"
    for p in finished:
        assert json.loads(p.read_text()) == first_metrics[p.stem]
        assert f"already finished, skipping: {p.stem}" in resumed.stderr
    assert len(killed.cells()) == SWEEP_CELLS
    ran = resumed.stderr.count("mmsa_alignmamba INFO running ")
    assert ran == SWEEP_CELLS - len(finished), resumed.stderr[-3000:]

    whole = outs("whole")
    whole.run(SWEEP, sweep_pkl)
    assert len(whole.cells()) == SWEEP_CELLS
    assert cell_metrics(killed) == cell_metrics(whole)
    assert metric_rows(killed.res / "summary.csv") == metric_rows(whole.res / "summary.csv")
    assert metric_rows(killed.res / "summary-robustness.csv") == metric_rows(whole.res / "summary-robustness.csv")

    leftovers = temp_files(killed.root, whole.root, killed.root.parent / "run-home")
    assert leftovers == [], leftovers


# ----------------------------------------------------------------------------- 2. determinism (+ resume inside a group)
def _determinism(data, outs, args, timeout=240):
    a, b = outs("a"), outs("b")
    a.run(args, data, timeout)
    b.run(args, data, timeout)
    assert cell_metrics(a) == cell_metrics(b)
    assert metric_rows(a.res / "summary.csv") == metric_rows(b.res / "summary.csv")
    return a, b


def test_identical_cpu_runs_give_identical_metrics_and_resume_reuses_training(sweep_pkl, outs):
    """Two identical runs: identical metric rows. Then, without --train-missing one training per
    seed is tested at every rate: a run killed after the training and the first rate's result
    reuses the checkpoint for the other rates (no epoch runs, no file rewritten, same numbers)."""
    args = ["-m", "lf_dnn", "-d", "mosi", "-s", "7", "--epochs", "2",
            "--missing-protocol", "sample", "--missing-rates", "0.2", "0.5"]
    a, b = _determinism(sweep_pkl, outs, args)
    assert len(a.cells()) == 2
    removed = next(p for p in a.cells() if "sample0.50" in p.name)
    kept = [p for p in a.cells() if p != removed]
    mtimes = {p: p.stat().st_mtime_ns for p in kept}
    (checkpoint,) = sorted(a.models.iterdir())
    weights = torch.load(checkpoint, weights_only=True)["state_dict"]
    removed.unlink()  # as if killed right after the 0.2 result was saved

    again = a.run(args, sweep_pkl)
    assert "reusing the finished training of lf_dnn-mosi-synthetic-n24-8-8-bertpad-complete-seed7" in again.stderr
    assert "already finished, skipping: lf_dnn-mosi-synthetic-n24-8-8-bertpad-sample0.20-seed7" in again.stderr
    assert "after the --epochs budget" not in again.stderr  # no training epoch ran
    assert {p: p.stat().st_mtime_ns for p in kept} == mtimes
    # the checkpoint keeps its weights and now records the test it was reused for as well
    payload = torch.load(checkpoint, weights_only=True)
    assert all(torch.equal(v, payload["state_dict"][k]) for k, v in weights.items())
    assert set(payload["meta"]["test_metrics"]) == {"sample@0.2", "sample@0.5"}
    assert cell_metrics(a) == cell_metrics(b)
    assert metric_rows(a.res / "summary.csv") == metric_rows(b.res / "summary.csv")
    assert temp_files(a.root, b.root) == []


def test_identical_cpu_runs_give_identical_metrics_alignmamba(tmp_path, outs):
    try:
        from mmsa_alignmamba.model import AlignMamba  # noqa: F401
    except ImportError as e:  # mmsa_alignmamba/mamba.py is still being written
        pytest.skip(f"AlignMamba does not import yet: {e}")
    data = write_synthetic(tmp_path / "micro.pkl", like="mosi", size={"train": 8, "valid": 4, "test": 4}, seed=0)
    _determinism(data, outs, ["-m", "alignmamba", "-d", "mosi", "-s", "1", "--epochs", "1"], timeout=400)


# ----------------------------------------------------------------------------- 3. atomic writes
def _own_dir(tmp_path: Path) -> Path:
    """A folder only the test writes to (tmp_path also holds the shared fixtures' HOME)."""
    d = tmp_path / "w"
    d.mkdir()
    return d


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("mode", ["w", "wb"])
def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path, error, mode):
    tmp_path = _own_dir(tmp_path)
    path = tmp_path / "summary.csv"
    path.write_text("old contents\n")
    with pytest.raises(error):
        with safeio.atomic_write(path, mode) as f:
            f.write("new, partial" if mode == "w" else b"new, partial")
            f.flush()
            assert path.read_text() == "old contents\n"  # nothing visible while writing
            raise error("writer died mid-way")
    assert path.read_text() == "old contents\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.csv"]


def test_atomic_write_of_a_new_file_that_fails_leaves_nothing(tmp_path):
    path = tmp_path / "sub" / "cell.json"
    with pytest.raises(ValueError):
        with safeio.atomic_write(path, "w") as f:
            f.write("{")
            raise ValueError("boom")
    assert not path.exists()
    assert list(path.parent.iterdir()) == []


def test_atomic_write_success_replaces_and_cleans_up(tmp_path):
    tmp_path = _own_dir(tmp_path)
    path = tmp_path / "cell.json"
    path.write_text("old")
    safeio.atomic_write_text(path, "new")
    assert path.read_text() == "new"
    with safeio.atomic_write(path) as f:
        f.write(b"newer")
    assert path.read_bytes() == b"newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cell.json"]


def test_changed_default_config_invalidates_results_but_a_given_config_pins_them(tmp_path, monkeypatch):
    """An upgrade that changes a shipped default must rerun old cells, not reuse them silently."""
    from dataclasses import replace

    from mmsa_alignmamba import host
    from mmsa_alignmamba.runner import RunSettings, fingerprint

    shipped = tmp_path / "plugin.json"
    shipped.write_text(json.dumps({"alignmamba": {"commonParams": {"ot_cost": "cosine"}}}))
    plugin = replace(host.plugins()["alignmamba"], config_path=shipped)
    monkeypatch.setattr(host.configs, "plugins", lambda: {"alignmamba": plugin})
    given = tmp_path / "mine.json"
    given.write_text("{}")
    default_run, pinned_run = RunSettings(), RunSettings(config_file=str(given))
    before = fingerprint(default_run), fingerprint(pinned_run)
    shipped.write_text(json.dumps({"alignmamba": {"commonParams": {"ot_cost": "monotone"}}}))
    assert fingerprint(default_run) != before[0]
    assert fingerprint(pinned_run) == before[1]
