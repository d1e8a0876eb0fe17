"""Scale-out benchmark (SYNTHETIC data): the same 8-training sweep on the local runner (1 thread)
and on a local Ray with 2 workers of 1 thread each, side by side; and `mmsa tune` with ASHA
against a 16-trial random search (ASHA may draw more configurations: stopping poor ones early is
what lets it try more in fewer epochs).

    python benchmarks/scaleout.py --out benchmarks/results/cpu-scaleout [--asha-trials 32 --reduction-factor 3]

Writes scaleout.json and scaleout.md (``--parts tune`` runs the search comparison alone; it counts
epochs, so it needs no idle machine). Wall times are of whole commands (start-up included), one
after another on an otherwise idle machine; what matters is their ratio.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MMSA = str(Path(sys.executable).with_name("mmsa"))


def timed(argv: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--sweep-model", default="alignmamba")
    p.add_argument("--sweep-epochs", type=int, default=3)
    p.add_argument("--tune-model", default="lf_dnn")
    p.add_argument("--tune-epochs", type=int, default=10)
    p.add_argument("--random-trials", type=int, default=16)
    p.add_argument("--asha-trials", type=int, default=16)
    p.add_argument("--reduction-factor", type=int, default=2)
    p.add_argument("--grace-period", type=int, default=1)
    p.add_argument("--parts", nargs="+", choices=("sweep", "tune"), default=["sweep", "tune"])
    opts = p.parse_args()
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mmsa-scaleout-"))
    env = {**os.environ, "HOME": str(work / "home"), "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    seeds = [a for s in range(1, 9) for a in ("-s", str(s))]
    data = ["-d", "mosi", "--synthetic", "--data-dir", str(work / "cache")]

    def dirs(name):
        return ["--res-save-dir", str(work / name / "r"), "--model-save-dir", str(work / name / "m"),
                "--log-dir", str(work / name / "l")]

    # the synthetic data is generated and cached before anything is timed
    subprocess.run([MMSA, "-m", "lf_dnn", *data, "-s", "1", "--epochs", "1", *dirs("warm")], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    report = {"data": "SYNTHETIC MOSI-format data (small), not real data", "machine_cpus": os.cpu_count()}
    md = [f"# Scale-out on {os.cpu_count()} CPUs (SYNTHETIC data, not real data)"]
    if "sweep" in opts.parts:
        sweep = [MMSA, "-m", opts.sweep_model, *data, *seeds, "--epochs", str(opts.sweep_epochs), "--cpus-per-run", "1"]
        local = timed([*sweep, *dirs("local")], env)
        on_ray = timed([*sweep, "--executor", "ray", *dirs("ray")], env)
        same = (work / "local" / "r" / "summary.csv").read_text() == (work / "ray" / "r" / "summary.csv").read_text()
        s = report["sweep"] = {
            "model": opts.sweep_model, "trainings": 8, "epochs": opts.sweep_epochs, "local_1_thread_s": round(local, 1),
            "ray_2_workers_1_thread_s": round(on_ray, 1), "ratio": round(on_ray / local, 3), "identical_summary": same}
        md += ["", f"8 trainings of {s['model']} ({s['epochs']} epochs each): local runner, 1 thread: "
                   f"{s['local_1_thread_s']} s; Ray, 2 workers of 1 thread: {s['ray_2_workers_1_thread_s']} s; ratio "
                   f"**{s['ratio']}**; summaries identical: {s['identical_summary']}."]
    if "tune" in opts.parts:
        tune = {}
        for scheduler, trials in (("none", opts.random_trials), ("asha", opts.asha_trials)):
            started = time.perf_counter()
            subprocess.run([MMSA, "tune", "-m", opts.tune_model, *data, "--trials", str(trials), "--max-epochs",
                            str(opts.tune_epochs), "--scheduler", scheduler, "--cpus-per-run", "1",
                            "--grace-period", str(opts.grace_period), "--reduction-factor", str(opts.reduction_factor),
                            *dirs(f"tune-{scheduler}")],
                           env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            folder = work / f"tune-{scheduler}" / "r" / "tune" / f"{opts.tune_model}-mosi-{scheduler}"
            with open(folder / "trials.csv", newline="") as f:
                rows = list(csv.DictReader(f))
            tune[scheduler] = {"trials": trials, "wall_s": round(time.perf_counter() - started, 1),
                               "epochs": sum(int(t["epochs"]) for t in rows),
                               "best_valid": min(float(t["best_valid"]) for t in rows if t["best_valid"])}
        t = report["tune"] = {
            "model": opts.tune_model, "max_epochs": opts.tune_epochs, "asha_grace_period": opts.grace_period,
            "asha_reduction_factor": opts.reduction_factor, **tune,
            "epoch_ratio": round(tune["asha"]["epochs"] / tune["none"]["epochs"], 3),
            "asha_reaches_random_best": tune["asha"]["best_valid"] <= tune["none"]["best_valid"] + 1e-9}
        md += ["", f"`mmsa tune -m {t['model']}`, at most {t['max_epochs']} epochs per trial (validation Loss, lower is "
                   f"better): random search, {t['none']['trials']} trials: {t['none']['epochs']} epochs, best "
                   f"{t['none']['best_valid']:.4f}; ASHA (grace period {t['asha_grace_period']}, reduction factor "
                   f"{t['asha_reduction_factor']}), {t['asha']['trials']} trials: {t['asha']['epochs']} epochs, best "
                   f"{t['asha']['best_valid']:.4f}; epoch ratio **{t['epoch_ratio']}**; ASHA reaches the random "
                   f"search's best: {t['asha_reaches_random_best']}."]
    (out / "scaleout.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "scaleout.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
