"""What a benchmark run says: ratios and growth per doubling of L, markdown tables, log-log plots."""
from __future__ import annotations

import io
import math

from ..safeio import atomic_write
from .baselines import BASELINES, REFERENCE
from .isolation import ERROR, OK, OOM, SKIPPED, TIMEOUT

LABELS = {name: b.label for name, b in BASELINES.items()}


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
    others = [m for m in models if m != REFERENCE]
    for L in lengths:
        row = {"length": L}
        a = _ok(points, REFERENCE, L)
        for other in others:
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
    for other in others:
        both = [r for r in summary["ratios"] if f"time_vs_{other}" in r]
        if both:
            summary[f"longest_common_with_{other}"] = both[-1]
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
             f"process{_rounds_note(s)}; wall = elapsed time, CPU = the process's CPU time (time.process_time, all threads; with 1 "
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
    others = [x for x in models if x != REFERENCE]
    lines += ["", f"## {LABELS[REFERENCE]} relative to the baselines (ratio < 1: {LABELS[REFERENCE]} is cheaper)", "",
              "| L | " + " | ".join(f"{kind} / {LABELS[x]}" for x in others for kind in ("wall", "CPU", "memory")) + " |",
              "|---|" + "---|" * (3 * len(others))]
    for r in summary["ratios"]:
        lines.append(f"| {r['length']} | " + " | ".join(
            _fmt(r.get(f"{key}_vs_{x}")) for x in others for key in ("time", "cpu", "memory")) + " |")
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
    for x in others:
        common = summary.get(f"longest_common_with_{x}")
        if common:
            lines += ["", f"At the longest L where {LABELS[x]} ran (L = {common['length']}): {LABELS[REFERENCE]} "
                      f"wall time = {_fmt(common[f'time_vs_{x}'])} × {LABELS[x]}, CPU time = "
                      f"{_fmt(common.get(f'cpu_vs_{x}'))} ×, memory = {_fmt(common.get(f'memory_vs_{x}'))} ×."]
    failures = [p for p in points if p["status"] not in (OK, SKIPPED)]
    if failures:
        lines += ["", "Points that did not complete:"] + [
            f"- {LABELS[p['model']]} at L={p['length']}: {p['status']} — {p.get('error', '')}" for p in failures]
    return "\n".join(lines) + "\n"


def shape_ratios(points, models) -> list[dict]:
    """Per (dataset shape, batch): AlignMamba's wall time over each other model's, and ONNX
    Runtime's over eager AlignMamba's, where both points completed."""
    rows = []
    for shape, batch in dict.fromkeys((p["shape"], p["batch"]) for p in points):
        here = {p["model"]: p for p in points if p["shape"] == shape and p["batch"] == batch and p["status"] == OK}
        row = {"shape": shape, "batch": batch}
        if REFERENCE in here:
            for other in models:
                if other != REFERENCE and other in here and not BASELINES[other].onnx:
                    row[f"{REFERENCE}_vs_{other}"] = here[REFERENCE]["time_s"] / here[other]["time_s"]
            if "alignmamba_onnx" in here:
                row["onnx_vs_eager"] = here["alignmamba_onnx"]["time_s"] / here[REFERENCE]["time_s"]
        rows.append(row)
    return rows


def _rounds_note(settings) -> str:
    rounds = settings.get("rounds", 1)
    return f"; every point measured in {rounds} rounds (all points once per round), the median over rounds" \
        if rounds > 1 else ""


def shapes_markdown(report) -> str:
    m, s = report["machine"], report["settings"]
    points, models = report["shape_points"], s["models"]
    lines = [f"# mmsa bench: latency at the real datasets' shapes on {m['device_label']}", "",
             f"**Device: {m['device_label']}** — torch {m['torch']}, Mamba backend: {m['mamba_backend']}. "
             f"{m['timestamp']}.", "", _load_note(m),
             "RANDOM inputs (not real data) of each dataset's unaligned shapes and feature widths "
             "(T_l, T_a, T_v; models with MMSA's `need_normalized`, like LF-DNN, get audio and vision averaged "
             "over time, as MMSA's loader gives them). Wall time in ms: median of up to "
             f"{s['repeats']} forward passes after a warm-up, each point in a fresh process{_rounds_note(s)}.", "",
             "| dataset (T_l, T_a, T_v) | batch | " + " | ".join(LABELS[x] for x in models) + " |",
             "|---|---|" + "---|" * len(models)]
    for shape, batch in dict.fromkeys((p["shape"], p["batch"]) for p in points):
        here = {p["model"]: p for p in points if p["shape"] == shape and p["batch"] == batch}
        lengths = tuple(next(iter(here.values()))["lengths"])
        cells = [(_cell(here.get(x)) or _fmt(here[x]["time_s"] * 1e3, ".4g")) for x in models]
        lines.append(f"| {shape.upper()} {lengths} | {batch} | " + " | ".join(cells) + " |")
    ratios = report["shape_summary"]
    keys = [k for k in dict.fromkeys(k for r in ratios for k in r) if k not in ("shape", "batch")]
    names = {f"{REFERENCE}_vs_{x}": f"{LABELS[REFERENCE]} / {LABELS[x]}" for x in models if not BASELINES[x].onnx}
    names["onnx_vs_eager"] = "ONNX Runtime / eager AlignMamba"
    lines += ["", "Ratios of wall time (< 1: the first is faster), measured in this run:", "",
              "| dataset | batch | " + " | ".join(names[k] for k in keys) + " |", "|---|---|" + "---|" * len(keys)]
    for r in ratios:
        lines.append(f"| {r['shape'].upper()} | {r['batch']} | " + " | ".join(_fmt(r.get(k)) for k in keys) + " |")
    failures = [p for p in points if p["status"] != OK]
    if failures:
        lines += ["", "Points that did not complete:"] + [
            f"- {LABELS[p['model']]} at {p['shape'].upper()} batch {p['batch']}: {p['status']} — {p.get('error', '')}"
            for p in failures]
    if report.get("alternated"):
        lines += ["", *_alternated_lines(report["alternated"], s)]
    return "\n".join(lines) + "\n"


def _alternated_lines(records, settings) -> list[str]:
    """``--alternate``: each shape's models in one process, passes alternated; the first over each other."""
    models = settings["alternate"]
    first = models[0]
    lines = [f"Alternated in one process (`--alternate`): one pass of each model in turn, {settings['repeats']} "
             "times after a warm-up pass each, median wall time in ms; the two sides of each ratio are measured over "
             "the same seconds.", "",
             "| dataset | batch | " + " | ".join(LABELS[m] for m in models) + " | "
             + " | ".join(f"{LABELS[first]} / {LABELS[m]}" for m in models[1:]) + " |",
             "|---|---|" + "---|" * (2 * len(models) - 1)]
    for r in records:
        if r["status"] != OK:
            lines.append(f"| {r['shape'].upper()} | {r['batch']} | {r['status']}: {r.get('error', '')[:120]} |")
            continue
        t = {m: r["alternated"][m]["time_s"] for m in models}
        lines.append(f"| {r['shape'].upper()} | {r['batch']} | " + " | ".join(_fmt(t[m] * 1e3, ".4g") for m in models)
                     + " | " + " | ".join(_fmt(t[first] / t[m], ".3f") for m in models[1:]) + " |")
    return lines


def write_plot(path, report, key: str, ylabel: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s = report["settings"]
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for model in s["models"]:
        marker = BASELINES[model].marker
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
