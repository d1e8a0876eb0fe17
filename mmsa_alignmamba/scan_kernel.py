"""The inside of a Mamba block for CPU inference: a small C kernel, compiled on first use.

Between ``in_proj`` and ``out_proj`` the PyTorch path runs a dozen operators over the whole
sequence (conv, SiLU, x_proj, dt_proj, softplus, the scan, gate), and the scan materialises
(L, d, n) state tensors; that memory traffic and the per-operator overhead, not arithmetic, are
what make a CPU Mamba layer slower than a Transformer layer of the same width. ``scan_kernel.c``
steps through time once per sample, keeps the step's vectors and the state in cache, and writes
only the (b, L, d) output. No maintained library ships a CPU selective scan (mamba-ssm's kernels
are CUDA-only), hence this one.

It serves forward passes that need no gradient (evaluation, ``mmsa predict``, benchmarks);
training keeps the PyTorch path and its hand-written backward. It is built with the system C
compiler (``$CC``, else Python's, else ``cc``) into a per-machine cache, once, in under a
second; where there is no compiler, or ``MMSA_ALIGNMAMBA_CPU_KERNEL=0`` is set, everything runs
on the PyTorch path, with one log line saying so. The work is shared out over PyTorch's OpenMP
threads (whole samples, or a sample's channels when there are fewer samples than threads; ctypes
releases the GIL); results do not depend on the thread count.
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
from pathlib import Path

import torch

__all__ = ["kernel_available", "kernel_applies", "mamba_inner_inference"]

logger = logging.getLogger("mmsa_alignmamba")

SOURCE = Path(__file__).with_name("scan_kernel.c")
# -ffast-math lets the compiler call glibc's vector expf; it is given to the compile step only,
# because linking a shared library with it (GCC < 13) adds a constructor that switches the whole
# process to flush-to-zero floats. -march=native: the cache key includes the CPU.
COMPILE_FLAGS = ("-O3", "-ffast-math", "-march=native", "-fPIC")
ENABLE_VARIABLE = "MMSA_ALIGNMAMBA_CPU_KERNEL"
PARALLEL_MIN_UPDATES = 1 << 16  # b * L * d * n state updates below which threads cost more than they save


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


@functools.lru_cache(maxsize=None)
def _torch_openmp() -> Path | None:
    """The OpenMP runtime PyTorch ships and runs its thread pool on (GNU libgomp in Linux wheels).
    Linking the kernel against this very file makes its parallel loop run on PyTorch's workers:
    with a second runtime, or a Python thread pool, PyTorch's idle workers spin on the cores
    (for milliseconds after each operator) while ours wait, which cost a third of the kernel's
    speed."""
    found = sorted((Path(torch.__file__).parent / "lib").glob("libgomp*.so*"))
    return found[0] if found else None


def _link_flags() -> list[str]:
    openmp = _torch_openmp()
    if openmp is None:   # no libgomp beside torch (macOS, other builds): the kernel runs on one thread
        return []
    return [str(openmp), f"-Wl,-rpath,{openmp.parent}"]


def _build(compiler: list[str], target: Path) -> None:
    """Compile, then link without -ffast-math, into a temporary name, then move it into place
    (atomic: concurrent processes, e.g. Ray workers, may build at once)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    openmp = "-fopenmp" if _torch_openmp() else "-fopenmp-simd"   # the latter: vector loops, one thread
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        obj, lib = Path(tmp) / "scan_kernel.o", Path(tmp) / target.name
        for argv in ([*compiler, *COMPILE_FLAGS, openmp, "-c", str(SOURCE), "-o", str(obj)],
                     [*compiler, "-shared", str(obj), "-o", str(lib), "-lm", *_link_flags()]):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise RuntimeError(f"{shlex.join(argv)} failed: {done.stderr.strip()[-500:]}")
        os.replace(lib, target)


@functools.lru_cache(maxsize=None)
def _kernel():
    """The compiled ``mamba_inner_fwd`` as a ctypes function, or None (logged once)."""
    if os.environ.get(ENABLE_VARIABLE, "1") == "0":
        logger.info("CPU scan kernel off (%s=0): the PyTorch scan serves inference", ENABLE_VARIABLE)
        return None
    compiler = _compiler()
    if compiler is None:
        logger.info("no C compiler found ($CC, cc): the PyTorch scan serves inference on CPU")
        return None
    key = hashlib.sha256("\0".join([SOURCE.read_text(), shlex.join(compiler), *COMPILE_FLAGS, *_link_flags(),
                                     _cpu_signature()]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"scan_kernel-{key}.so"
    try:
        if not target.exists():
            logger.info("building the CPU scan kernel with %s into %s", compiler[0], target)
            _build(compiler, target)
        function = ctypes.CDLL(str(target)).mamba_inner_fwd
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        logger.info("CPU scan kernel unavailable (%s): the PyTorch scan serves inference", err)
        return None
    function.argtypes = [ctypes.c_void_p] * 8 + [ctypes.c_long] * 6 + [ctypes.c_int, ctypes.c_void_p]
    function.restype = ctypes.c_int
    return function


def kernel_available() -> bool:
    """True when the C kernel is built and loaded (built on the first call)."""
    return _kernel() is not None


def kernel_applies(*tensors: torch.Tensor) -> bool:
    """Whether a scan over these tensors can take the kernel: no gradient wanted (checked first:
    it is what rules the kernel out on every training step), CPU float32, and the kernel loads."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    return kernel_available()


def mamba_inner_inference(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A, D):
    """``Mamba.forward`` between in_proj and out_proj: xz (b, L, 2 d) -> y (b, L, d), float32.

    conv_weight (d, 1, K), conv_bias (d,) or None, x_proj_weight (R + 2N, d), dt_proj_weight
    (d, R), dt_proj_bias and D (d,), A (d, N) (already -exp(A_log)). Call only where
    :func:`kernel_applies`.
    """
    batch, length, dim = xz.shape[0], xz.shape[1], xz.shape[2] // 2
    width, rank, state = conv_weight.shape[-1], dt_proj_weight.shape[1], A.shape[1]
    operands = [xz.contiguous(),
                conv_weight.reshape(dim, width).t().contiguous(),      # (K, d)
                None if conv_bias is None else conv_bias.contiguous(),
                x_proj_weight.contiguous(),                            # (R + 2N, d)
                dt_proj_weight.t().contiguous(),                       # (R, d)
                dt_proj_bias.contiguous(), A.t().contiguous(), D.contiguous()]   # (d,), (N, d), (d,)
    pointers = [None if t is None else t.data_ptr() for t in operands]
    y = xz.new_empty(batch, length, dim)
    sizes = (length, dim, width, rank, state, batch)
    threads = max(1, torch.get_num_threads())
    if _torch_openmp() is None or batch * length * dim * state < PARALLEL_MIN_UPDATES:
        threads = 1
    failed = _kernel()(*pointers, *sizes, threads, y.data_ptr())
    if failed:
        raise MemoryError("the CPU scan kernel could not allocate its workspace")
    return y
