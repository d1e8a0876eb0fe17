"""The selective scan's inference fast path on CPU: a small C kernel, compiled on first use.

The PyTorch scan (:func:`mamba.selective_scan`) has to materialise (L, d, n) state tensors and
pass over them several times; that memory traffic, not arithmetic, is what makes a CPU Mamba
layer slower than a Transformer layer of the same width. ``scan_kernel.c`` keeps each channel
block's state in cache and writes only the (b, L, d) output. No maintained library ships a CPU
selective scan (mamba-ssm's kernels are CUDA-only), hence this one.

It serves forward passes that need no gradient (evaluation, ``mmsa predict``, benchmarks);
training keeps the PyTorch scan and its hand-written backward. It is built with the system C
compiler (``$CC``, else Python's, else ``cc``) into a per-machine cache, once, in well under a
second; where there is no compiler, or ``MMSA_ALIGNMAMBA_CPU_KERNEL=0`` is set, everything runs
on the PyTorch scan, with one log line saying so. Threads: the (batch, channel) grid is split
into ``torch.get_num_threads()`` disjoint blocks, run on a thread pool (ctypes releases the GIL);
each output element is computed the same way whatever the split.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["kernel_available", "kernel_applies", "selective_scan_inference"]

logger = logging.getLogger("mmsa_alignmamba")

SOURCE = Path(__file__).with_name("scan_kernel.c")
# -ffast-math lets the compiler call glibc's vector expf; it is given to the compile step only,
# because linking a shared library with it (GCC < 13) adds a constructor that switches the whole
# process to flush-to-zero floats. -march=native: the cache key includes the CPU.
COMPILE_FLAGS = ("-O3", "-ffast-math", "-fopenmp-simd", "-march=native", "-fPIC")
ENABLE_VARIABLE = "MMSA_ALIGNMAMBA_CPU_KERNEL"
CHANNEL_ALIGN = 16  # channel blocks handed to threads start on whole SIMD vectors
PARALLEL_MIN_UPDATES = 1 << 20  # b * L * d * n state updates below which a thread hand-off costs more than it saves


def _compiler() -> list[str] | None:
    for candidate in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc"):
        if candidate:
            argv = shlex.split(candidate)
            if argv and shutil.which(argv[0]):
                return argv
    return None


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU's model and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(next((ln for ln in lines if ln.startswith(key)), "") for key in ("model name", "flags"))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "mmsa_alignmamba" / "kernels"


def _build(compiler: list[str], target: Path) -> None:
    """Compile, then link without -ffast-math, into a temporary name, then move it into place
    (atomic: concurrent processes, e.g. Ray workers, may build at once)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        obj, lib = Path(tmp) / "scan_kernel.o", Path(tmp) / target.name
        for argv in ([*compiler, *COMPILE_FLAGS, "-c", str(SOURCE), "-o", str(obj)],
                     [*compiler, "-shared", str(obj), "-o", str(lib), "-lm"]):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise RuntimeError(f"{shlex.join(argv)} failed: {done.stderr.strip()[-500:]}")
        os.replace(lib, target)


@functools.lru_cache(maxsize=None)
def _kernel():
    """The compiled ``selective_scan_fwd`` as a ctypes function, or None (logged once)."""
    if os.environ.get(ENABLE_VARIABLE, "1") == "0":
        logger.info("CPU scan kernel off (%s=0): the PyTorch scan serves inference", ENABLE_VARIABLE)
        return None
    compiler = _compiler()
    if compiler is None:
        logger.info("no C compiler found ($CC, cc): the PyTorch scan serves inference on CPU")
        return None
    key = hashlib.sha256("\0".join([SOURCE.read_text(), shlex.join(compiler), *COMPILE_FLAGS, _cpu_signature()])
                         .encode()).hexdigest()[:16]
    target = _cache_dir() / f"scan_kernel-{key}.so"
    try:
        if not target.exists():
            logger.info("building the CPU scan kernel with %s into %s", compiler[0], target)
            _build(compiler, target)
        function = ctypes.CDLL(str(target)).selective_scan_fwd
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        logger.info("CPU scan kernel unavailable (%s): the PyTorch scan serves inference", err)
        return None
    function.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_long] * 7 + [ctypes.c_void_p]
    function.restype = None
    return function


def kernel_available() -> bool:
    """True when the C kernel is built and loaded (built on the first call)."""
    return _kernel() is not None


def kernel_applies(*tensors: torch.Tensor) -> bool:
    """Whether a scan over these tensors can take the kernel: CPU float32, no gradient wanted,
    and the kernel loads."""
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return kernel_available()


_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, pool); rebuilt after fork


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool
    if _pool is None or _pool[0] != os.getpid() or _pool[1] < workers:
        _pool = (os.getpid(), workers, ThreadPoolExecutor(workers, thread_name_prefix="mmsa-scan"))
    return _pool[2]


def _blocks(batch: int, dim: int, threads: int) -> list[tuple[int, int, int, int]]:
    """Disjoint (b0, b1, d0, d1) blocks covering the grid, about one per thread: whole batch
    ranges when there are enough samples, else each sample's channels cut into aligned parts."""
    if batch >= threads:
        return [(batch * i // threads, batch * (i + 1) // threads, 0, dim) for i in range(threads)]
    parts = -(-threads // batch)
    width = -(-dim // parts // CHANNEL_ALIGN) * CHANNEL_ALIGN
    return [(b, b + 1, d0, min(d0 + width, dim)) for b in range(batch) for d0 in range(0, dim, width)]


def selective_scan_inference(u, delta, A, B, C, D, z, delta_bias):
    """The scan as Mamba uses it (softplus on delta + bias, D skip, SiLU gate), time-major.

    u, delta, z: (b, L, d); A: (d, n); B, C: (b, L, n); D, delta_bias: (d,). Returns (b, L, d)
    float32. Call only where :func:`kernel_applies`.
    """
    batch, length, dim = u.shape
    dt = F.softplus(delta + delta_bias)                          # (b, L, d), contiguous
    dtu = (dt * u).contiguous()                                  # (b, L, d)
    B, C = B.contiguous(), C.contiguous()                        # (b, L, n)
    A_t = A.t().contiguous()                                     # (n, d): channels innermost
    y = torch.empty_like(dt)                                     # (b, L, d)
    pointers = [t.data_ptr() for t in (dt, dtu, A_t, B, C)]
    shape = (length, dim, A.shape[1])
    kernel = _kernel()
    threads = max(1, torch.get_num_threads()) if batch * length * dim * A.shape[1] >= PARALLEL_MIN_UPDATES else 1
    blocks = _blocks(batch, dim, threads)
    if len(blocks) == 1:
        kernel(*pointers, *shape, *blocks[0], y.data_ptr())
    else:
        pool = _executor(threads)
        for done in [pool.submit(kernel, *pointers, *shape, *block, y.data_ptr()) for block in blocks]:
            done.result()
    return y.addcmul_(u, D).mul_(F.silu(z))
