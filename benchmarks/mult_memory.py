"""Peak memory per epoch of MMSA's MulT on MOSI-shaped SYNTHETIC data (CPU), to check that it stays
flat from epoch to epoch (host.fix_glibc_heap_growth).

    python benchmarks/mult_memory.py --out benchmarks/results/cpu-mult-memory [--n-train 128] [--epochs 3]

Runs `mmsa -m mult` in a child process, samples its resident set size every 0.25 s, and splits the
samples into epochs at the trainer's validation log lines. MOSI's real sequence lengths and widths
(50 / 375 / 500; 768 / 5 / 20) with fewer training samples: memory per step does not depend on
the number of samples, only the number of steps does. Writes mult_memory.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MMSA = str(Path(sys.executable).with_name("mmsa"))


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--n-train", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    opts = p.parse_args()
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mmsa-mult-memory-"))
    env = {**os.environ, "HOME": str(work), "OMP_NUM_THREADS": str(opts.threads)}
    data = work / "mosi-shaped.pkl"
    subprocess.run([MMSA, "make-synthetic", "--like", "mosi", "--size", "full", "--n-train", str(opts.n_train),
                    "--n-valid", "32", "--n-test", "32", "--out", str(data)], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    started = time.time()
    proc = subprocess.Popen([MMSA, "-m", "mult", "--feature-path", str(data), "-s", "1111", "--epochs",
                             str(opts.epochs), "--res-save-dir", str(work / "r"), "--model-save-dir", str(work / "m"),
                             "--log-dir", str(work / "l")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    samples, epoch_ends = [], []

    def sample():
        while proc.poll() is None:
            value = rss_kb(proc.pid)
            if value:
                samples.append((time.time(), value))
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for line in proc.stderr:                          # the trainer validates once at the end of each epoch
        if re.search(r"MMSA INFO VAL-\(mult\)", line):
            epoch_ends.append(time.time())
    proc.wait()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"mmsa -m mult exited {proc.returncode}")
    peaks, begin = [], started
    for end in epoch_ends[:opts.epochs]:
        window = [kb for t, kb in samples if begin <= t <= end]
        peaks.append(round(max(window) / 2**20, 3) if window else None)
        begin = end
    report = {"data": "SYNTHETIC MOSI-shaped data (not real data)", "n_train": opts.n_train,
              "threads": opts.threads, "peak_rss_gb_per_epoch": peaks,
              "epoch3_over_epoch1": round(peaks[-1] / peaks[0], 3) if peaks and peaks[0] else None}
    (out / "mult_memory.json").write_text(json.dumps(report, indent=2) + "\n")
    md = (f"# MulT (MMSA) peak RSS per epoch, MOSI shapes, {opts.n_train} training samples, "
          f"{opts.threads} thread(s), SYNTHETIC data\n\n" + " | ".join(f"epoch {i + 1}: {gb} GB" for i, gb in
                                                                       enumerate(peaks))
          + f"\n\nepoch {len(peaks)} / epoch 1: **{report['epoch3_over_epoch1']}**\n")
    (out / "mult_memory.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
