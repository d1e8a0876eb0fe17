"""Selective-scan kernels side by side on CPU: ours, mambapy's pscan, mamba-ssm's reference.

Every (length, method) point runs in a fresh Python subprocess, so its peak memory is its own:
ru_maxrss after the timed fwd+bwd minus ru_maxrss after imports, input allocation and a tiny
warm-up call (L = 16).  All three compute the same function, mamba-ssm's
``selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True)`` in float32 on 2
threads; mambapy's ``MambaBlock.selective_scan`` has no bias / softplus / gate, so those are
applied around it.  Failures come back as status strings, not exceptions.

    python -m mmsa_alignmamba.bench.kernels           # L = 150, 300, 1500; markdown table
    python -m mmsa_alignmamba.bench.kernels --lengths 300 --repeats 3
    mmsa bench --kernels                              # the same, as a section of `mmsa bench`
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

METHODS = ("ours", "mambapy", "ref")
POINT_TIMEOUT_S = 1800  # selective_scan_ref at L = 300 takes ~30 s, its backward is O(L^2)
THREADS = 2


def _worker(spec):
    """Runs in the subprocess: one method at one size; returns a result dict."""
    import resource
    import time
    import types

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(THREADS)
    method = spec["method"]
    if method == "ours":
        from mmsa_alignmamba.mamba import selective_scan as fn
    elif method == "mambapy":
        try:
            from mambapy.mamba import MambaBlock
        except Exception as e:
            return {"status": f"unavailable: {type(e).__name__}: {e}"}

        def fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
            # mambapy works in (b, L, d) and takes dt after bias and softplus
            dt = F.softplus(delta + delta_bias[:, None]).transpose(1, 2)
            y = MambaBlock.selective_scan(None, u.transpose(1, 2), dt, A, B.transpose(1, 2),
                                          C.transpose(1, 2), D)
            return y.transpose(1, 2) * F.silu(z)
    else:
        try:
            sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
            from mamba_ssm.ops.selective_scan_interface import selective_scan_ref as fn
        except Exception as e:
            return {"status": f"unavailable: {type(e).__name__}: {e}"}

    def inputs(L):
        g = torch.Generator().manual_seed(0)
        b, d, n = spec["batch"], spec["dim"], spec["d_state"]
        r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
        A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1)  # S4D-real, as in Mamba
        args = dict(u=r(b, d, L), delta=r(b, d, L) - 2.0, A=A, B=r(b, n, L), C=r(b, n, L),
                    D=torch.ones(d), z=r(b, d, L), delta_bias=0.1 * r(d))
        return {k: v.requires_grad_() for k, v in args.items()}, r(b, d, L)

    def fwd_bwd(args, dout):
        out = fn(**args, delta_softplus=True)
        out.backward(dout)
        for v in args.values():
            v.grad = None

    fwd_bwd(*inputs(16))  # load kernels, thread pools
    args, dout = inputs(spec["L"])
    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    try:
        for _ in range(spec["repeats"]):
            t0 = time.perf_counter()
            fwd_bwd(args, dout)
            times.append(time.perf_counter() - t0)
    except MemoryError:
        return {"status": "oom"}
    except RuntimeError as e:
        oom = "alloc" in str(e).lower() or "memory" in str(e).lower()
        return {"status": "oom" if oom else f"error: RuntimeError: {e}"[:300]}
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"status": "ok", "seconds": min(times), "all_seconds": times,
            "peak_mb": (peak_kb - base_kb) / 1024}


def _run_point(spec):
    cmd = [sys.executable, "-m", "mmsa_alignmamba.bench.kernels", "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=POINT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout (> {POINT_TIMEOUT_S} s)"}
    if proc.returncode != 0:
        if proc.returncode in (-9, 137):  # SIGKILL: the kernel's OOM killer, usually
            return {"status": "oom (killed)"}
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        return {"status": f"error: exit {proc.returncode}: {tail[0]}"[:300]}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"status": f"error: unreadable worker output {proc.stdout[-200:]!r}"}


def bench_kernels(lengths=(150, 300, 1500), batch=32, dim=256, d_state=16, ref_max_len=300,
                  repeats=1) -> list[dict]:
    """fwd+bwd time (best of `repeats`) and peak extra memory per (L, method).

    Returns one dict per point: L, method, batch, dim, d_state, threads, status ("ok",
    "unavailable: ...", "oom", "timeout ...", "error: ...", or "skipped: ..." for the
    reference above ref_max_len) and, when ok, seconds, all_seconds, peak_mb.
    """
    rows = []
    for L in lengths:
        for method in METHODS:
            row = dict(L=L, method=method, batch=batch, dim=dim, d_state=d_state,
                       threads=THREADS)
            if method == "ref" and L > ref_max_len:
                row["status"] = f"skipped: L > ref_max_len={ref_max_len}"
            else:
                row.update(_run_point(dict(row, repeats=repeats)))
            rows.append(row)
    return rows


def markdown_table(rows):
    """Rows as a markdown table; 'ours speed-up' = their time / ours, 'ours memory' = ours /
    theirs, both at the same L."""
    ours = {r["L"]: r for r in rows if r["method"] == "ours" and r["status"] == "ok"}
    lines = ["| L | method | status | fwd+bwd s | peak extra MB | ours speed-up | ours memory |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ok, o = r["status"] == "ok", ours.get(r["L"])
        t = f"{r['seconds']:.3f}" if ok else ""
        m = f"{r['peak_mb']:.0f}" if ok else ""
        speed = f"{r['seconds'] / o['seconds']:.1f}x" if ok and o and r is not o else ""
        mem = (f"{o['peak_mb'] / r['peak_mb']:.2f}x" if ok and o and r is not o
               and r["peak_mb"] > 0 else "")
        lines.append(f"| {r['L']} | {r['method']} | {r['status']} | {t} | {m} | {speed} | {mem} |")
    return "\n".join(lines)


def bench_kernels_section(opts, log) -> dict:
    """The selective-scan comparison of this module as a section of `mmsa bench`; --quick shrinks
    it to toy sizes."""
    kwargs = (dict(lengths=(16, 32), batch=2, dim=32, d_state=16, ref_max_len=32, repeats=1) if opts.quick
              else {})
    log(f"  kernels: bench_kernels({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) — CPU kernels")
    rows = bench_kernels(**kwargs)
    return {"status": "ok", "source": __name__, "rows": rows, "table": markdown_table(rows)}


def kernels_markdown(report) -> str:
    k, m = report["kernels"], report["machine"]
    lines = [f"# mmsa bench --kernels: selective scan, fwd+bwd, CPU ({m['cpu_model']})", "",
             "Random inputs. Each point in a fresh subprocess (mmsa_alignmamba.bench.kernels).", ""]
    if k["status"] != "ok":
        return "\n".join(lines + [f"Kernel comparison unavailable: {k['reason']}"]) + "\n"
    if k.get("table"):
        lines.append(k["table"])
    else:
        lines += ["```", json.dumps(k["rows"], indent=1, default=str), "```"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[150, 300, 1500])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--ref-max-len", type=int, default=300)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--json", help="also write the rows to this file")
    a = p.parse_args(argv)
    rows = bench_kernels(tuple(a.lengths), a.batch, a.dim, a.d_state, a.ref_max_len, a.repeats)
    print(markdown_table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(_worker(json.loads(sys.argv[2]))))
    else:
        main()
