"""Small C kernels for the CPU, compiled with the machine's C compiler on first use.

Two loops over time are too fine-grained for tensor operators on a CPU (a dozen operators per
step on a few hundred floats, so the per-operator overhead is the cost) and no maintained
library offers them: the selective scan (``scan_kernel.c``: a Mamba block's inside for inference,
the scan's forward and backward for training; mamba-ssm's kernels are CUDA-only) and the
alignment model's forward-backward (``monotone_kernel.c``). Each C source
next to this module is built once per machine into a cache (``$XDG_CACHE_HOME`` or
``~/.cache``, ``mmsa_alignmamba/kernels``), in under a second, with ``$CC``, else Python's
compiler, else ``cc``. Where there is no compiler, or ``MMSA_ALIGNMAMBA_CPU_KERNEL=0`` is set,
the callers run their PyTorch code, with one log line saying so.

The kernels run their threads on PyTorch's own OpenMP runtime (see :func:`torch_openmp`); ctypes
releases the GIL during a call.
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

__all__ = ["kernel", "threads_for", "torch_openmp", "clear_cache", "ENABLE_VARIABLE"]

logger = logging.getLogger("mmsa_alignmamba")

# -ffast-math lets the compiler call glibc's vector expf / logf; it is given to the compile step
# only, because linking a shared library with it (GCC < 13) adds a constructor that switches the
# whole process to flush-to-zero floats. -march=native: the cache key includes the CPU.
COMPILE_FLAGS = ("-O3", "-ffast-math", "-march=native", "-fPIC")
ENABLE_VARIABLE = "MMSA_ALIGNMAMBA_CPU_KERNEL"


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
def torch_openmp() -> Path | None:
    """The OpenMP runtime PyTorch ships and runs its thread pool on (GNU libgomp in Linux wheels).
    Linking a kernel against this very file makes its parallel loops run on PyTorch's workers:
    with a second runtime, or a Python thread pool, PyTorch's idle workers spin on the cores
    (for milliseconds after each operator) while ours wait, which cost the scan kernel a third
    of its speed. None: no libgomp beside torch (macOS, other builds); kernels run on one thread."""
    found = sorted((Path(torch.__file__).parent / "lib").glob("libgomp*.so*"))
    return found[0] if found else None


def _link_flags() -> list[str]:
    openmp = torch_openmp()
    return [] if openmp is None else [str(openmp), f"-Wl,-rpath,{openmp.parent}"]


def _build(compiler: list[str], source: Path, target: Path) -> None:
    """Compile, then link without -ffast-math, into a temporary name, then move it into place
    (atomic: concurrent processes, e.g. Ray workers, may build at once)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    openmp = "-fopenmp" if torch_openmp() else "-fopenmp-simd"   # the latter: vector loops, one thread
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        obj, lib = Path(tmp) / f"{source.stem}.o", Path(tmp) / target.name
        for argv in ([*compiler, *COMPILE_FLAGS, openmp, "-c", str(source), "-o", str(obj)],
                     [*compiler, "-shared", str(obj), "-o", str(lib), "-lm", *_link_flags()]):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise RuntimeError(f"{shlex.join(argv)} failed: {done.stderr.strip()[-500:]}")
        os.replace(lib, target)


@functools.lru_cache(maxsize=None)
def _library(name: str) -> ctypes.CDLL | None:
    """``<name>.c`` beside this module, built (or found in the cache) and loaded; None, logged
    once, where it cannot be."""
    if os.environ.get(ENABLE_VARIABLE, "1") == "0":
        logger.info("CPU kernel %s off (%s=0): PyTorch code serves instead", name, ENABLE_VARIABLE)
        return None
    compiler = _compiler()
    if compiler is None:
        logger.info("no C compiler found ($CC, cc): PyTorch code serves instead of the CPU kernel %s", name)
        return None
    source = Path(__file__).with_name(f"{name}.c")
    key = hashlib.sha256("\0".join([source.read_text(), shlex.join(compiler), *COMPILE_FLAGS, *_link_flags(),
                                     _cpu_signature()]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"{name}-{key}.so"
    try:
        if not target.exists():
            logger.info("building the CPU kernel %s with %s into %s", name, compiler[0], target)
            _build(compiler, source, target)
        return ctypes.CDLL(str(target))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        logger.info("CPU kernel %s unavailable (%s): PyTorch code serves instead", name, err)
        return None


@functools.lru_cache(maxsize=None)
def kernel(name: str, symbol: str, argtypes: tuple, restype=ctypes.c_int):
    """The C function ``symbol`` of ``<name>.c`` as a ctypes function, or None where the
    library cannot be built or loaded (or kernels are switched off)."""
    library = _library(name)
    if library is None:
        return None
    function = getattr(library, symbol)
    function.argtypes, function.restype = list(argtypes), restype
    return function


def clear_cache() -> None:
    """Forget loaded kernels (and failures), so the next call builds or looks again (tests)."""
    kernel.cache_clear()
    _library.cache_clear()


def threads_for(units: int, work: int, minimum: int) -> int:
    """How many of PyTorch's threads a kernel call should start: at most one per ``units`` (the
    pieces the call can share out: samples, or steps), and 1 below ``minimum`` units of ``work``
    (where starting threads costs more than they save), without PyTorch's OpenMP runtime, or with
    nothing to do."""
    if torch_openmp() is None or work < minimum:
        return 1
    return max(1, min(units, torch.get_num_threads()))
