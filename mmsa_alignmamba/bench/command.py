"""`mmsa bench`: the command, its options and the machine it reports."""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
from pathlib import Path

from ..datasets import SHAPES
from ..errors import InputError, check_at_least
from ..safeio import atomic_write_text
from ..settings import output_root
from .baselines import BASELINES, MODELS
from .inference import SHAPE_BATCHES, combine_rounds, point_main, run_alternated_shapes, run_inference, run_shapes
from .isolation import ERROR, proc_kb
from .kernels import bench_kernels_section, kernels_markdown
from .render import (
    inference_markdown,
    shape_ratios,
    shapes_markdown,
    summarize,
    write_plot,
)
from .training import bench_train, train_markdown

DEFAULT_LENGTHS = (50, 100, 200, 400, 800, 1600, 3200)
QUICK_LENGTHS = (16, 32)


def mamba_backend(device: str) -> str:
    """Which selective-scan implementation AlignMamba's Mamba blocks use on `device`."""
    from .. import mamba, scan_kernel
    if str(device).startswith("cuda") and mamba.mamba_ssm_available():
        return "mamba-ssm CUDA kernels (mamba_inner_fn / selective_scan_fn)"
    if scan_kernel.kernel_available():
        return ("compiled C kernels (mmsa_alignmamba/scan_kernel.c): inference, the block's inside; "
                "training, the selective scan's forward and backward")
    return "mmsa_alignmamba.mamba.selective_scan (pure PyTorch chunked scan, custom backward)"


def machine_info(device: str, threads: int | None = None) -> dict:
    import torch
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"
    mem_total = proc_kb("/proc/meminfo", "MemTotal")
    info = {"cpu_model": cpu, "cpu_count": os.cpu_count(), "threads": threads or torch.get_num_threads(),
            "memory_total_gb": round(mem_total / 2**20, 1) if mem_total else None,
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "device": device, "mamba_backend": mamba_backend(device),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "timestamp": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}
    if str(device).startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
        info["device_label"] = f"CUDA GPU ({info['gpu']})"
    else:
        info["device_label"] = f"CPU ({cpu}, {info['threads']} thread{'' if info['threads'] == 1 else 's'})"
    return info


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmsa bench",
        description="Inference time and memory vs sequence length of AlignMamba, MMSA's MulT and a Transformer "
        "fusion baseline on RANDOM inputs (each point in a fresh process); --train: one training epoch on SYNTHETIC "
        "MOSI-format data; --kernels: selective-scan kernels. Writes bench.json, bench.md and plots.")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="default cpu")
    p.add_argument("--lengths", nargs="+", type=int, help=f"per-modality lengths L (default {' '.join(map(str, DEFAULT_LENGTHS))})")
    p.add_argument("--batch", type=int, help="inference batch size (default 8; 2 with --quick)")
    p.add_argument("--models", nargs="+", choices=list(BASELINES),
                   help=f"default: {', '.join(MODELS)} for the length sweep, all ({', '.join(BASELINES)}) with --shapes")
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), type=str.lower,
                   help="instead of the length sweep: each model at these datasets' real shapes (T_l, T_a, T_v and "
                        "feature widths, unaligned), at the --shape-batches sizes")
    p.add_argument("--shape-batches", nargs="+", type=int, default=list(SHAPE_BATCHES),
                   help=f"batch sizes for --shapes (default {' '.join(map(str, SHAPE_BATCHES))})")
    p.add_argument("--repeats", type=int, help="timed forward passes per point (default 5; 1 with --quick)")
    p.add_argument("--alternate", nargs="+", choices=list(BASELINES), metavar="MODEL",
                   help="with --shapes: also time these models (two or more) at each shape in one process, one "
                        "pass of each in turn, --repeats times; the first over each other, measured over the same "
                        "seconds")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure every point this many times, all points once per round, and keep the median "
                        "over rounds (default 1): steadier ratios on a machine whose speed drifts")
    p.add_argument("--repeat-budget", type=float, default=60.0,
                   help="stop repeating a point once its timed passes took this many seconds (default 60)")
    p.add_argument("--out", help="output folder (default ~/MMSA/bench/<timestamp>)")
    p.add_argument("--quick", action="store_true", help="smoke run: lengths 16 32, batch 2, 1 repeat")
    p.add_argument("--inference", action="store_true", help="run the inference sweep too when --train/--kernels are given")
    p.add_argument("--kernels", action="store_true", help="selective-scan kernel comparison (mmsa_alignmamba.bench.kernels)")
    p.add_argument("--train", action="store_true", help="one training epoch, AlignMamba vs MulT, synthetic MOSI data")
    p.add_argument("--train-batch", type=int, help="training batch size for both models (default: AlignMamba's MOSI config, 32)")
    p.add_argument("--train-max-batches", type=int, help="stop the epoch after this many batches (default: whole epoch; 3 with --quick)")
    p.add_argument("--cache-dir", help="where the synthetic data is cached (default ~/MMSA)")
    p.add_argument("--time-limit", type=float, default=600.0,
                   help="seconds allowed for each point's measuring phase (default 600); over it: status timeout")
    p.add_argument("--memory-limit-gb", type=float,
                   help="CPU: cap each point's RSS growth at G GB; over it: status oom "
                   "(default: 60%% of the memory available at start)")
    p.add_argument("--threads", type=int, help="torch threads in each point (default: torch's default here)")
    p.add_argument("--point", help=argparse.SUPPRESS)  # internal: measure one point (JSON spec) in this process
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = parser().parse_args(argv)
    if opts.point:
        return point_main(opts.point)
    import torch
    if opts.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but torch sees no CUDA device")
    # what was given is checked before the defaults fill in what was not (0 is a value, not "unset")
    check_at_least(("--lengths", min(opts.lengths) if opts.lengths else None, 1), ("--batch", opts.batch, 1),
                   ("--repeats", opts.repeats, 1), ("--threads", opts.threads, 1), ("--train-batch", opts.train_batch, 1),
                   ("--train-max-batches", opts.train_max_batches, 1), ("--shape-batches", min(opts.shape_batches), 1),
                   ("--rounds", opts.rounds, 1))
    opts.lengths = sorted(set(opts.lengths or (QUICK_LENGTHS if opts.quick else DEFAULT_LENGTHS)))
    opts.batch = opts.batch if opts.batch is not None else (2 if opts.quick else 8)
    opts.repeats = opts.repeats if opts.repeats is not None else (1 if opts.quick else 5)
    opts.models = opts.models or (list(BASELINES) if opts.shapes else list(MODELS))
    if any(BASELINES[m].onnx for m in opts.models):
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise InputError('the ONNX Runtime baseline needs the onnx extra: pip install -e ".[onnx]"') from None
    if opts.quick and opts.train_max_batches is None:
        opts.train_max_batches = 3
    opts.threads = opts.threads if opts.threads is not None else torch.get_num_threads()
    torch.set_num_threads(opts.threads)  # the training section runs in this process
    if opts.alternate and (not opts.shapes or len(set(opts.alternate)) < 2):
        raise InputError("--alternate needs --shapes and two or more different models")
    if opts.time_limit <= 0:
        raise InputError(f"--time-limit must be > 0, got {opts.time_limit}")
    if opts.memory_limit_gb is None and opts.device == "cpu":
        available = proc_kb("/proc/meminfo", "MemAvailable")
        opts.memory_limit_gb = round(0.6 * available / 2**20, 1) if available else None
    elif opts.memory_limit_gb is not None and opts.memory_limit_gb <= 0:
        raise InputError(f"--memory-limit-gb must be > 0, got {opts.memory_limit_gb}")
    opts.cache_dir = Path(opts.cache_dir) if opts.cache_dir else output_root()
    out = Path(opts.out) if opts.out else output_root() / "bench" / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the output directory {out}: {e.strerror}") from None
    sections = [s for s in ("shapes", "train", "kernels") if getattr(opts, s)]
    if not sections or opts.inference:
        sections.insert(0, "inference")

    def log(msg):
        print(msg, flush=True)

    machine = machine_info(opts.device, opts.threads)
    # The command as given, except that the output folder is named, not located (no machine's paths).
    shown = [Path(a).name if i and argv[i - 1] == "--out" else a for i, a in enumerate(argv)]
    report = {"tool": "mmsa bench", "machine": machine, "command": "mmsa bench " + " ".join(shown),
              "inputs": "RANDOM tensors (inference) / SYNTHETIC MOSI-format data (training): not real data",
              "settings": {"device": opts.device, "lengths": opts.lengths, "batch": opts.batch, "models": opts.models,
                           "repeats": opts.repeats, "rounds": opts.rounds, "repeat_budget_s": opts.repeat_budget,
                           "quick": opts.quick,
                           "time_limit_s": opts.time_limit, "memory_limit_gb": opts.memory_limit_gb,
                           "threads": opts.threads, "sections": sections, "shapes": opts.shapes,
                           "shape_batches": opts.shape_batches, "alternate": opts.alternate}}
    log(f"mmsa bench on {machine['device_label']}, torch {machine['torch']}, Mamba backend: {machine['mamba_backend']}")
    log("inputs are RANDOM (inference) / SYNTHETIC (training), not real data")
    status = 0
    md_parts = []
    if "inference" in sections:
        log(f"inference: lengths {opts.lengths}, batch {opts.batch}, models {', '.join(opts.models)}, "
            f"each point in a fresh process on {machine['device_label']}")
        report["points"] = combine_rounds([run_inference(opts, log) for _ in range(opts.rounds)])
        report["summary"] = summarize(report["points"], opts.lengths, opts.models)
        if any(p["status"] == ERROR for p in report["points"]):
            status = 1
        md_parts.append(inference_markdown(report))
    if "shapes" in sections:
        log(f"latency at the real shapes of {', '.join(x.upper() for x in opts.shapes)}, batch "
            f"{' and '.join(map(str, opts.shape_batches))}, models {', '.join(opts.models)}")
        report["shape_points"] = combine_rounds([run_shapes(opts, log) for _ in range(opts.rounds)])
        report["shape_summary"] = shape_ratios(report["shape_points"], opts.models)
        if opts.alternate:
            log(f"the same shapes, {', '.join(opts.alternate)} alternated in one process")
            report["alternated"] = run_alternated_shapes(opts, log)
        if any(p["status"] == ERROR for p in report["shape_points"] + report.get("alternated", [])):
            status = 1
        md_parts.append(shapes_markdown(report))
    if "train" in sections:
        log(f"training epoch on SYNTHETIC MOSI-format data on {machine['device_label']}")
        report["train"] = bench_train(opts, log)
        md_parts.append(train_markdown(report))
    if "kernels" in sections:
        log(f"selective-scan kernels on {machine['device_label']}")
        report["kernels"] = bench_kernels_section(opts, log)
        md_parts.append(kernels_markdown(report))
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    atomic_write_text(out / "bench.json", json.dumps(report, indent=2, default=str) + "\n")
    md = "\n".join(md_parts)
    atomic_write_text(out / "bench.md", md)
    written = [out / "bench.json", out / "bench.md"]
    if "inference" in sections:
        where = machine["device_label"]
        write_plot(out / "bench-time.png", report, "time_s", "forward time, median (s): wall solid, CPU dashed",
                   f"Inference time vs length — {where}\nbatch {opts.batch}, random inputs")
        write_plot(out / "bench-memory.png", report, "memory_mb",
                   "peak memory of the forward (MB)" + (", RSS high-water increase" if opts.device == "cpu" else ""),
                   f"Inference memory vs length — {where}\nbatch {opts.batch}, random inputs")
        written += [out / "bench-time.png", out / "bench-memory.png"]
    print()
    print(md)
    for path in written:
        log(f"wrote {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
