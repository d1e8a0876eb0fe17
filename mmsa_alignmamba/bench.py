"""`mmsa bench`: time and memory of AlignMamba vs MMSA's MulT and a Transformer fusion baseline.

    mmsa bench [--device cpu|cuda] [--lengths 50 100 … 3200] [--batch 8] [--out DIR] [--quick]
               [--kernels] [--train] [--inference] [--time-limit S] [--memory-limit-gb G]

Inference (default section). For each per-modality length L (T_a = T_v = T_l = L; RANDOM inputs
with MOSI's widths text 768 / audio 5 / vision 20, every step valid) and each model:

* ``alignmamba``   AlignMamba, MOSI config of configs/alignmamba.json, built by MMSA's AMIO;
* ``mult``         MMSA's own MulT, MOSI config of MMSA's config_regression.json, built by AMIO;
* ``transformer``  the same AlignMamba (encoders, OT, MMD, interleaving, pooling, head) with each
                   Mamba stack swapped for an ``nn.TransformerEncoder`` of the same width and depth
                   (nhead 4, feed-forward 4·d, pre-norm) on the interleaved 3L sequence.

Each (model, L) point runs in a FRESH process, forked from a multiprocessing forkserver that has
only imported torch/MMSA (``python -m mmsa_alignmamba.bench --point JSON`` measures one by hand):
eval mode, ``torch.no_grad``, warm-up pass(es), then the median of repeated forward passes.
Memory: on CPU the increase of the resident-set high-water mark over a baseline taken after
imports, model construction and input creation (glibc's free lists trimmed and the kernel's
high-water mark reset via /proc/self/clear_refs first, so the number is what the forward passes
touch: activations, workspaces, one-time thread-pool and kernel-cache setup). Parameters and
inputs are not in it (they are reported separately). On CUDA: ``torch.cuda.max_memory_allocated``
after ``reset_peak_memory_stats`` (parameters and inputs included, as that is what the GPU holds).

A point that runs out of memory or time gets status "oom" / "timeout" (larger L of that model are
then "skipped"); a crash of the point gets "error" and makes the command exit with status 1.
``--memory-limit-gb`` caps each point's RSS growth on CPU (a watchdog thread polls it every 20 ms);
``--time-limit`` caps each point's measuring phase.

``--train``: one training epoch on MOSI-sized SYNTHETIC unaligned data (not real data), through
MMSA's data loader, for AlignMamba and MulT with the same loop (Adam, L1 loss, + λ·L_align for
AlignMamba as its trainer does, no clipping) and the same batch size: seconds, samples/s, ratio.
``--kernels``: the selective-scan kernel comparison of benchmarks/kernels.py when the repository
holds it (it is not part of the wheel), else "unavailable".
With ``--train`` and/or ``--kernels`` only those sections run, unless ``--inference`` is given too.

Outputs in --out (default ~/MMSA/bench/<timestamp>): bench.json (machine, settings, every point,
summary), bench.md (tables and ratios), bench-time.png and bench-memory.png (log-log), all written
atomically.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import io
import json
import math
import os
import platform
import resource
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

from .datasets import MOSI_FEATURE_DIMS
from .safeio import InputError, atomic_write, atomic_write_text
from .settings import output_root

MODELS = ("alignmamba", "mult", "transformer")
LABELS = {"alignmamba": "AlignMamba", "mult": "MulT (MMSA)", "transformer": "Transformer fusion"}
DEFAULT_LENGTHS = (50, 100, 200, 400, 800, 1600, 3200)
QUICK_LENGTHS = (16, 32)
RESULT_TAG = "MMSA_BENCH_POINT_RESULT "
STARTUP_GRACE_S = 120.0  # a point's process may take this long to import and build before measuring
TRANSFORMER_HEADS = 4
TRANSFORMER_FF_MULT = 4
OK, OOM, TIMEOUT, SKIPPED, ERROR = "ok", "oom", "timeout", "skipped", "error"


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
def transformer_stack(cfg):
    """A drop-in for model.MambaStack: ``cfg.n_layers`` pre-norm Transformer encoder layers of
    width ``cfg.d_model`` (nhead 4, feed-forward 4·d, GELU) and a final LayerNorm; (B, L, d) -> (B, L, d)."""
    import torch.nn as nn
    layer = nn.TransformerEncoderLayer(cfg.d_model, nhead=TRANSFORMER_HEADS,
                                       dim_feedforward=TRANSFORMER_FF_MULT * cfg.d_model, dropout=cfg.dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, cfg.n_layers, norm=nn.LayerNorm(cfg.d_model), enable_nested_tensor=False)


def build_args(model: str, device: str, dataset: str = "mosi"):
    """MMSA's args dict for a benchmark model (the transformer baseline uses AlignMamba's)."""
    import torch

    from . import host
    args = host.load_config("alignmamba" if model == "transformer" else model, dataset)
    args.update(feature_dims=list(MOSI_FEATURE_DIMS), device=torch.device(device), train_mode="regression")
    return args


def build_bench_model(model: str, args):
    """MMSA's AMIO around the model; for "transformer", AlignMamba with its Mamba stacks swapped."""
    import torch.nn as nn

    from . import host
    amio = host.build_model(args)
    if model == "transformer":
        core = amio.Model
        core.fusion = nn.ModuleList(transformer_stack(core.cfg) for _ in core.fusion)
    return amio.to(args["device"])


def takes_lengths(model: str) -> bool:
    """AlignMamba (and the baseline built from it) take true lengths; MMSA's MulT takes none."""
    return model != "mult"


def random_inputs(model: str, length: int, batch: int, device: str, seed: int = 0):
    """RANDOM inputs (not real data): (text, audio, vision) and the keyword extras."""
    import torch
    g = torch.Generator().manual_seed(seed)
    tensors = tuple(torch.randn(batch, length, d, generator=g).to(device) for d in MOSI_FEATURE_DIMS)
    lengths = torch.full((batch,), length, dtype=torch.long, device=device)
    extras = {"audio_lengths": lengths, "vision_lengths": lengths} if takes_lengths(model) else {}
    return tensors, extras


def mamba_backend(device: str) -> str:
    """Which selective-scan implementation AlignMamba's Mamba blocks use on `device`."""
    try:
        from . import mamba
    except Exception as e:  # pragma: no cover - reported, not fatal
        return f"unavailable ({type(e).__name__}: {e})"
    for name in ("backend_name", "backend", "describe_backend"):
        fn = getattr(mamba, name, None)
        if callable(fn):
            try:
                return str(fn(device))
            except TypeError:
                return str(fn())
    if str(device).startswith("cuda") and mamba.mamba_ssm_available():
        return "mamba-ssm CUDA kernels (mamba_inner_fn / selective_scan_fn)"
    return "mmsa_alignmamba.mamba.selective_scan (pure PyTorch chunked scan, custom backward)"


# ---------------------------------------------------------------------------------------------
# One point, in its own process
# ---------------------------------------------------------------------------------------------
class PointTimeout(Exception):
    pass


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(s in text for s in (
        "out of memory", "not enough memory", "can't allocate memory", "cannot allocate memory",
        "std::bad_alloc"))


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_rss_peak() -> bool:
    """Trim glibc's free lists, then reset the kernel's RSS high-water mark to the current RSS."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_kb() -> int:
    """High-water RSS of this process in KiB (VmHWM; ru_maxrss where /proc is missing)."""
    hwm = _status_kb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class _MemoryWatchdog(threading.Thread):
    """Polls this process's RSS; past baseline + limit it reports the point as "oom" and ends the
    process at once (a running torch kernel cannot be interrupted from Python). RLIMIT_AS is not
    used: under it libgomp/glibc made forward passes up to ~100x slower here."""

    POLL_S = 0.02

    def __init__(self, result: dict, baseline_kb: int, limit_gb: float, report):
        super().__init__(daemon=True)
        self.result, self.baseline_kb, self.limit_kb = result, baseline_kb, int(limit_gb * 2**20)
        self.report = report
        self._stop_event = threading.Event()

    def stop(self):
        self._stop_event.set()
        self.join()

    def run(self):
        while not self._stop_event.wait(self.POLL_S):
            rss = _status_kb("VmRSS")
            if rss is not None and rss - self.baseline_kb > self.limit_kb:
                self.report({**self.result, "status": OOM, "memory_mb": round((rss - self.baseline_kb) / 1024, 3),
                             "memory_kind": "rss_hwm_delta",
                             "error": f"memory grew past the limit of {self.limit_kb / 2**20:g} GB (stopped)"})
                os._exit(0)


def _tensor_mb(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def run_point(spec: dict, report=None) -> dict:
    """Measure one (model, L) point in this process. spec: model, length, batch, device, threads,
    warmup, repeats, repeat_budget_s, time_limit_s, memory_limit_gb. `report(record)` is how the
    memory watchdog hands over an "oom" record before it ends the process."""
    import torch
    started = time.perf_counter()
    result = {"model": spec["model"], "length": spec["length"], "batch": spec["batch"], "status": ERROR}
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = spec["device"]
    cuda = str(device).startswith("cuda")
    torch.manual_seed(0)
    args = build_args(spec["model"], device)
    model = build_bench_model(spec["model"], args).eval()
    inputs, extras = random_inputs(spec["model"], spec["length"], spec["batch"], device)
    result.update(params=sum(p.numel() for p in model.parameters()),
                  param_mb=round(_tensor_mb(list(model.parameters())), 3), input_mb=round(_tensor_mb(inputs), 3),
                  setup_s=round(time.perf_counter() - started, 3))

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    # Baseline.
    watchdog = None
    if cuda:
        sync()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        result["rss_peak_reset"] = _reset_rss_peak()
        baseline_kb = _peak_rss_kb()
        if spec.get("memory_limit_gb"):
            watchdog = _MemoryWatchdog(result, baseline_kb, float(spec["memory_limit_gb"]), report or _print_record)
            watchdog.start()

    def on_alarm(signum, frame):
        raise PointTimeout()

    time_limit = float(spec.get("time_limit_s") or 0)
    if time_limit > 0:
        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, time_limit)
    times, cpu_times = [], []
    try:
        with torch.no_grad():
            for _ in range(int(spec.get("warmup", 1))):
                model(*inputs, **extras)
            sync()
            budget = float(spec.get("repeat_budget_s", 60.0))
            spent = 0.0
            for i in range(max(1, int(spec.get("repeats", 5)))):
                t0, c0 = time.perf_counter(), time.process_time()
                out = model(*inputs, **extras)
                sync()
                times.append(time.perf_counter() - t0)
                cpu_times.append(time.process_time() - c0)
                spent += times[-1]
                if spent > budget:
                    break
            del out
        if time_limit > 0:
            signal.setitimer(signal.ITIMER_REAL, 0)
        result["status"] = OK
    except PointTimeout:
        result.update(status=TIMEOUT, error=f"measuring phase exceeded the time limit of {time_limit:g} s")
    except BaseException as e:  # noqa: BLE001 - every failure of a point is recorded, not raised
        if time_limit > 0:
            signal.setitimer(signal.ITIMER_REAL, 0)
        result.update(status=OOM if _is_oom(e) else ERROR, error=f"{type(e).__name__}: {str(e)[:500]}")
    finally:
        if watchdog is not None:
            watchdog.stop()

    if cuda:
        result.update(memory_mb=round(torch.cuda.max_memory_allocated(device) / 2**20, 3),
                      memory_kind="cuda_max_memory_allocated")
    else:
        result.update(memory_mb=round((_peak_rss_kb() - baseline_kb) / 1024, 3), memory_kind="rss_hwm_delta",
                      rss_baseline_mb=round(baseline_kb / 1024, 1))
        limit_gb = spec.get("memory_limit_gb")
        if result["status"] == OK and limit_gb and result["memory_mb"] > float(limit_gb) * 1024:
            # Too brief for the watchdog's polling, but over the limit all the same.
            result.update(status=OOM, error=f"peak memory {result['memory_mb']:.1f} MB exceeded the limit of {limit_gb:g} GB")
    if times:
        result.update(time_s=statistics.median(times), times_s=[round(t, 6) for t in times],
                      cpu_time_s=statistics.median(cpu_times), cpu_times_s=[round(t, 6) for t in cpu_times],
                      warmup=int(spec.get("warmup", 1)), repeats=len(times))
    result["total_s"] = round(time.perf_counter() - started, 3)
    return result


def _print_record(record: dict) -> None:
    sys.stdout.write("\n" + RESULT_TAG + json.dumps(record) + "\n")
    sys.stdout.flush()


def _failed_record(spec: dict, e: BaseException) -> dict:
    return {"model": spec.get("model"), "length": spec.get("length"), "batch": spec.get("batch"),
            "status": OOM if _is_oom(e) else ERROR, "error": f"{type(e).__name__}: {str(e)[:500]}"}


def _point_main(spec_json: str) -> int:
    """`python -m mmsa_alignmamba.bench --point SPEC`: one point, the record printed on stdout."""
    spec = json.loads(spec_json)
    try:
        result = run_point(spec)
    except BaseException as e:  # noqa: BLE001
        result = _failed_record(spec, e)
    _print_record(result)
    return 0


def _point_child(spec: dict, conn) -> None:
    """Entry point of a point's process under multiprocessing: the record goes back on `conn`."""
    try:  # die with the forkserver (which dies with the benchmark) instead of running on as an orphan
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    try:
        result = run_point(spec, report=conn.send)
    except BaseException as e:  # noqa: BLE001
        result = _failed_record(spec, e)
    try:
        conn.send(result)
        conn.close()
    except (BrokenPipeError, EOFError):  # the benchmark that asked for this point is gone
        pass


_PRELOAD = ["torch", "MMSA.models", "MMSA.data_loader", "mmsa_alignmamba.host", "mmsa_alignmamba.model",
            "mmsa_alignmamba.bench"]
_context = None


def _mp_context():
    """A forkserver that has imported torch, MMSA and the model once: every point is a fresh process
    forked from it (no torch op ever ran there, so no thread pool is inherited), without paying the
    ~5 s import of MMSA/transformers per point. Spawn where forkserver does not exist."""
    global _context
    if _context is None:
        import multiprocessing as mp
        if "forkserver" in mp.get_all_start_methods():
            _context = mp.get_context("forkserver")
            _context.set_forkserver_preload(_PRELOAD)
        else:  # pragma: no cover - non-POSIX
            _context = mp.get_context("spawn")
    return _context


def measure_point(spec: dict) -> dict:
    """Run one point in a fresh process and return its record (never raises for a failure)."""
    ctx = _mp_context()
    base = {"model": spec["model"], "length": spec["length"], "batch": spec["batch"]}
    limit = float(spec.get("time_limit_s") or 0)
    wait = (limit + STARTUP_GRACE_S) if limit > 0 else None
    started = time.perf_counter()
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_point_child, args=(spec, sender), daemon=True)
    proc.start()
    sender.close()
    try:
        if receiver.poll(wait):
            try:
                record = receiver.recv()
                proc.join(30)
                return record
            except EOFError:  # the process died without a word
                pass
        else:
            proc.kill()
            proc.join()
            return {**base, "status": TIMEOUT, "error": f"point process killed after {wait:g} s",
                    "total_s": round(time.perf_counter() - started, 3)}
    finally:
        receiver.close()
        if proc.is_alive():
            proc.kill()
        proc.join()
    if proc.exitcode == -signal.SIGKILL:
        return {**base, "status": OOM, "error": "point process was killed (SIGKILL: the kernel's OOM killer, "
                "most likely)", "total_s": round(time.perf_counter() - started, 3)}
    return {**base, "status": ERROR, "error": f"point process exited with {proc.exitcode} without a result",
            "total_s": round(time.perf_counter() - started, 3)}


def _plan_warmup(previous: dict | None, length: int, quick: bool) -> int:
    """One warm-up pass, unless the previous length predicts a pass of over 30 s (then the
    first-pass overheads are negligible and the warm-up would only burn the time budget)."""
    if quick:
        return 1
    if previous and previous.get("status") == OK and previous.get("time_s"):
        predicted = previous["time_s"] * (length / previous["length"]) ** 2
        if predicted > 30:
            return 0
    return 1


def run_inference(opts, log) -> list[dict]:
    points = []
    failed: dict[str, dict] = {}
    last: dict[str, dict] = {}
    for length in opts.lengths:
        for model in opts.models:
            if model in failed:
                prior = failed[model]
                points.append({"model": model, "length": length, "batch": opts.batch, "status": SKIPPED,
                               "error": f"{prior['status']} at L={prior['length']}"})
                continue
            spec = {"model": model, "length": length, "batch": opts.batch, "device": opts.device,
                    "threads": opts.threads, "warmup": _plan_warmup(last.get(model), length, opts.quick),
                    "repeats": opts.repeats, "repeat_budget_s": opts.repeat_budget,
                    "time_limit_s": opts.time_limit, "memory_limit_gb": opts.memory_limit_gb}
            point = measure_point(spec)
            points.append(point)
            last[model] = point
            if point["status"] != OK:
                failed[model] = point
            log(f"  L={length:5d} {LABELS[model]:20s} " + (
                f"{point['time_s'] * 1e3:10.1f} ms wall {point['cpu_time_s'] * 1e3:10.1f} ms CPU "
                f"{point['memory_mb']:9.1f} MB  "
                f"({point['repeats']} rep, {point['warmup']} warm-up)" if point["status"] == OK
                else f"{point['status'].upper()}: {point.get('error', '')[:200]}"))
    return points


# ---------------------------------------------------------------------------------------------
# Summaries, tables, plots
# ---------------------------------------------------------------------------------------------
def _ok(points, model, length):
    for p in points:
        if p["model"] == model and p["length"] == length and p["status"] == OK:
            return p
    return None


def growth_per_doubling(points, model, lengths, key: str = "time_s") -> list[dict]:
    """Time growth between consecutive measured lengths, expressed per doubling of L:
    (t2 / t1) ** (1 / log2(L2 / L1)); `key` "time_s" (wall) or "cpu_time_s"."""
    out = []
    ok = [(L, _ok(points, model, L)) for L in lengths]
    ok = [(L, p) for L, p in ok if p is not None and p.get(key)]
    for (l1, p1), (l2, p2) in zip(ok, ok[1:]):
        factor = (p2[key] / p1[key]) ** (1 / math.log2(l2 / l1))
        out.append({"from": l1, "to": l2, "factor": factor})
    return out


def summarize(points, lengths, models) -> dict:
    summary = {"ratios": [], "growth": {}, "growth_cpu": {}}
    for L in lengths:
        row = {"length": L}
        a = _ok(points, "alignmamba", L)
        for other in ("mult", "transformer"):
            b = _ok(points, other, L)
            if a and b:
                row[f"time_vs_{other}"] = a["time_s"] / b["time_s"]
                if a.get("cpu_time_s") and b.get("cpu_time_s"):
                    row[f"cpu_vs_{other}"] = a["cpu_time_s"] / b["cpu_time_s"]
                row[f"memory_vs_{other}"] = a["memory_mb"] / b["memory_mb"] if b["memory_mb"] > 0 else None
        summary["ratios"].append(row)
    for m in models:
        steps = growth_per_doubling(points, m, lengths)
        summary["growth"][m] = steps
        late = [s["factor"] for s in steps if s["from"] >= 400]
        if late:
            summary.setdefault("growth_from_400", {})[m] = math.exp(sum(map(math.log, late)) / len(late))
        steps = growth_per_doubling(points, m, lengths, "cpu_time_s")
        summary["growth_cpu"][m] = steps
        late = [s["factor"] for s in steps if s["from"] >= 400]
        if late:
            summary.setdefault("growth_cpu_from_400", {})[m] = math.exp(sum(map(math.log, late)) / len(late))
    both = [r for r in summary["ratios"] if "time_vs_mult" in r]
    if both:
        summary["longest_common_with_mult"] = both[-1]
    return summary


def _fmt(x, spec=".3g"):
    return "—" if x is None else format(x, spec)


def _cell(p):
    if p is None:
        return "—"
    return f"{p['status']}" if p["status"] != OK else None


def _load_note(m) -> str:
    """The 1-minute load average when the run started: a shared machine makes times noisy."""
    load = m.get("load_average_at_start", [0])[0]
    return (f"Load average at start: {load:g} on {m['cpu_count']} CPUs" +
            (" — the machine was shared with other work, so times are noisy." if load > 0.75 * (m['cpu_count'] or 1) else ".")
            + "\n")


def inference_markdown(report) -> str:
    m, s = report["machine"], report["settings"]
    points, lengths, models = report["points"], s["lengths"], s["models"]
    lines = [f"# mmsa bench: inference on {m['device_label']}", "",
             f"**Device: {m['device_label']}** — torch {m['torch']}, "
             f"Mamba backend: {m['mamba_backend']}. {m['timestamp']}.", "", _load_note(m),
             f"RANDOM inputs (not real data): batch {s['batch']}, per-modality length L "
             f"(T_a = T_v = T_l = L; text 768 / audio 5 / vision 20 features). Time: median of up to "
             f"{s['repeats']} forward passes (eval, no_grad) after a warm-up pass, each point in a fresh "
             "process; wall = elapsed time, CPU = the process's CPU time (time.process_time, all threads; with 1 "
             "thread on a shared machine the less noisy of the two). Memory: " + (
                 "increase of the process's resident-set high-water mark over the state after imports, model "
                 "construction and input creation (activations and workspaces of the forward passes; "
                 "parameters and inputs excluded; includes ~10–30 MB of one-time thread-pool/kernel setup, "
                 "which dominates at small L)." if s["device"] == "cpu" else
                 "torch.cuda.max_memory_allocated (parameters and inputs included)."), ""]
    if s.get("memory_limit_gb"):
        lines.append(f"Limits per point: {s['time_limit_s']:g} s measuring time, "
                     f"{s['memory_limit_gb']:g} GB RSS growth.\n")
    head = "| L | " + " | ".join(f"{LABELS[x]} wall (s) | {LABELS[x]} CPU (s) | {LABELS[x]} mem (MB)"
                                 for x in models) + " |"
    lines += [head, "|" + "---|" * (1 + 3 * len(models))]
    for L in lengths:
        cells = []
        for x in models:
            p = next((q for q in points if q["model"] == x and q["length"] == L), None)
            bad = _cell(p)
            cells += [bad] * 3 if bad else [_fmt(p["time_s"], ".4g"), _fmt(p.get("cpu_time_s"), ".4g"),
                                            _fmt(p["memory_mb"], ".4g")]
        lines.append(f"| {L} | " + " | ".join(cells) + " |")
    summary = report["summary"]
    lines += ["", "## AlignMamba relative to the baselines (ratio < 1: AlignMamba is cheaper)", "",
              "| L | wall / MulT | CPU / MulT | memory / MulT | wall / Transformer | CPU / Transformer | "
              "memory / Transformer |", "|---|---|---|---|---|---|---|"]
    for r in summary["ratios"]:
        lines.append(f"| {r['length']} | {_fmt(r.get('time_vs_mult'))} | {_fmt(r.get('cpu_vs_mult'))} | "
                     f"{_fmt(r.get('memory_vs_mult'))} | {_fmt(r.get('time_vs_transformer'))} | "
                     f"{_fmt(r.get('cpu_vs_transformer'))} | {_fmt(r.get('memory_vs_transformer'))} |")
    for kind, growth_key, mean_key in (("wall", "growth", "growth_from_400"), ("CPU", "growth_cpu", "growth_cpu_from_400")):
        lines += ["", f"## Time growth per doubling of L ({kind} time)", "",
                  "| from L | to L | " + " | ".join(LABELS[x] for x in models) + " |",
                  "|---|---|" + "---|" * len(models)]
        steps = {x: {(g["from"], g["to"]): g["factor"] for g in summary.get(growth_key, {}).get(x, [])} for x in models}
        for k in sorted({k for v in steps.values() for k in v}):
            lines.append(f"| {k[0]} | {k[1]} | " + " | ".join(_fmt(steps[x].get(k), ".3f") for x in models) + " |")
        if summary.get(mean_key):
            lines.append("| ≥400 | (geometric mean) | " + " | ".join(
                _fmt(summary[mean_key].get(x), ".3f") for x in models) + " |")
    common = summary.get("longest_common_with_mult")
    if common:
        lines += ["", f"At the longest L where MulT ran (L = {common['length']}): AlignMamba wall time = "
                  f"{_fmt(common['time_vs_mult'])} × MulT, CPU time = {_fmt(common.get('cpu_vs_mult'))} × MulT, "
                  f"memory = {_fmt(common.get('memory_vs_mult'))} × MulT."]
    failures = [p for p in points if p["status"] not in (OK, SKIPPED)]
    if failures:
        lines += ["", "Points that did not complete:"] + [
            f"- {LABELS[p['model']]} at L={p['length']}: {p['status']} — {p.get('error', '')}" for p in failures]
    return "\n".join(lines) + "\n"


def write_plot(path, report, key: str, ylabel: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s = report["settings"]
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for model, marker in zip(s["models"], "osd^"):
        pts = [p for p in report["points"] if p["model"] == model and p["status"] == OK and p.get(key, 0) > 0]
        if not pts:
            continue
        label = LABELS[model]
        stopped = next((p for p in report["points"] if p["model"] == model and p["status"] in (OOM, TIMEOUT, ERROR)),
                       None)
        if stopped:
            label += f" ({stopped['status']} at L={stopped['length']})"
        line, = ax.plot([p["length"] for p in pts], [p[key] for p in pts], marker=marker, label=label)
        if key == "time_s" and all(p.get("cpu_time_s") for p in pts):
            ax.plot([p["length"] for p in pts], [p["cpu_time_s"] for p in pts], marker=marker, linestyle="--",
                    color=line.get_color(), alpha=0.6, label=f"{LABELS[model]} (CPU time)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("per-modality sequence length L (T_a = T_v = T_l; AlignMamba fuses 3·L tokens)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no point completed", transform=ax.transAxes, ha="center")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    with atomic_write(path) as f:
        f.write(buf.getvalue())


# ---------------------------------------------------------------------------------------------
# Training epoch
# ---------------------------------------------------------------------------------------------
def bench_train(opts, log) -> dict:
    """One epoch over MOSI-sized SYNTHETIC unaligned data for AlignMamba and MulT, same loop."""
    import torch
    import torch.nn as nn

    from . import host
    from .synthetic import ensure_synthetic
    from .trainer import batch_inputs
    size = "small" if opts.quick else "full"
    path = ensure_synthetic(opts.cache_dir, "mosi", size=size, seed=0)
    batch_size = opts.train_batch
    if batch_size is None:
        batch_size = int(host.load_config("alignmamba", "mosi")["batch_size"])
    results = {"data": f"SYNTHETIC MOSI-format unaligned ({size}; not real data): {path}", "batch_size": batch_size,
               "max_batches": opts.train_max_batches, "optimizer": "Adam", "models": {}}
    for model_name in ("alignmamba", "mult"):
        torch.manual_seed(0)
        args = build_args(model_name, opts.device)
        args.update(featurePath=str(path), custom_feature=None, feature_T="", feature_A="", feature_V="",
                    batch_size=batch_size)
        loaders = host.build_dataloaders(args, 0)
        model = build_bench_model(model_name, args).train()
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                                     lr=float(args.get("learning_rate", 1e-3)))
        criterion = nn.L1Loss()
        align_weight = float(args.get("align_weight", 0.0)) if model_name == "alignmamba" else 0.0

        def step(batch):
            inputs, extras = batch_inputs(batch, opts.device)
            if not takes_lengths(model_name):
                extras = {}
            labels = batch["labels"]["M"].to(opts.device).view(-1, 1)
            out = model(*inputs, **extras)
            loss = criterion(out["M"], labels)
            if align_weight:
                loss = loss + align_weight * out["align_loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return labels.shape[0]

        def sync():
            if str(opts.device).startswith("cuda"):
                torch.cuda.synchronize(opts.device)

        warm = iter(loaders["valid"])  # warm-up steps on validation batches, not counted
        for _ in range(2):
            step(next(warm))
        sync()
        n_samples, n_batches, compute = 0, 0, 0.0
        t_epoch, c_epoch = time.perf_counter(), time.process_time()
        for batch in loaders["train"]:
            t0 = time.perf_counter()
            n_samples += step(batch)
            sync()
            compute += time.perf_counter() - t0
            n_batches += 1
            if opts.train_max_batches and n_batches >= opts.train_max_batches:
                break
        epoch_s, epoch_cpu_s = time.perf_counter() - t_epoch, time.process_time() - c_epoch
        seq = args.get("seq_lens")
        full = len(loaders["train"].dataset)
        results["models"][model_name] = {
            "epoch_s": epoch_s, "epoch_cpu_s": epoch_cpu_s, "compute_s": compute, "samples": n_samples,
            "batches": n_batches, "train_split_samples": full, "samples_per_s": n_samples / epoch_s,
            "cpu_samples_per_s": n_samples / epoch_cpu_s if epoch_cpu_s > 0 else None,
            "full_epoch_s_estimate": epoch_s * full / n_samples,
            "params": sum(p.numel() for p in model.parameters()),
            "seq_lens_text_audio_vision": list(seq) if seq else None}
        log(f"  train {LABELS[model_name]:12s}: {epoch_s:8.2f} s wall, {epoch_cpu_s:8.2f} s CPU for {n_samples} "
            f"of {full} samples ({n_samples / epoch_s:.2f} samples/s, {n_batches} batches of {batch_size})")
        del model, optimizer, loaders
    a, b = results["models"]["alignmamba"], results["models"]["mult"]
    results["epoch_ratio_alignmamba_vs_mult"] = a["epoch_s"] / b["epoch_s"]
    results["epoch_cpu_ratio_alignmamba_vs_mult"] = a["epoch_cpu_s"] / b["epoch_cpu_s"]
    results["throughput_ratio_alignmamba_vs_mult"] = a["samples_per_s"] / b["samples_per_s"]
    return results


def train_markdown(report) -> str:
    t, m = report["train"], report["machine"]
    lines = [f"# mmsa bench --train: one training epoch on {m['device_label']}", "",
             f"**Device: {m['device_label']}** — torch {m['torch']}, "
             f"Mamba backend: {m['mamba_backend']}. {m['timestamp']}.", "", _load_note(m),
             f"Data: {t['data']}. Same loop for both models: Adam, L1 loss (+ align_weight·L_align for AlignMamba), "
             f"batch size {t['batch_size']}, forward + backward + optimizer step over the train split"
             + (f" (capped at {t['max_batches']} batches)" if t["max_batches"] else "") +
             "; 2 warm-up steps not counted; epoch time includes MMSA's data loader.", "",
             "| model | params | batches | samples (of train split) | wall (s) | CPU (s) | samples/s (wall) | "
             "full-epoch wall estimate (s) |", "|---|---|---|---|---|---|---|---|"]
    for name, r in t["models"].items():
        lines.append(f"| {LABELS[name]} | {r['params']:,} | {r['batches']} | {r['samples']} ({r['train_split_samples']}) | "
                     f"{r['epoch_s']:.2f} | {r['epoch_cpu_s']:.2f} | {r['samples_per_s']:.2f} | "
                     f"{r['full_epoch_s_estimate']:.1f} |")
    lines += ["", f"AlignMamba epoch time = {t['epoch_ratio_alignmamba_vs_mult']:.3f} × MulT wall, "
              f"{t['epoch_cpu_ratio_alignmamba_vs_mult']:.3f} × MulT CPU "
              f"(throughput {t['throughput_ratio_alignmamba_vs_mult']:.2f} × MulT)."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Kernels (benchmarks/kernels.py, repository only)
# ---------------------------------------------------------------------------------------------
def _load_kernels_module():
    """benchmarks/kernels.py of the repository (it is not in the wheel), or None with the reason."""
    import importlib.util
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "kernels.py"
    if not path.is_file():
        return None, f"{path} not found (benchmarks/ is in the repository, not in the installed package)"
    spec = importlib.util.spec_from_file_location("mmsa_alignmamba_benchmarks_kernels", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        module.bench_kernels  # noqa: B018 - the entry point must exist
    except Exception as e:  # noqa: BLE001
        return None, f"cannot load bench_kernels from {path}: {type(e).__name__}: {e}"
    return module, str(path)


def bench_kernels_section(opts, log) -> dict:
    """The selective-scan comparison (ours / mambapy pscan / mamba-ssm selective_scan_ref, fwd+bwd,
    CPU) of benchmarks/kernels.py, reused as is; --quick shrinks it to toy sizes."""
    module, where = _load_kernels_module()
    if module is None:
        return {"status": "unavailable", "reason": where}
    kwargs = (dict(lengths=(16, 32), batch=2, dim=32, d_state=16, ref_max_len=32, repeats=1) if opts.quick
              else {})
    log(f"  kernels: {where}: bench_kernels({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) — CPU kernels")
    rows = module.bench_kernels(**kwargs)
    table = module.markdown_table(rows) if hasattr(module, "markdown_table") else None
    return {"status": "ok", "source": where, "rows": rows, "table": table}


def kernels_markdown(report) -> str:
    k, m = report["kernels"], report["machine"]
    lines = [f"# mmsa bench --kernels: selective scan, fwd+bwd, CPU ({m['cpu_model']})", "",
             "Random inputs. Each point in a fresh subprocess (benchmarks/kernels.py).", ""]
    if k["status"] != "ok":
        return "\n".join(lines + [f"Kernel comparison unavailable: {k['reason']}"]) + "\n"
    if k.get("table"):
        lines.append(k["table"])
    else:
        lines += ["```", json.dumps(k["rows"], indent=1, default=str), "```"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Command
# ---------------------------------------------------------------------------------------------
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
    mem_total = _meminfo_kb("MemTotal")
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


def _meminfo_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmsa bench",
        description="Inference time and memory vs sequence length of AlignMamba, MMSA's MulT and a Transformer "
        "fusion baseline on RANDOM inputs (each point in a fresh process); --train: one training epoch on SYNTHETIC "
        "MOSI-format data; --kernels: selective-scan kernels. Writes bench.json, bench.md and plots.")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="default cpu")
    p.add_argument("--lengths", nargs="+", type=int, help=f"per-modality lengths L (default {' '.join(map(str, DEFAULT_LENGTHS))})")
    p.add_argument("--batch", type=int, help="inference batch size (default 8; 2 with --quick)")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="default: all three")
    p.add_argument("--repeats", type=int, help="timed forward passes per point (default 5; 1 with --quick)")
    p.add_argument("--repeat-budget", type=float, default=60.0,
                   help="stop repeating a point once its timed passes took this many seconds (default 60)")
    p.add_argument("--out", help="output folder (default ~/MMSA/bench/<timestamp>)")
    p.add_argument("--quick", action="store_true", help="smoke run: lengths 16 32, batch 2, 1 repeat")
    p.add_argument("--inference", action="store_true", help="run the inference sweep too when --train/--kernels are given")
    p.add_argument("--kernels", action="store_true", help="selective-scan kernel comparison (benchmarks/kernels.py)")
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
        return _point_main(opts.point)
    import torch
    if opts.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but torch sees no CUDA device")
    opts.lengths = sorted(set(opts.lengths or (QUICK_LENGTHS if opts.quick else DEFAULT_LENGTHS)))
    opts.batch = opts.batch or (2 if opts.quick else 8)
    opts.repeats = opts.repeats or (1 if opts.quick else 5)
    if opts.quick and opts.train_max_batches is None:
        opts.train_max_batches = 3
    opts.threads = opts.threads or torch.get_num_threads()
    torch.set_num_threads(opts.threads)  # the training section runs in this process
    bad = [("--lengths", min(opts.lengths), 1), ("--batch", opts.batch, 1), ("--repeats", opts.repeats, 1)]
    for flag, value, low in bad:
        if value < low:
            raise InputError(f"{flag} must be >= {low}, got {value}")
    if opts.time_limit <= 0:
        raise InputError(f"--time-limit must be > 0, got {opts.time_limit}")
    if opts.memory_limit_gb is None and opts.device == "cpu":
        available = _meminfo_kb("MemAvailable")
        opts.memory_limit_gb = round(0.6 * available / 2**20, 1) if available else None
    elif opts.memory_limit_gb is not None and opts.memory_limit_gb <= 0:
        raise InputError(f"--memory-limit-gb must be > 0, got {opts.memory_limit_gb}")
    opts.cache_dir = Path(opts.cache_dir) if opts.cache_dir else output_root()
    out = Path(opts.out) if opts.out else output_root() / "bench" / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the output directory {out}: {e.strerror}") from None
    sections = [s for s in ("train", "kernels") if getattr(opts, s)]
    if not sections or opts.inference:
        sections.insert(0, "inference")

    def log(msg):
        print(msg, flush=True)

    machine = machine_info(opts.device, opts.threads)
    report = {"tool": "mmsa bench", "machine": machine, "command": "mmsa bench " + " ".join(argv),
              "inputs": "RANDOM tensors (inference) / SYNTHETIC MOSI-format data (training): not real data",
              "settings": {"device": opts.device, "lengths": opts.lengths, "batch": opts.batch, "models": opts.models,
                           "repeats": opts.repeats, "repeat_budget_s": opts.repeat_budget, "quick": opts.quick,
                           "time_limit_s": opts.time_limit, "memory_limit_gb": opts.memory_limit_gb,
                           "threads": opts.threads, "sections": sections}}
    log(f"mmsa bench on {machine['device_label']}, torch {machine['torch']}, Mamba backend: {machine['mamba_backend']}")
    log("inputs are RANDOM (inference) / SYNTHETIC (training), not real data")
    status = 0
    md_parts = []
    if "inference" in sections:
        log(f"inference: lengths {opts.lengths}, batch {opts.batch}, models {', '.join(opts.models)}, "
            f"each point in a fresh process on {machine['device_label']}")
        report["points"] = run_inference(opts, log)
        report["summary"] = summarize(report["points"], opts.lengths, opts.models)
        if any(p["status"] == ERROR for p in report["points"]):
            status = 1
        md_parts.append(inference_markdown(report))
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
