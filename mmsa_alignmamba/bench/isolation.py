"""Process isolation for benchmark points: each point runs in a fresh process forked from a
forkserver, its memory is read from /proc, a watchdog ends it past a memory limit, and a point
that dies is recorded (SIGKILL: the OOM killer), never raised."""
from __future__ import annotations

import ctypes
import os
import resource
import signal
import threading
import time
from pathlib import Path

OK, OOM, TIMEOUT, SKIPPED, ERROR = "ok", "oom", "timeout", "skipped", "error"
STARTUP_GRACE_S = 120.0  # a point's process may take this long to import and build before measuring


class PointTimeout(Exception):
    pass


def is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(s in text for s in (
        "out of memory", "not enough memory", "can't allocate memory", "cannot allocate memory",
        "std::bad_alloc"))


def proc_kb(path: str, field: str) -> int | None:
    """A ``Field:  N kB`` value of a /proc file (/proc/self/status, /proc/meminfo), None where absent."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_rss_peak() -> bool:
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


def peak_rss_kb() -> int:
    """High-water RSS of this process in KiB (VmHWM; ru_maxrss where /proc is missing)."""
    hwm = proc_kb("/proc/self/status", "VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class MemoryWatchdog(threading.Thread):
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
            rss = proc_kb("/proc/self/status", "VmRSS")
            if rss is not None and rss - self.baseline_kb > self.limit_kb:
                self.report({**self.result, "status": OOM, "memory_mb": round((rss - self.baseline_kb) / 1024, 3),
                             "memory_kind": "rss_hwm_delta",
                             "error": f"memory grew past the limit of {self.limit_kb / 2**20:g} GB (stopped)"})
                os._exit(0)


def failed_record(spec: dict, e: BaseException) -> dict:
    return {"model": spec.get("model"), "length": spec.get("length"), "batch": spec.get("batch"),
            "status": OOM if is_oom(e) else ERROR, "error": f"{type(e).__name__}: {str(e)[:500]}"}


def die_with_parent() -> None:
    """Die with the forkserver (which dies with the benchmark) instead of running on as an orphan."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


_PRELOAD = ["torch", "MMSA.models", "MMSA.data_loader", "mmsa_alignmamba.host", "mmsa_alignmamba.model",
            "mmsa_alignmamba.bench.inference"]
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


def measure_point(spec: dict, child) -> dict:
    """Run one point in a fresh process, ``child(spec, conn)`` sending its record on ``conn``, and
    return the record (never raises for a failure)."""
    ctx = _mp_context()
    base = {"model": spec["model"], "length": spec["length"], "batch": spec["batch"]}
    limit = float(spec.get("time_limit_s") or 0)
    wait = (limit + STARTUP_GRACE_S) if limit > 0 else None
    started = time.perf_counter()
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=child, args=(spec, sender), daemon=True)
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
