"""Scale-out: Ray tasks (a real local Ray, and a real two-node cluster on 127.0.0.1 that loses
its worker node mid-sweep) and two runners sharing one results folder. Every sweep must end with
the same summary as the local runner's, each cell trained exactly once."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import mmsa_env, mmsa_script

ray = pytest.importorskip("ray")   # in the test extra: CI always runs these

SEEDS = ("-s", "1", "-s", "2", "-s", "3", "-s", "4")


def _env(home: Path, **extra) -> dict:
    return mmsa_env(home, OMP_NUM_THREADS="1", **extra)


def _argv(pkl: Path, out: Path, *extra) -> list[str]:
    return [mmsa_script(), "-m", "lf_dnn", "-d", "mosi", "--feature-path", str(pkl), *SEEDS, "--epochs", "1",
            "--cpus-per-run", "1", "--res-save-dir", str(out / "results"), "--model-save-dir", str(out / "models"),
            "--log-dir", str(out / "logs"), *extra]


def _summary(out: Path) -> list[dict]:
    with open(out / "results" / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, short_pkl):
    out = tmp_path_factory.mktemp("local")
    home = tmp_path_factory.mktemp("local-home")
    proc = subprocess.run(_argv(short_pkl, out), env=_env(home), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_ray_sweep_equals_the_local_one(local_run, short_pkl, tmp_path):
    out = tmp_path / "ray"
    proc = subprocess.run(_argv(short_pkl, out, "--executor", "ray"), env=_env(tmp_path), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _summary(out) == _summary(local_run)
    assert sorted(p.name for p in (out / "models").iterdir()) == sorted(p.name for p in (local_run / "models").iterdir())
    assert "submitted 4 training(s) to Ray" in proc.stderr


def test_two_runners_on_one_folder_train_each_cell_once(local_run, short_pkl, tmp_path):
    out = tmp_path / "shared"
    runners = [subprocess.Popen(_argv(short_pkl, out), env=_env(tmp_path), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    logs = [r.communicate(timeout=600)[1] for r in runners]
    assert [r.returncode for r in runners] == [0, 0], [log[-2000:] for log in logs]
    started = [line.split(" running ")[1].split()[0] for log in logs for line in log.splitlines() if " running " in line]
    assert sorted(started) == sorted(set(started)) and len(started) == 4, started   # each training once, all four
    assert _summary(out) == _summary(local_run)
    assert not (out / "results" / "claims").exists()          # every claim released


def test_a_stale_claim_expires(tmp_path):
    from mmsa_alignmamba.claims import ClaimBook
    first = ClaimBook(tmp_path, stale_s=0.5, heartbeat_s=60)
    second = ClaimBook(tmp_path, stale_s=0.5, heartbeat_s=60)
    assert first.claim("cell") and not second.claim("cell") and second.held_by_others("cell")
    first._stop.set()                                         # a runner that died: no more heartbeats
    time.sleep(0.8)
    assert not second.held_by_others("cell") and second.claim("cell")
    second.close()
    assert not (tmp_path / "claims").exists()


def _ray_start(*args, env) -> None:
    subprocess.run([str(Path(sys.executable).with_name("ray")), "start", *args], env=env, check=True,
                   capture_output=True, text=True, timeout=120)


def _worker_node_pids(node_manager_port: int) -> list[int]:
    """The worker node's raylet and every process under it (its workers)."""
    raylets = subprocess.run(["pgrep", "-f", f"raylet.*--node_manager_port={node_manager_port}"],
                             capture_output=True, text=True).stdout.split()
    pids = [int(p) for p in raylets]
    for pid in list(pids):
        pids += [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]
    return pids


def test_a_sweep_survives_losing_its_worker_node(local_run, short_pkl, tmp_path):
    """A real two-node cluster on 127.0.0.1 (`ray start --head` and `ray start --address`); the
    worker node is killed while the sweep runs; Ray retries its tasks on the head node."""
    env = _env(tmp_path, RAY_AUTH_MODE="disabled")   # a loopback-only cluster of this test's own
    port, worker_port = 26379, 26380
    _ray_start("--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
               env=env)
    try:
        _ray_start(f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                   f"--node-manager-port={worker_port}", env=env)
        out = tmp_path / "cluster"
        driver = subprocess.Popen(_argv(short_pkl, out, "--executor", "ray", "--ray-address", f"127.0.0.1:{port}"),
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while not _worker_node_pids(worker_port) or not list((out / "logs").glob("*.log")):
            assert time.monotonic() < deadline and driver.poll() is None
            time.sleep(0.2)
        # wait until work is under way, then kill the worker node's processes
        while "submitted" not in "".join(p.read_text() for p in (out / "logs").glob("*.log")):
            assert time.monotonic() < deadline and driver.poll() is None
            time.sleep(0.2)
        time.sleep(3)
        killed = _worker_node_pids(worker_port)
        finished_before = len(list((out / "results" / "cells").rglob("*.json")))
        assert killed and finished_before < 4, finished_before     # mid-sweep: the node holds a task
        for pid in killed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _, err = driver.communicate(timeout=600)
        assert driver.returncode == 0, err[-3000:]
        assert _summary(out) == _summary(local_run)
        assert len(list((out / "results" / "cells").rglob("*.json"))) == 4
    finally:
        subprocess.run([str(Path(sys.executable).with_name("ray")), "stop", "--force"], env=env,
                       capture_output=True, timeout=120)


def test_tune_on_ray_writes_a_config_mmsa_accepts(short_pkl, tmp_path):
    """`mmsa -t` goes to Ray Tune when Ray is installed: the debugParams space, ASHA, a trial
    table, and the best trial's values as a config that `mmsa -c` trains with."""
    out = tmp_path / "tune"
    dirs = ["--res-save-dir", str(out / "results"), "--model-save-dir", str(out / "models"), "--log-dir", str(out / "logs")]
    proc = subprocess.run([mmsa_script(), "-m", "lf_dnn", "-d", "mosi", "--feature-path", str(short_pkl), "-t", "-tt",
                           "3", "--epochs", "2", *dirs], env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "with Ray Tune: 3 trials of at most 2 epochs, ASHA early stopping" in proc.stderr
    folder = out / "results" / "tune" / "lf_dnn-mosi-asha"
    with open(folder / "trials.csv", newline="") as f:
        trials = list(csv.DictReader(f))
    assert len(trials) == 3 and all(t["status"] == "ok" and 1 <= int(t["epochs"]) <= 2 for t in trials)
    import json
    best = json.loads((folder / "best.json").read_text())["lf_dnn"]["datasetParams"]["mosi"]
    assert set(best) == {"hidden_dims", "text_out", "post_fusion_dim", "dropouts", "batch_size", "learning_rate",
                         "weight_decay"}
    again = subprocess.run([mmsa_script(), "-m", "lf_dnn", "-d", "mosi", "--feature-path", str(short_pkl), "-c",
                            str(folder / "best.json"), "-s", "1", "--epochs", "1", *dirs], env=_env(tmp_path),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    import torch
    (checkpoint,) = (out / "models").glob("lf_dnn-*.pth")
    config = torch.load(checkpoint, weights_only=True)["meta"]["config"]
    assert config["learning_rate"] == best["learning_rate"] and config["hidden_dims"] == best["hidden_dims"]


def test_a_tune_trial_whose_worker_died_goes_on_from_its_last_checkpoint(short_pkl, tmp_path, monkeypatch):
    """What Ray Tune hands a restarted trial (FailureConfig retries it): the checkpoint of its last
    reported epoch. The trial loads those weights and trains only the epochs left, numbering on."""
    import shutil

    import torch
    from ray import tune

    from mmsa_alignmamba.tuning import _trial
    reports, saved = [], tmp_path / "checkpoints"

    def report(metrics, checkpoint=None):
        reports.append(metrics)
        with checkpoint.as_directory() as d:  # the trial deletes its folder after reporting: keep a copy
            shutil.copytree(d, saved / str(metrics["epoch"]), dirs_exist_ok=True)

    monkeypatch.setattr(tune, "report", report)
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    run = dict(model="lf_dnn", dataset="mosi", data=short_pkl.read_bytes(), config_text=None, cpus=1)
    _trial({}, max_epochs=2, **run)
    assert [r["epoch"] for r in reports] == [1, 2]
    # the scheduler sees the best validation Loss so far (what the trial delivers), not the epoch's
    assert [r["valid"] for r in reports] == [reports[0]["epoch_valid"], min(r["epoch_valid"] for r in reports)]
    first = torch.load(saved / "1" / "model.pth", weights_only=True)
    assert first["epoch"] == 1 and first["best_valid"] == reports[0]["valid"]

    loaded = []
    original_load = torch.nn.Module.load_state_dict

    def load_state_dict(module, state, *args, **kwargs):
        loaded.append(state)
        return original_load(module, state, *args, **kwargs)

    reports.clear()
    monkeypatch.setattr(torch.nn.Module, "load_state_dict", load_state_dict)
    monkeypatch.setattr(tune, "get_checkpoint", lambda: tune.Checkpoint.from_directory(str(saved / "1")))
    _trial({}, max_epochs=3, **run)
    assert [r["epoch"] for r in reports] == [2, 3]          # epoch 1 is not trained again
    assert reports[0]["valid"] == min(first["best_valid"], reports[0]["epoch_valid"])  # its best goes on too
    assert loaded and all(torch.equal(loaded[0][k], v) for k, v in first["weights"].items())


@pytest.mark.parametrize("flag, value, least", [("--reduction-factor", "1", 2), ("--grace-period", "0", 1)])
def test_tune_options_out_of_range_are_one_error_line(tmp_path, short_pkl, capsys, flag, value, least):
    from conftest import run_cli
    rc, _, err = run_cli(["tune", "-m", "lf_dnn", "--feature-path", short_pkl, flag, value,
                          "--res-save-dir", tmp_path / "r"], capsys)
    assert rc == 2 and err.strip().splitlines()[-1] == f"mmsa: error: {flag} must be >= {least}, got {value}"
    assert not (tmp_path / "r").exists()


def test_executor_ray_without_ray_is_one_error_line(tmp_path, short_pkl, monkeypatch, capsys):
    from conftest import run_cli
    monkeypatch.setitem(sys.modules, "ray", None)             # as if the extra were not installed
    rc, _, err = run_cli(["-m", "lf_dnn", "--feature-path", short_pkl, "--executor", "ray",
                          "--res-save-dir", tmp_path / "r"], capsys)
    assert rc == 2 and err.strip().splitlines()[-1] == ('mmsa: error: --executor ray needs the ray extra: '
                                                       'pip install -e ".[ray]"')
    assert not (tmp_path / "r").exists()


def test_a_failed_training_is_recorded_and_the_rest_goes_on(tiny_pkl, tmp_path, capsys, monkeypatch):
    """An executor reports one training as failed (as Ray does after its retries, e.g. for a
    worker killed for lack of memory): the other trainings finish, the cell gets a failure record
    with the likely cause, the summary lists it, the command exits 1; a rerun trains it and the
    record goes."""
    from conftest import run_cli
    from mmsa_alignmamba import executors

    class FlakyLocal(executors.LocalExecutor):
        def run(self, jobs, settings, store, done, running=None):
            for job in jobs:
                if job.train_cell.seed == 2:
                    done(job, type("WorkerCrashedError", (RuntimeError,), {})(
                        "The worker died unexpectedly (SIGKILL): signal 9"))
                else:
                    super().run([job], settings, store, done)

    argv = ["-m", "lf_dnn", "--feature-path", tiny_pkl, "-s", "1", "-s", "2", "--epochs", "1",
            "--res-save-dir", tmp_path / "r", "--model-save-dir", tmp_path / "m", "--log-dir", tmp_path / "l"]
    original = executors.LocalExecutor
    monkeypatch.setattr(executors, "LocalExecutor", FlakyLocal)
    rc, stdout, err = run_cli(argv, capsys)
    assert rc == 1 and "did not finish" in err and "seed2" in err
    (record,) = (tmp_path / "r" / "failed").rglob("*.json")
    assert "signal 9" in record.read_text() and "seed2" in record.name
    md = (tmp_path / "r" / "summary.md").read_text()
    assert "Runs that did not finish" in md and "its process was killed (signal 9" in md
    assert len(list((tmp_path / "r" / "cells").rglob("*.json"))) == 1      # seed 1 finished all the same
    monkeypatch.setattr(executors, "LocalExecutor", original)
    rc, _, err = run_cli(argv, capsys)
    assert rc == 0, err
    assert not list((tmp_path / "r" / "failed").rglob("*.json"))
    assert "Runs that did not finish" not in (tmp_path / "r" / "summary.md").read_text()


def test_asha_default_grace_period_gives_three_rungs():
    from mmsa_alignmamba.tuning import default_grace_period
    assert default_grace_period(40, 3) == 4          # rungs at 4, 12, 36
    assert default_grace_period(20, 3) == 2 and default_grace_period(20, 2) == 5
    assert default_grace_period(2, 3) == 1           # never below one epoch
