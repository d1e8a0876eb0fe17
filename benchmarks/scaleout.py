"""Scale-out benchmark (SYNTHETIC data): the same 8-training sweep on the local runner (1 thread)
and on a local Ray with 2 workers of 1 thread each, side by side; and `mmsa tune` with ASHA
against a 16-trial random search (ASHA may draw more configurations: stopping poor ones early is
what lets it try more in fewer epochs).

    python benchmarks/scaleout.py --out benchmarks/results/cpu-scaleout [--asha-trials 32 --reduction-factor 3]

Writes scaleout.json and scaleout.md (``--parts tune`` runs the search comparison alone; it counts
epochs, so it needs no idle machine). Each finished search is kept under ``<out>/searches/``, so
a rerun (another ASHA setting against the same random searches, or after an interruption) does
not train it again. Wall times are of whole commands (start-up included), one
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

from mmsa_alignmamba.tuning import REDUCTION_FACTOR, default_grace_period

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
    p.add_argument("--tune-epochs", type=int, default=40)
    p.add_argument("--random-trials", type=int, default=16)
    p.add_argument("--asha-trials", type=int, default=16)
    p.add_argument("--reduction-factor", type=int, default=REDUCTION_FACTOR)
    p.add_argument("--grace-period", type=int, help="default: mmsa tune's (max epochs / reduction factor²)")
    p.add_argument("--search-seeds", type=int, nargs="+", default=[0],
                   help="seeds of the configuration draws; one random search and one ASHA search each")
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
        grace_period = opts.grace_period or default_grace_period(opts.tune_epochs, opts.reduction_factor)
        searches = []
        for search_seed in opts.search_seeds:
            tune = {"search_seed": search_seed}
            for scheduler, trials in (("none", opts.random_trials), ("asha", opts.asha_trials)):
                name = f"tune-{search_seed}-{scheduler}-{trials}-{opts.tune_epochs}"
                if scheduler == "asha":
                    name += f"-g{grace_period}-rf{opts.reduction_factor}"
                done = out / "searches" / f"{name}.json"   # a finished search is not run again
                if done.exists():
                    tune[scheduler] = json.loads(done.read_text())
                    continue
                started = time.perf_counter()
                subprocess.run([MMSA, "tune", "-m", opts.tune_model, *data, "--trials", str(trials), "--max-epochs",
                                str(opts.tune_epochs), "--scheduler", scheduler, "--cpus-per-run", "1",
                                "--grace-period", str(grace_period),
                                "--reduction-factor", str(opts.reduction_factor), "--search-seed", str(search_seed),
                                *dirs(name)],
                               env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                folder = work / name / "r" / "tune" / f"{opts.tune_model}-mosi-{scheduler}"
                with open(folder / "trials.csv", newline="") as f:
                    rows = list(csv.DictReader(f))
                tune[scheduler] = {"trials": trials, "wall_s": round(time.perf_counter() - started, 1),
                                   "epochs": sum(int(t["epochs"]) for t in rows),
                                   "best_valid": min(float(t["best_valid"]) for t in rows if t["best_valid"])}
                done.parent.mkdir(exist_ok=True)
                done.write_text(json.dumps(tune[scheduler]) + "\n")
            tune["epoch_ratio"] = round(tune["asha"]["epochs"] / tune["none"]["epochs"], 3)
            tune["asha_reaches_random_best"] = tune["asha"]["best_valid"] <= tune["none"]["best_valid"] + 1e-9
            searches.append(tune)
            print(json.dumps(tune), flush=True)
        t = report["tune"] = {
            "model": opts.tune_model, "max_epochs": opts.tune_epochs, "random_trials": opts.random_trials,
            "asha_trials": opts.asha_trials,
            "asha_grace_period": grace_period,
            "asha_reduction_factor": opts.reduction_factor, "searches": searches,
            "epoch_ratio": round(sum(x["asha"]["epochs"] for x in searches)
                                 / sum(x["none"]["epochs"] for x in searches), 3),
            "asha_reaches_random_best": sum(x["asha_reaches_random_best"] for x in searches)}
        md += ["", f"`mmsa tune -m {t['model']}`, at most {t['max_epochs']} epochs per trial (each trial also stops "
                   f"at the model's own early stopping), validation Loss (lower is better). Random search: "
                   f"{t['random_trials']} trials; ASHA (grace period {t['asha_grace_period']}, reduction factor "
                   f"{t['asha_reduction_factor']}): {t['asha_trials']} trials drawn from the same seeded generator "
                   f"(its first {min(t['random_trials'], t['asha_trials'])} draws are the random search's).", "",
               "| search seed | random: epochs | random: best | ASHA: epochs | ASHA: best | epoch ratio | "
               "ASHA reaches the random best |", "|---|---|---|---|---|---|---|"]
        md += [f"| {x['search_seed']} | {x['none']['epochs']} | {x['none']['best_valid']:.4f} | {x['asha']['epochs']} "
               f"| {x['asha']['best_valid']:.4f} | {x['epoch_ratio']} | {'yes' if x['asha_reaches_random_best'] else 'no'} |"
               for x in searches]
        md += ["", f"Over all searches: ASHA ran **{t['epoch_ratio']}×** the random searches' epochs and reached "
                   f"their best in **{t['asha_reaches_random_best']} of {len(searches)}**."]
    (out / "scaleout.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "scaleout.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
