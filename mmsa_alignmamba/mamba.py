"""Mamba block with a CPU selective scan and the mamba-ssm CUDA kernels side by side.

Mirrors ``mamba_ssm.modules.mamba_simple.Mamba`` (same constructor, same parameter names and
shapes, same initialisation), so state dicts load strictly in both directions.  The backend is
chosen per forward call from the input's device:

* CUDA input and an importable mamba-ssm: its fused ``mamba_inner_fn`` (conv1d + x_proj +
  dt_proj + selective scan + gate + out_proj in one kernel chain) or ``selective_scan_fn``;
* CPU inference (no gradient wanted): a compiled C kernel for everything between in_proj and
  out_proj, one time step at a time with the state in cache (:mod:`scan_kernel`), where it
  builds;
* anything else (training): a causal depthwise ``F.conv1d``, SiLU and :func:`selective_scan`,
  which runs the scan's forward and backward as C loops for CPU float32 (:mod:`scan_kernel`),
  else the pure-PyTorch chunked scan below with its hand-written backward.

mamba-ssm is never imported at module import time: every ``mamba_ssm`` import fails without the
compiled ``selective_scan_cuda`` extension, so it is probed once, lazily, and any failure means
"not available".

Shape letters: b = batch, d = channels (``dim`` / ``d_inner``), l = sequence length, n = state
size (``d_state``); for the chunked scan l is split into c chunks of t steps.
"""

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import scan_kernel
from .tracing import traceable

__all__ = ["Mamba", "selective_scan", "selective_scan_steps", "mamba_ssm_available"]


@functools.lru_cache(maxsize=None)
def _mamba_ssm_ops():
    """(mamba_inner_fn, selective_scan_fn, causal_conv1d_fn or None), or None when unusable."""
    try:
        import selective_scan_cuda  # the compiled kernels; a bare stand-in module lacks .fwd

        selective_scan_cuda.fwd
        from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn, selective_scan_fn
    except Exception:  # not installed, CPU-only build, missing triton, broken install, ...
        return None
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception:
        causal_conv1d_fn = None
    return mamba_inner_fn, selective_scan_fn, causal_conv1d_fn


def mamba_ssm_available():
    """True when mamba-ssm and its compiled CUDA selective scan import (probed once)."""
    return _mamba_ssm_ops() is not None


# --------------------------------------------------------------------------------------------
# CPU selective scan
#
# Recurrence, per (b, d, n):  h_l = exp(dt_l * A) * h_{l-1} + dt_l * u_l * B_l,
#                             y_l = sum_n C_l * h_l + D * u_l,   out = y * silu(z).
#
# A Python loop over l runs L tiny (b, d, n) steps; a parallel scan over l stores several
# (b, l, d, n) tensors.  Instead l is cut into c chunks of t steps, laid out step-major as
# (t, b, c, d, n): each step slice is one contiguous block and each (d, n) block is a matrix
# for bmm.  A scan then takes
#   1. a local scan: t vectorised steps, each over all c chunks at once, from zero;
#   2. a carry:      c small steps pass the true state across chunk boundaries
#                    (start_k = exp(A * sum of chunk k-1's dt) start_{k-1} + local end_{k-1});
#   3. a rescan:     phase 1 again, seeded with the true start states.
# Phase 3 costs one multiply-add pass where the closed-form fix-up h += exp(A cumsum dt) start
# would cost an extra exp pass, and nothing is divided in log space, so large dt * A cannot
# overflow.  Work runs tile by tile over (batch, chunks), chunks in time order, so that a
# tile's few (t, b, c, d, n) buffers stay in cache, are read as contiguous runs of whole
# chunks, and are built once: phases 1-3 all run inside a tile, its carry starting from the
# state the previous tile handed on.  (Tiling over d instead reads every row in strided pieces,
# and longer L means narrower pieces: time grew ~2.7x per doubling of L instead of ~2x.)
# Autograd sees one Function that saves its inputs plus the chunk start states (b, c, d, n),
# 1/t of one state tensor, so backward rebuilds h with a single scan (phase 3) and runs the
# adjoint recurrence  g_l = C_l * dy_l + exp(dt_{l+1} A) * g_{l+1}  with phases 1-3 reversed,
# tiles in reverse time order.
# Contractions over d or n are bmm calls, which read each big buffer once.
# --------------------------------------------------------------------------------------------

_CHUNK = 32  # max steps per chunk; t ~ sqrt(L) balances the step loop and the carry loop
_TILE_ELEMS = 1 << 21  # elements per (t, b, c, d, n) tile buffer: 8 MB in float32


def _chunking(L):
    """Chunk length t and count c with t * c >= L."""
    t = max(1, min(_CHUNK, math.ceil(math.sqrt(L))))
    return t, math.ceil(L / t)


def _to_chunks(x, t, c, dtype):
    """(b, k, L) -> (t, b, c, k) contiguous in `dtype`, zero-padded to t * c steps.

    Padded steps get dt = 0, i.e. exp(dt A) = 1 and no input: they leave the state alone.
    """
    b, k, L = x.shape
    out = x.new_empty((t, b, c, k), dtype=dtype)
    view = out.permute(1, 3, 2, 0)  # (b, k, c, t)
    full, rem = divmod(L, t)
    view[:, :, :full].copy_(x[..., : full * t].unflatten(-1, (full, t)))
    if rem:
        view[:, :, full, :rem].copy_(x[..., full * t:])
        view[:, :, full, rem:].zero_()
    return out


def _from_chunks(x, L):
    """(t, b, c, k) -> (b, k, L)."""
    t, b, c, k = x.shape
    return x.permute(1, 3, 2, 0).reshape(b, k, c * t)[..., :L]


def _tiles(batch, dim, t, c, n):
    """(batch slice, chunk slice) pairs, each slice within range, whose (t, b, c, d, n) buffers
    hold ~_TILE_ELEMS elements; for each batch slice its chunk slices come in time order."""
    per_chunk = t * dim * n
    if per_chunk * c <= _TILE_ELEMS:
        bt, cc = max(1, _TILE_ELEMS // (per_chunk * c)), c
    else:
        bt, cc = 1, max(1, _TILE_ELEMS // per_chunk)
    return [(slice(i, min(i + bt, batch)), slice(j, min(j + cc, c)))
            for i in range(0, batch, bt) for j in range(0, c, cc)]


def _workspace(like, count, tiles, t, dim, n):
    """`count` reusable tile buffers: a function that views buffer i as the tile's
    (t, b', c', d, n). Fresh multi-MB tensors per tile would be returned to the OS on free and
    page-faulted back in by the next tile, which cost as much as the scan itself."""
    most = max((bs.stop - bs.start) * (cs.stop - cs.start) for bs, cs in tiles) * t * dim * n
    flat = like.new_empty(count, most)

    def view(i, bs, cs):
        shape = (t, bs.stop - bs.start, cs.stop - cs.start, dim, n)
        return flat[i, :math.prod(shape)].view(shape)

    return view


def _tile_terms_(dt, dtu, Bc, Af, bs, cs, a, bu):
    """Fills one tile's decay a = exp(dt A) and input term bu = dt u B, both (t, b', c', d, n),
    in place; returns its dt (t, b', c', d) and each chunk's total decay exp(A sum dt)
    (b', c', d, n)."""
    dts = dt[:, bs, cs]
    torch.mul(dts.unsqueeze(-1), Af, out=a).exp_()
    torch.mul(dtu[:, bs, cs].unsqueeze(-1), Bc[:, bs, cs].unsqueeze(3), out=bu)
    return dts, torch.mul(dts.sum(0).unsqueeze(-1), Af).exp_()


def _chunked_inputs(u, delta, B, C, delta_bias, delta_softplus, t, c, dtype):
    """Returns delta + delta_bias (b, d, L); dt = softplus of it if asked, u, dt * u as
    (t, b, c, d); B, C as (t, b, c, n)."""
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    dt = _to_chunks(F.softplus(delta) if delta_softplus else delta, t, c, dtype)
    uc = _to_chunks(u, t, c, dtype)
    return (delta, dt, uc, dt * uc, _to_chunks(B, t, c, dtype), _to_chunks(C, t, c, dtype))


def _scan_(x, a, start=None):
    """In place, x[i] += a[i] * x[i - 1] along dim 0 (x[0] += a[0] * start)."""
    if start is not None:
        x[0].addcmul_(a[0], start)
    for i in range(1, x.shape[0]):
        x[i].addcmul_(a[i], x[i - 1])
    return x


def _rscan_(x, a, end=None):
    """In place, the reverse: x[i] += a[i + 1] * x[i + 1] (x[-1] += end)."""
    if end is not None:
        x[-1] += end
    for i in range(x.shape[0] - 2, -1, -1):
        x[i].addcmul_(a[i + 1], x[i + 1])
    return x


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        (batch, dim, L), n = u.shape, A.shape[1]
        dtype = torch.promote_types(u.dtype, torch.float32)  # float32, or float64 if given
        t, c = _chunking(L)
        _, dt, _, dtu, Bc, Cc = _chunked_inputs(u, delta, B, C, delta_bias, delta_softplus,
                                                t, c, dtype)
        Af = A.to(dtype)
        y = torch.empty_like(dt)  # (t, b, c, d)
        starts = dt.new_empty(batch, c, dim, n)  # true state before each chunk
        tiles = _tiles(batch, dim, t, c, n)
        buffer = _workspace(dt, 3, tiles, t, dim, n)
        for bs, cs in tiles:
            st = starts[bs, cs]  # (b', c', d, n)
            a, bu, local = (buffer(i, bs, cs) for i in range(3))  # (t, b', c', d, n)
            dts, decay = _tile_terms_(dt, dtu, Bc, Af, bs, cs, a, bu)
            ends = _scan_(local.copy_(bu), a)[-1]  # phase 1: each chunk's end state from zero
            if cs.start == 0:
                st[:, 0].zero_()
            else:
                st[:, 0].copy_(handoff)
            for k in range(1, st.shape[1]):  # phase 2
                torch.addcmul(ends[:, k - 1], decay[:, k - 1], st[:, k - 1], out=st[:, k])
            handoff = torch.addcmul(ends[:, -1], decay[:, -1], st[:, -1])  # the next tile's start
            h = _scan_(bu, a, st)  # phase 3
            # y = sum_n h C: (tbc, d, n) @ (tbc, n, 1)
            y[:, bs, cs] = torch.bmm(h.view(-1, dim, n), Cc[:, bs, cs].reshape(-1, n, 1)).view_as(dts)
        y = _from_chunks(y, L)  # (b, d, L)
        if D is not None:
            y.addcmul_(u, D.to(dtype)[:, None])
        out = y if z is None else y * F.silu(z.to(dtype))
        ctx.delta_softplus = delta_softplus
        # y is kept only for dz: output-sized, not a per-step state
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, starts,
                              y if z is not None else None)
        return out.to(u.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        u, delta_in, A, B, C, D, z, delta_bias, starts, y = ctx.saved_tensors
        (batch, dim, L), n = u.shape, A.shape[1]
        dtype = torch.promote_types(u.dtype, torch.float32)
        t, c = _chunking(L)
        delta, dt, uc, dtu, Bc, Cc = _chunked_inputs(u, delta_in, B, C, delta_bias,
                                                     ctx.delta_softplus, t, c, dtype)
        Af, dout = A.to(dtype), dout.to(dtype)

        dz = None
        if z is not None:
            zf = z.to(dtype)
            sz = torch.sigmoid(zf)
            dz = (dout * y * sz * (1 + zf * (1 - sz))).to(z.dtype)  # silu' = s (1 + z (1 - s))
            dout = dout * zf * sz  # now d out / d y
        dD = (dout * u).sum((0, 2)).to(D.dtype) if D is not None else None
        dy = _to_chunks(dout, t, c, dtype)  # (t, b, c, d)

        ddtu = torch.empty_like(dt)  # d out / d (dt u), (t, b, c, d)
        ddt = torch.empty_like(dt)  # d out / d dt through exp(dt A)
        dBc, dCc = torch.empty_like(Bc), torch.empty_like(Cc)  # (t, b, c, n), summed over d
        dA = torch.zeros_like(Af)
        tiles = _tiles(batch, dim, t, c, n)
        buffer = _workspace(dt, 4, tiles, t, dim, n)
        for bs, cs in reversed(tiles):  # latest chunks first
            start = starts[bs, cs]
            a, h, dyC, g = (buffer(i, bs, cs) for i in range(4))  # (t, b', c', d, n)
            dts, decay = _tile_terms_(dt, dtu, Bc, Af, bs, cs, a, h)
            _scan_(h, a, start)
            # adjoint g = d out / d h
            torch.mul(dy[:, bs, cs].unsqueeze(-1), Cc[:, bs, cs].unsqueeze(3), out=dyC)
            _rscan_(g.copy_(dyC), a)  # phase 1
            # phase 2: carry[:, k] = gradient reaching chunk k's last step from chunk k + 1,
            # i.e. a[0] g_true[0] of chunk k + 1 = a[0] g_local[0] + (its total decay) carry;
            # the last chunk's comes from the next tile (zero at the sequence end)
            head = a[0] * g[0]  # (b', c', d, n)
            carry = torch.empty_like(head)
            if cs.stop == c:
                carry[:, -1].zero_()
            else:
                carry[:, -1].copy_(handoff)
            for k in range(carry.shape[1] - 1, 0, -1):
                torch.addcmul(head[:, k], decay[:, k], carry[:, k], out=carry[:, k - 1])
            handoff = torch.addcmul(head[:, 0], decay[:, 0], carry[:, 0])  # the previous tile's
            _rscan_(g.copy_(dyC), a, carry)  # phase 3

            gm, hm = g.view(-1, dim, n), h.view(-1, dim, n)  # (tbc, d, n)
            ddtu[:, bs, cs] = torch.bmm(gm, Bc[:, bs, cs].reshape(-1, n, 1)).view_as(dts)
            dBc[:, bs, cs] = torch.bmm(dtu[:, bs, cs].reshape(-1, 1, dim), gm).view_as(Bc[:, bs, cs])
            dCc[:, bs, cs] = torch.bmm(dy[:, bs, cs].reshape(-1, 1, dim), hm).view_as(Cc[:, bs, cs])
            # q = d out / d (dt A) = g a h_prev, written d-major (d, tbc, n) for the bmms
            a[1:].mul_(h[:-1])
            a[0].mul_(start)
            q = dyC.view(dim, -1, n)  # dyC's buffer is free again
            torch.mul(a.view_as(gm), gm, out=q.transpose(0, 1))
            ddt[:, bs, cs] = torch.bmm(q, Af.unsqueeze(-1)).view(dim, -1).t().view_as(dts)
            dA += torch.bmm(dts.reshape(-1, dim).t().contiguous().unsqueeze(1), q)[:, 0]

        ddt = _from_chunks(ddt.addcmul_(ddtu, uc), L)
        du = _from_chunks(ddtu.mul_(dt), L)
        if D is not None:
            du.addcmul_(dout, D.to(dtype)[:, None])
        if ctx.delta_softplus:
            ddt.mul_(torch.sigmoid(delta))  # softplus' = sigmoid
        ddelta_bias = ddt.sum((0, 2)).to(delta_bias.dtype) if delta_bias is not None else None
        return (du.to(u.dtype), ddt.to(delta_in.dtype), dA.to(A.dtype),
                _from_chunks(dBc, L).to(B.dtype), _from_chunks(dCc, L).to(C.dtype),
                dD, dz, ddelta_bias, None)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, backend=None):
    """Drop-in for ``mamba_ssm.ops.selective_scan_interface.selective_scan_ref`` (real A,
    input-dependent B and C), fast on CPU.

    u, delta: (b, d, L); A: (d, n); B, C: (b, n, L); D, delta_bias: (d,); z: (b, d, L).
    Returns (b, d, L) in u's dtype; computes in float32 (float64 for float64 input).
    ``backend``: None takes the C kernels (:func:`scan_kernel.selective_scan_training`) for CPU
    float32 tensors where they build, else the chunked PyTorch scan below; "torch" forces the latter.
    """
    if A.is_complex() or B.dim() != 3 or C.dim() != 3:
        raise NotImplementedError("selective_scan supports real A and (b, n, L) B, C only")
    if backend not in (None, "torch"):
        raise ValueError(f"backend must be None or 'torch', got {backend!r}")
    if backend is None and scan_kernel.training_scan_applies(u, delta, A, B, C, D, z, delta_bias):
        return scan_kernel.selective_scan_training(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def selective_scan_steps(u, delta, A, B, C, D, z, delta_bias):
    """The reference path: the recurrence one step at a time, as the model uses it (softplus on
    delta, D skip, SiLU gate). Shapes as :func:`selective_scan`. Slow in eager PyTorch, but plain
    enough for TorchScript: the ONNX export runs it as a Loop over steps (tracing.py)."""
    dt = F.softplus(delta.float() + delta_bias.float()[:, None])                      # (b, d, L)
    decay = torch.exp(dt.unsqueeze(-1) * A.float()[:, None, :])                       # (b, d, L, n)
    drive = (dt * u.float()).unsqueeze(-1) * B.float().transpose(1, 2).unsqueeze(1)   # (b, d, L, n)
    h = torch.zeros_like(drive[:, :, 0])                                              # (b, d, n)
    states = []
    for step in range(u.shape[2]):
        h = decay[:, :, step] * h + drive[:, :, step]
        states.append(h)
    y = (torch.stack(states, 2) * C.float().transpose(1, 2).unsqueeze(1)).sum(-1)     # (b, d, L)
    y = y + u.float() * D.float()[:, None]
    return (y * F.silu(z.float())).to(u.dtype)


class Mamba(nn.Module):
    """``mamba_ssm.modules.mamba_simple.Mamba``, same arguments, parameters and init.

    forward(hidden_states: (b, L, d_model), backend=None) -> (b, L, d_model).  ``backend``:
    None picks mamba-ssm's fused kernels for CUDA input when they import, the CPU scan kernel
    for CPU inference when it builds, else the PyTorch path; "torch" forces the PyTorch scan
    (any device); "cpu_kernel" and "mamba_ssm" require theirs.
    ``use_fast_path`` selects mamba-ssm's fully fused ``mamba_inner_fn`` (needs causal-conv1d)
    over its unfused ``selective_scan_fn`` path, as in mamba-ssm.
    """

    def __init__(
        self,
        d_model,
        d_state=16,
        d_conv=4,
        expand=2,
        dt_rank="auto",
        dt_min=0.001,
        dt_max=0.1,
        dt_init="random",
        dt_scale=1.0,
        dt_init_floor=1e-4,
        conv_bias=True,
        bias=False,
        use_fast_path=True,
        layer_idx=None,
        device=None,
        dtype=None,
    ):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(self.expand * self.d_model)
        self.dt_rank = math.ceil(self.d_model / 16) if dt_rank == "auto" else dt_rank
        self.use_fast_path = use_fast_path
        self.layer_idx = layer_idx

        self.in_proj = nn.Linear(self.d_model, self.d_inner * 2, bias=bias, **factory_kwargs)
        self.conv1d = nn.Conv1d(
            in_channels=self.d_inner,
            out_channels=self.d_inner,
            bias=conv_bias,
            kernel_size=d_conv,
            groups=self.d_inner,
            padding=d_conv - 1,
            **factory_kwargs,
        )
        self.activation = "silu"
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(
            self.d_inner, self.dt_rank + self.d_state * 2, bias=False, **factory_kwargs
        )
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory_kwargs)

        # dt projection init that preserves variance
        dt_init_std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        else:
            raise NotImplementedError
        # dt bias such that softplus(dt_bias) is log-uniform in [dt_min, dt_max]
        dt = torch.exp(
            torch.rand(self.d_inner, **factory_kwargs) * (math.log(dt_max) - math.log(dt_min))
            + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        inv_dt = dt + torch.log(-torch.expm1(-dt))  # inverse of softplus
        with torch.no_grad():
            self.dt_proj.bias.copy_(inv_dt)
        self.dt_proj.bias._no_reinit = True

        # S4D real initialisation: A = -(1..d_state) per channel, kept as log in fp32
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=device)
        self.A_log = nn.Parameter(torch.log(A).repeat(self.d_inner, 1).contiguous())
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))  # "skip", fp32
        self.D._no_weight_decay = True

        self.out_proj = nn.Linear(self.d_inner, self.d_model, bias=bias, **factory_kwargs)

    def forward(self, hidden_states, backend=None):
        if backend not in (None, "torch", "cpu_kernel", "mamba_ssm"):
            raise ValueError(f"backend must be None, 'torch', 'cpu_kernel' or 'mamba_ssm', got {backend!r}")
        ops = _mamba_ssm_ops() if backend in (None, "mamba_ssm") and hidden_states.is_cuda else None
        if backend == "mamba_ssm" and ops is None:
            raise RuntimeError("backend='mamba_ssm' needs CUDA input and an importable mamba-ssm")
        if ops is not None:
            return self._forward_mamba_ssm(hidden_states, *ops)
        return self._forward_torch(hidden_states, kernel=backend)

    def _forward_torch(self, hidden_states, kernel=None):
        """in_proj, then for CPU inference the C kernel (:mod:`scan_kernel`: conv, SiLU,
        projections, scan and gate, step by step), where it builds; otherwise causal depthwise
        conv via F.conv1d, SiLU and :func:`selective_scan`; then out_proj.
        ``kernel``: None picks; "torch" never uses the kernel; "cpu_kernel" requires it."""
        seqlen = hidden_states.shape[1]
        xz = self.in_proj(hidden_states)  # (b, L, 2 d_inner)
        weights = (self.conv1d.weight, self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight,
                   self.dt_proj.bias, self.A_log, self.D)
        if kernel != "torch" and not torch.jit.is_tracing() and scan_kernel.kernel_applies(xz, *weights):
            return self.out_proj(scan_kernel.mamba_inner_inference(xz, *weights))  # (b, L, d_inner) in between
        A = -torch.exp(self.A_log.float())  # (d_inner, d_state)
        if kernel == "cpu_kernel":
            raise RuntimeError("backend='cpu_kernel' needs float32 CPU input, no gradient, and a built kernel "
                               "(see the log for why it is not)")
        x, z = xz.chunk(2, dim=-1)
        # conv1d pads d_conv - 1 on both sides; keeping the first L outputs makes it causal
        x = self.act(self.conv1d(x.transpose(1, 2))[..., :seqlen])  # (b, d_inner, L)
        x_dbl = self.x_proj(x.transpose(1, 2))  # (b, L, dt_rank + 2 d_state)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # (b, L, d_inner); bias goes in as delta_bias
        # (b, L, k) tensors go in as (b, k, L) views: the scan's chunking reads them row-wise
        if torch.jit.is_tracing():  # the export path: the same recurrence as a loop that stays dynamic
            y = traceable(selective_scan_steps)(x, dt.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2),
                                                self.D, z.transpose(1, 2), self.dt_proj.bias)
        else:
            y = selective_scan(x, dt.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), self.D.float(),
                               z=z.transpose(1, 2), delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
                               backend="torch" if kernel == "torch" else None)
        return self.out_proj(y.transpose(1, 2))

    def _forward_mamba_ssm(self, hidden_states, mamba_inner_fn, selective_scan_fn,
                           causal_conv1d_fn):
        """mamba_simple.Mamba.forward (no inference cache) on mamba-ssm's CUDA kernels."""
        batch, seqlen, _ = hidden_states.shape
        # in_proj as (d, b*L) @ ... -> (b, 2 d_inner, L), the layout the kernels expect
        xz = (self.in_proj.weight @ hidden_states.reshape(batch * seqlen, -1).t())
        xz = xz.view(-1, batch, seqlen).permute(1, 0, 2)
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(dtype=xz.dtype)[:, None]
        A = -torch.exp(self.A_log.float())
        if self.use_fast_path and causal_conv1d_fn is not None:
            return mamba_inner_fn(
                xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight,
                self.dt_proj.weight, self.out_proj.weight, self.out_proj.bias, A,
                None, None, self.D.float(),
                delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
            )
        x, z = xz.chunk(2, dim=1)
        if causal_conv1d_fn is None:
            x = self.act(self.conv1d(x)[..., :seqlen])
        else:
            x = causal_conv1d_fn(x=x, weight=self.conv1d.weight.squeeze(1),
                                 bias=self.conv1d.bias, activation=self.activation)
        x_dbl = self.x_proj(x.transpose(1, 2).reshape(batch * seqlen, -1))  # (b L, *)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (self.dt_proj.weight @ dt.t()).view(-1, batch, seqlen).permute(1, 0, 2)
        B = B.view(batch, seqlen, -1).transpose(1, 2).contiguous()  # (b, d_state, L)
        C = C.view(batch, seqlen, -1).transpose(1, 2).contiguous()
        y = selective_scan_fn(x, dt, A, B, C, self.D.float(), z=z,
                              delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        return self.out_proj(y.transpose(1, 2))
