"""The inside of a Mamba block for CPU inference: ``scan_kernel.c``, compiled on first use (native.py).

Between ``in_proj`` and ``out_proj`` the PyTorch path runs a dozen operators over the whole
sequence (conv, SiLU, x_proj, dt_proj, softplus, the scan, gate), and the scan materialises
(L, d, n) state tensors; that memory traffic and the per-operator overhead, not arithmetic, are
what make a CPU Mamba layer slower than a Transformer layer of the same width. ``scan_kernel.c``
steps through time once per sample, keeps the step's vectors and the state in cache, and writes
only the (b, L, d) output.

It serves forward passes that need no gradient (evaluation, ``mmsa predict``, benchmarks);
training keeps the PyTorch path and its hand-written backward. The samples are shared out over
PyTorch's OpenMP threads, whole, so results do not depend on the thread count.
"""
from __future__ import annotations

import ctypes

import torch

from . import native

__all__ = ["kernel_available", "kernel_applies", "mamba_inner_inference"]

PARALLEL_MIN_UPDATES = 1 << 16  # b * L * d * n state updates below which threads cost more than they save
_ARGTYPES = (ctypes.c_void_p,) * 8 + (ctypes.c_long,) * 6 + (ctypes.c_int, ctypes.c_void_p)


def _kernel():
    """The compiled ``mamba_inner_fwd``, or None."""
    return native.kernel("scan_kernel", "mamba_inner_fwd", _ARGTYPES)


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
    threads = min(batch, native.threads_for(batch * length * dim * state, PARALLEL_MIN_UPDATES))  # whole samples
    if _kernel()(*pointers, *sizes, threads, y.data_ptr()):
        raise MemoryError("the CPU scan kernel could not allocate its workspace")
    return y
