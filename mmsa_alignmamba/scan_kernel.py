"""The selective scan on CPU in C (``scan_kernel.c``, compiled on first use by native.py): the
inside of a Mamba block for inference, and the scan's forward and backward for training.

Between ``in_proj`` and ``out_proj`` the PyTorch path runs a dozen operators over the whole
sequence (conv, SiLU, x_proj, dt_proj, softplus, the scan, gate), and the scan materialises
(L, d, n) state tensors; that memory traffic and the per-operator overhead, not arithmetic, are
what make a CPU Mamba layer slower than a Transformer layer of the same width. ``scan_kernel.c``
steps through time once per sample, keeps the step's vectors and the state in cache, and writes
only the (b, L, d) output. It serves forward passes that need no gradient (evaluation,
``mmsa predict``, benchmarks). In both kernels the samples are shared out over PyTorch's OpenMP
threads, whole; at inference a batch smaller than the thread pool (one sample at serving time)
shares out its steps, then its channels, instead. Results do not depend on the thread count.

For training, :func:`selective_scan_training` is :func:`mamba.selective_scan` (the scan with its
gradient; conv and projections stay PyTorch operators around it) as two C loops over time: the
forward keeps the state every ``CHECKPOINT_STEPS`` steps, the backward rebuilds each stretch of
states from its checkpoint and runs the adjoint recurrence back through it. The chunked PyTorch
scan writes (b, t, c, d, n) tensors several times a step; this keeps a state's worth in cache.
"""
from __future__ import annotations

import ctypes

import torch

from . import native

__all__ = ["kernel_available", "kernel_applies", "mamba_inner_inference", "training_scan_applies",
           "selective_scan_training"]

PARALLEL_MIN_UPDATES = 1 << 16  # b * L * d * n state updates below which threads cost more than they save
CHECKPOINT_STEPS = 16           # training: the state is kept every this many steps (1/16 of the states)
_ARGTYPES = (ctypes.c_void_p,) * 8 + (ctypes.c_long,) * 6 + (ctypes.c_int, ctypes.c_void_p)
# the training scan's common head: u, delta, A_t, B, C, D, z, bias; softplus; batch, L, dim, N, check; threads
_SCAN_HEAD = (ctypes.c_void_p,) * 8 + (ctypes.c_int,) + (ctypes.c_long,) * 5 + (ctypes.c_int,)


def _kernel():
    """The compiled ``mamba_inner_fwd``, or None."""
    return native.kernel("scan_kernel", "mamba_inner_fwd", _ARGTYPES)


def kernel_available() -> bool:
    """True when the C kernel is built and loaded (built on the first call)."""
    return _kernel() is not None


def kernel_applies(*tensors: torch.Tensor) -> bool:
    """Whether a scan over these tensors can take the kernel: no gradient wanted (checked first:
    it is what rules the kernel out on every training step), CPU float32, and the kernel loads.
    None (an absent bias) is skipped."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return False
    return _cpu_float32(tensors) and kernel_available()


def _cpu_float32(tensors) -> bool:
    """All of ``tensors`` (None ones skipped) are CPU float32, what the kernels take."""
    return all(t is None or (t.device.type == "cpu" and t.dtype == torch.float32) for t in tensors)


def mamba_inner_inference(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D):
    """``Mamba.forward`` between in_proj and out_proj: xz (b, L, 2 d) -> y (b, L, d), float32.

    The block's parameters as it holds them: conv_weight (d, 1, K), conv_bias (d,) or None,
    x_proj_weight (R + 2N, d), dt_proj_weight (d, R), dt_proj_bias and D (d,), A_log (d, N)
    (the kernel takes A = −exp(A_log) itself). Call only where :func:`kernel_applies`.
    """
    batch, length, dim = xz.shape[0], xz.shape[1], xz.shape[2] // 2
    width, rank, state = conv_weight.shape[-1], dt_proj_weight.shape[1], A_log.shape[1]
    # held until the call returns: a non-contiguous input's copy must outlive its pointer
    # (parameters and in_proj's output are contiguous already: no copy)
    operands = [None if t is None else t.contiguous()
                for t in (xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D)]
    pointers = [None if t is None else t.data_ptr() for t in operands]
    y = xz.new_empty(batch, length, dim)
    sizes = (length, dim, width, rank, state, batch)
    # fewer samples than threads: the kernel shares out steps, then channels (by_phase in the C)
    threads = native.threads_for(batch * length, batch * length * dim * state, PARALLEL_MIN_UPDATES)
    if _kernel()(*pointers, *sizes, threads, y.data_ptr()):
        raise MemoryError("the CPU scan kernel could not allocate its workspace")
    return y


def _training_kernels():
    """(selective_scan_fwd, selective_scan_bwd), or None."""
    forward = native.kernel("scan_kernel", "selective_scan_fwd", _SCAN_HEAD + (ctypes.c_void_p,) * 3)
    backward = native.kernel("scan_kernel", "selective_scan_bwd", _SCAN_HEAD + (ctypes.c_void_p,) * 11)
    return None if forward is None or backward is None else (forward, backward)


def training_scan_applies(*tensors) -> bool:
    """Whether :func:`selective_scan_training` can take these tensors (None ones are skipped):
    CPU float32, and the kernel loads."""
    return _cpu_float32(tensors) and _training_kernels() is not None


def _time_major(x):
    """(b, k, L) -> (b, L, k) contiguous, the kernel's layout; None stays None."""
    return None if x is None else x.transpose(1, 2).contiguous()


def _pointer(x):
    return None if x is None else x.data_ptr()


class _TrainingScan(torch.autograd.Function):
    """mamba.selective_scan on the C kernels: same arguments, same result, same gradients."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        (batch, dim, length), state = u.shape, A.shape[1]
        ins = [_time_major(u), _time_major(delta), A.t().contiguous(), _time_major(B), _time_major(C),
               None if D is None else D.contiguous(), _time_major(z),
               None if delta_bias is None else delta_bias.contiguous()]
        y, out = ins[0].new_empty(batch, length, dim), ins[0].new_empty(batch, length, dim)
        checkpoints = ins[0].new_empty(batch, -(-length // CHECKPOINT_STEPS), state, dim)
        head = ([_pointer(t) for t in ins] + [int(bool(delta_softplus)), batch, length, dim, state, CHECKPOINT_STEPS,
                native.threads_for(batch, batch * length * dim * state, PARALLEL_MIN_UPDATES)])
        if _training_kernels()[0](*head, y.data_ptr(), out.data_ptr(), checkpoints.data_ptr()):
            raise MemoryError("the CPU scan kernel could not allocate its workspace")
        ctx.head, ctx.has = head, (D is not None, z is not None, delta_bias is not None)
        ctx.save_for_backward(*(t for t in ins if t is not None), y, checkpoints)
        return out.transpose(1, 2)                                            # (b, d, L)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        saved = list(ctx.saved_tensors)
        y, checkpoints = saved[-2:]
        has_d, has_z, has_bias = ctx.has
        u, delta, A_t, B, C = saved[:5]
        batch, length, dim = u.shape
        state = A_t.shape[0]
        dout = _time_major(dout)
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dB, dC = torch.empty_like(B), torch.empty_like(C)
        dA = u.new_empty(batch, state, dim)                                  # per sample, summed below
        dD = u.new_empty(batch, dim) if has_d else None
        dz = torch.empty_like(u) if has_z else None
        dbias = u.new_empty(batch, dim) if has_bias else None
        grads = [du, ddelta, dA, dB, dC, dD, dz, dbias]
        if _training_kernels()[1](*ctx.head, y.data_ptr(), checkpoints.data_ptr(), dout.data_ptr(),
                                  *(_pointer(t) for t in grads)):
            raise MemoryError("the CPU scan kernel could not allocate its workspace")
        as_input = lambda g: None if g is None else g.transpose(1, 2)         # noqa: E731  (b, L, k) -> (b, k, L)
        return (as_input(du), as_input(ddelta), dA.sum(0).t(), as_input(dB), as_input(dC),
                None if dD is None else dD.sum(0), as_input(dz), None if dbias is None else dbias.sum(0), None)


def selective_scan_training(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """:func:`mamba.selective_scan` (same shapes: u, delta, z (b, d, L); A (d, n); B, C (b, n, L);
    D, delta_bias (d,)) on the C kernels, with gradients. Call only where
    :func:`training_scan_applies`."""
    return _TrainingScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
