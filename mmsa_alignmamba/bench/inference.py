"""The inference sweep: for each length and model, one point measured in its own process
(eval, no_grad, warm-up, median of repeated forward passes; time and peak memory)."""
from __future__ import annotations

import json
import signal
import statistics
import sys
import time

from .baselines import BASELINES, bench_args, build_bench_model, random_inputs
from .isolation import (
    ERROR,
    OK,
    OOM,
    SKIPPED,
    TIMEOUT,
    MemoryWatchdog,
    PointTimeout,
    die_with_parent,
    failed_record,
    is_oom,
    measure_point,
    peak_rss_kb,
    reset_rss_peak,
)

RESULT_TAG = "MMSA_BENCH_POINT_RESULT "


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
    if "shape" in spec:
        result["shape"] = spec["shape"]
    forward, model, inputs = _forward_call(spec["model"], spec)
    result.update(params=sum(p.numel() for p in model.parameters()),
                  param_mb=round(_tensor_mb(list(model.parameters())), 3), input_mb=round(_tensor_mb(inputs), 3))
    result["setup_s"] = round(time.perf_counter() - started, 3)

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
        result["rss_peak_reset"] = reset_rss_peak()
        baseline_kb = peak_rss_kb()
        if spec.get("memory_limit_gb"):
            watchdog = MemoryWatchdog(result, baseline_kb, float(spec["memory_limit_gb"]), report or _print_record)
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
                forward()
            sync()
            budget = float(spec.get("repeat_budget_s", 60.0))
            spent = 0.0
            for i in range(max(1, int(spec.get("repeats", 5)))):
                t0, c0 = time.perf_counter(), time.process_time()
                out = forward()
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
        result.update(status=OOM if is_oom(e) else ERROR, error=f"{type(e).__name__}: {str(e)[:500]}")
    finally:
        if watchdog is not None:
            watchdog.stop()

    if cuda:
        result.update(memory_mb=round(torch.cuda.max_memory_allocated(device) / 2**20, 3),
                      memory_kind="cuda_max_memory_allocated")
    else:
        result.update(memory_mb=round((peak_rss_kb() - baseline_kb) / 1024, 3), memory_kind="rss_hwm_delta",
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


def _forward_call(name: str, spec: dict):
    """(forward, model, inputs): benchmark model `name` built at spec's dataset and shape, and a
    call that runs one pass on its random inputs (in ONNX Runtime for the ONNX entry)."""
    dataset, device = spec.get("dataset", "mosi"), spec["device"]
    args = bench_args(name, device, dataset)
    model = build_bench_model(name, args).eval()
    inputs, extras = random_inputs(name, spec.get("lengths") or spec["length"], spec["batch"], device,
                                   dataset=dataset, time_averaged=bool(args.get("need_normalized")))
    forward = _onnx_forward(model, inputs, extras, spec.get("threads")) if BASELINES[name].onnx \
        else (lambda: model(*inputs, **extras))
    return forward, model, inputs


def run_alternated(spec: dict, report=None) -> dict:
    """The models in spec["models"] at one shape in this process, one pass of each in turn,
    spec["repeats"] times after a warm-up pass each: their medians are measured over the same
    seconds, so a machine whose speed drifts moves both sides of a ratio alike. Time only (the
    processes' memory is shared). CPU only (no synchronisation)."""
    import torch
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(0)
    forwards = {name: _forward_call(name, spec)[0] for name in spec["models"]}
    times = {name: [] for name in forwards}
    with torch.no_grad():
        for forward in forwards.values():
            forward()
        for _ in range(int(spec["repeats"])):
            for name, forward in forwards.items():
                t0 = time.perf_counter()
                forward()
                times[name].append(time.perf_counter() - t0)
    return {"model": spec["model"], "length": spec["length"], "batch": spec["batch"], "shape": spec["shape"],
            "status": OK, "alternated": {name: {"time_s": statistics.median(t), "times_s": [round(x, 6) for x in t]}
                                         for name, t in times.items()}}


def _onnx_forward(model, inputs, extras, threads):
    """Export ``model`` (AlignMamba in MMSA's AMIO) to ONNX in a temporary folder and return a
    call that runs it in ONNX Runtime on the same inputs; the export is setup, not measured."""
    import tempfile

    import onnxruntime

    from ..export import export_model
    with tempfile.TemporaryDirectory(prefix="mmsa-bench-onnx-") as tmp:
        path = export_model(model.Model, f"{tmp}/model.onnx")
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {"text": inputs[0], "audio": inputs[1], "vision": inputs[2], **extras}
    feeds = {k: v.cpu().numpy() for k, v in feeds.items()}
    return lambda: session.run(None, feeds)


def _print_record(record: dict) -> None:
    sys.stdout.write("\n" + RESULT_TAG + json.dumps(record) + "\n")
    sys.stdout.flush()


def point_main(spec_json: str) -> int:
    """`python -m mmsa_alignmamba.bench --point SPEC`: one point, the record printed on stdout."""
    spec = json.loads(spec_json)
    try:
        result = run_point(spec)
    except BaseException as e:  # noqa: BLE001
        result = failed_record(spec, e)
    _print_record(result)
    return 0


def _point_child(spec: dict, conn, run=run_point) -> None:
    """Entry point of a point's process under multiprocessing: the record goes back on `conn`."""
    die_with_parent()
    try:
        result = run(spec, report=conn.send)
    except BaseException as e:  # noqa: BLE001
        result = failed_record(spec, e)
    try:
        conn.send(result)
        conn.close()
    except (BrokenPipeError, EOFError):  # the benchmark that asked for this point is gone
        pass


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
            point = measure_point(spec, _point_child)
            points.append(point)
            last[model] = point
            if point["status"] != OK:
                failed[model] = point
            log(f"  L={length:5d} {BASELINES[model].label:20s} " + (
                f"{point['time_s'] * 1e3:10.1f} ms wall {point['cpu_time_s'] * 1e3:10.1f} ms CPU "
                f"{point['memory_mb']:9.1f} MB  "
                f"({point['repeats']} rep, {point['warmup']} warm-up)" if point["status"] == OK
                else f"{point['status'].upper()}: {point.get('error', '')[:200]}"))
    return points


def combine_rounds(rounds: list[list[dict]]) -> list[dict]:
    """Points measured in several rounds (every point once per round, in the same order) as one
    list: a point OK in every round gets the median over rounds of its wall and CPU times, each
    round's time in ``round_times_s``, and the largest memory; otherwise the first failure.
    Rounds make ratios robust to a machine whose speed drifts: the two sides of a ratio are
    measured close together in every round, not once, minutes apart."""
    if len(rounds) == 1:
        return rounds[0]
    combined = []
    for same in zip(*rounds):
        failed = next((p for p in same if p["status"] != OK), None)
        if failed is not None:
            combined.append(failed)
            continue
        point = dict(same[0], round_times_s=[p["time_s"] for p in same])
        point["time_s"] = statistics.median(point["round_times_s"])
        if "cpu_time_s" in point:
            point["cpu_time_s"] = statistics.median(p["cpu_time_s"] for p in same)
        point["memory_mb"] = max(p["memory_mb"] for p in same)
        combined.append(point)
    return combined


SHAPE_BATCHES = (1, 32)


def _alternated_child(spec: dict, conn) -> None:
    _point_child(spec, conn, run=run_alternated)


def _shape_specs(opts):
    """(dataset, lengths, batch, spec) for each dataset's real shapes (T_l, T_a, T_v and widths,
    unaligned) at each batch size: what a point there has in common, whatever it measures."""
    from ..datasets import SHAPES
    for dataset in opts.shapes:
        lengths = list(SHAPES[dataset]["seq_lens"]["unaligned"])
        for batch in opts.shape_batches:
            yield dataset, lengths, batch, {
                "length": max(lengths), "lengths": lengths, "dataset": dataset, "shape": dataset, "batch": batch,
                "device": opts.device, "threads": opts.threads, "repeats": opts.repeats,
                "time_limit_s": opts.time_limit}


def run_alternated_shapes(opts, log) -> list[dict]:
    """``--alternate``: at each dataset's shapes and batch size, the chosen models in one fresh
    process with their passes alternated (:func:`run_alternated`)."""
    records = []
    for dataset, lengths, batch, common in _shape_specs(opts):
        record = measure_point({**common, "model": "+".join(opts.alternate), "models": opts.alternate},
                               _alternated_child)
        record.update(shape=dataset, lengths=lengths, batch=batch)
        records.append(record)
        log(f"  {dataset.upper():5s} {tuple(lengths)} batch {batch:3d} alternated: " + (
            ", ".join(f"{BASELINES[m].label} {r['time_s'] * 1e3:.1f} ms" for m, r in record["alternated"].items())
            if record["status"] == OK else f"{record['status'].upper()}: {record.get('error', '')[:200]}"))
    return records


def run_shapes(opts, log) -> list[dict]:
    """Each model at each dataset's real shapes and batch size, one point per process; a failed
    point is recorded and the rest go on."""
    points = []
    for dataset, lengths, batch, common in _shape_specs(opts):
        for model in opts.models:
            spec = {**common, "model": model, "warmup": 1, "repeat_budget_s": opts.repeat_budget,
                    "memory_limit_gb": opts.memory_limit_gb}
            point = measure_point(spec, _point_child)
            point.update(shape=dataset, lengths=lengths, batch=batch)
            points.append(point)
            log(f"  {dataset.upper():5s} {tuple(lengths)} batch {batch:3d} {BASELINES[model].label:26s} " + (
                f"{point['time_s'] * 1e3:10.1f} ms wall {point['memory_mb']:9.1f} MB"
                if point["status"] == OK else f"{point['status'].upper()}: {point.get('error', '')[:200]}"))
    return points
