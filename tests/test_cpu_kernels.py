"""The C kernels for the CPU (native.py): the Mamba block's inside (the same function as its PyTorch
path, however threads share the work, used only where no gradient is wanted), the selective scan
for training (the PyTorch scan's output and gradients), and the alignment model's forward-backward
(the same recursions as the TorchScript version, in training too); a clean fallback where they
cannot build; and a build that leaves the process's floating-point mode alone."""
import functools
import logging
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest
import torch

from conftest import assert_close_scaled, assert_same_lattice, fwd_bwd, lattice_case, scan_inputs
from mmsa_alignmamba import monotone_kernel, native, scan_kernel
from mmsa_alignmamba.alignment import lattice
from mmsa_alignmamba.tracing import compiled
from mmsa_alignmamba.mamba import Mamba, selective_scan

pytestmark = pytest.mark.skipif(
    native._compiler() is None,
    reason="no C compiler on this machine: the kernel cannot build, inference runs the PyTorch scan")


@pytest.fixture
def fresh_kernel():
    """Forget the loaded kernel before and after, so the test decides how it is built."""
    native.clear_cache()
    yield
    native.clear_cache()


def _block(d_model, seed=0, **kwargs):
    torch.manual_seed(seed)
    m = Mamba(d_model=d_model, **kwargs).eval()
    with torch.no_grad():  # non-trivial D and biases, so every term of the output matters
        for p in (m.D, m.conv1d.bias, m.in_proj.bias):
            if p is not None:
                p.normal_()
    return m


@pytest.mark.parametrize("batch, length, d_model, kwargs", [
    (1, 1, 8, {}), (3, 37, 40, dict(d_state=4)),          # d_inner 80: not a whole number of vectors
    (2, 300, 64, {}), (1, 3, 24, dict(d_conv=5)),         # fewer steps than the conv's width
    (2, 20, 24, dict(d_state=8, d_conv=3, expand=3, dt_rank=5, conv_bias=False, bias=True)),
    (1, 500, 40, {}),                                     # one sample over the threads: steps, then channels
])
def test_kernel_computes_the_pytorch_block(batch, length, d_model, kwargs):
    assert scan_kernel.kernel_available()
    m = _block(d_model, **kwargs)
    x = torch.randn(batch, length, d_model)
    with torch.no_grad():
        want, got, chosen = m(x, backend="torch"), m(x, backend="cpu_kernel"), m(x)
    assert torch.equal(chosen, got)                 # inference picks the kernel by itself
    scale = want.abs().max()
    assert (got - want).abs().max() <= 1e-5 * scale, (got - want).abs().max() / scale


def test_the_kernel_decays_like_pytorch_when_dt_is_large():
    """dt·A far below -87 (the kernel's inline exp clamps there) and dt past softplus's threshold."""
    m = _block(16)
    x = torch.randn(2, 50, 16)
    with torch.no_grad():
        m.dt_proj.bias.uniform_(5.0, 30.0)
        want, got = m(x, backend="torch"), m(x, backend="cpu_kernel")
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_inference_takes_the_kernel_and_training_does_not(monkeypatch):
    m = _block(16, d_state=8)
    x = torch.randn(2, 30, 16)
    calls = []
    real = scan_kernel.mamba_inner_inference
    monkeypatch.setattr(scan_kernel, "mamba_inner_inference", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        m(x)
    assert calls == [1]
    y = m(x)                                    # gradients wanted: the PyTorch scan and its backward
    assert calls == [1] and y.requires_grad
    y.sum().backward()
    assert m.A_log.grad is not None
    with pytest.raises(RuntimeError, match="cpu_kernel"):
        m(x, backend="cpu_kernel")


def test_the_thread_split_does_not_change_a_bit(monkeypatch):
    """However many threads share the samples out, each output is computed the same way.
    (PyTorch's own operators around the kernel may differ in the last bit between thread
    counts, so torch's pool stays as it is; only the kernel's split varies.)"""
    m = _block(72)                                  # d_inner 144: not a whole number of vectors
    for batch in (1, 2, 3, 5):
        x = torch.randn(batch, 600 // batch, 72)    # over PARALLEL_MIN_UPDATES: threads take part
        results = []
        for threads in (1, 2, 3, 4):
            monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
            with torch.no_grad():
                results.append(m(x, backend="cpu_kernel"))
        assert all(torch.equal(results[0], r) for r in results[1:]), batch
        with torch.no_grad():                       # a sample alone gives its rows of the batch
            assert torch.equal(m(x[-1:], backend="cpu_kernel"), results[1][-1:])


@pytest.mark.parametrize("setting", ["no compiler", "switched off"])
def test_without_the_kernel_inference_runs_the_pytorch_scan(fresh_kernel, monkeypatch, caplog, tmp_path, setting):
    if setting == "no compiler":
        monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
        monkeypatch.setattr(sysconfig, "get_config_var", lambda name: None)
        monkeypatch.setattr(shutil, "which", lambda name: None)
    else:
        monkeypatch.setenv(native.ENABLE_VARIABLE, "0")
    m = _block(16, d_state=8)
    x = torch.randn(2, 10, 16)
    with caplog.at_level(logging.INFO, logger="mmsa_alignmamba"), torch.no_grad():
        got = m(x)
        want = m(x, backend="torch")
    assert not scan_kernel.kernel_available()
    assert torch.equal(got, want)
    assert sum("PyTorch code serves" in r.getMessage() for r in caplog.records) == 1   # one line, not one a call
    emit, frames, words = lattice_case(2, 30, 6)
    assert monotone_kernel.forward_backward(emit, frames, words, 0.05) is None   # the TorchScript version serves
    assert not scan_kernel.training_scan_applies(x)
    y = m(x)                                                  # training: the PyTorch scan, bit for bit
    assert torch.equal(y, m(x, backend="torch")) and y.requires_grad


def test_a_failed_build_is_one_log_line_not_an_error(fresh_kernel, monkeypatch, caplog, tmp_path):
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'cc: internal error' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with caplog.at_level(logging.INFO, logger="mmsa_alignmamba"):
        assert not scan_kernel.kernel_available()
    assert any("internal error" in r.getMessage() for r in caplog.records)
    assert not list((tmp_path / "cache").rglob("*.so"))          # nothing half-built left in the cache


def test_a_fresh_build_keeps_gradual_underflow(tmp_path):
    """Linking a shared library with -ffast-math (GCC < 13) switches the whole process to
    flush-to-zero; the kernel is compiled with it but linked without."""
    code = ("import numpy as np, torch; from mmsa_alignmamba import native, scan_kernel, monotone_kernel as fb; "
            "assert scan_kernel.kernel_available() and fb._kernel() is not None; "
            "assert np.float32(1e-38) / np.float32(1e3) > 0, 'subnormals flushed to zero'; "
            "assert (torch.tensor(1e-38) / 1e3).item() > 0; print(sorted(p.name for p in native._cache_dir().iterdir()))")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("scan_kernel-") == 1 and done.stdout.count("monotone_kernel-") == 1


@pytest.mark.parametrize("batch, t_m, t_l, sharpness", [
    (1, 500, 50, 1.0),                     # MOSI's grid and words
    (4, 40, 7, 30.0),                      # sharp: most paths far below the best
    (3, 13, 30, 0.1),                      # fewer frames than words: the end may be anywhere
    (2, 1, 5, 1.0), (2, 6, 1, 1.0),        # one frame; one word
])
def test_the_forward_backward_kernel_computes_the_torchscript_recursions(batch, t_m, t_l, sharpness):
    emit, frames, words = lattice_case(batch, t_m, t_l, sharpness)
    want = compiled(lattice.forward_backward)(emit, frames, words, 0.05, False, lattice.starts_or_full(frames, None))
    assert_same_lattice(monotone_kernel.forward_backward(emit, frames, words, 0.05), want, frames)


def test_the_forward_backward_kernel_does_not_depend_on_threads(monkeypatch):
    emit, frames, words = lattice_case(5, 300, 40)          # over PARALLEL_MIN_CELLS: threads take part
    results = []
    for threads in (1, 2, 3, 4):
        monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
        results.append(monotone_kernel.forward_backward(emit, frames, words, 0.05))
    assert all(torch.equal(results[0][1], r[1]) and torch.equal(results[0][0], r[0]) for r in results[1:])
    alone = monotone_kernel.forward_backward(emit[2:3], frames[2:3], words[2:3], 0.05)
    assert torch.equal(alone[1], results[0][1][2:3])


def test_the_aligner_trains_and_infers_on_the_forward_backward_kernel(monkeypatch):
    emit, frames, words = lattice_case(3, 60, 9)
    calls = []
    real = monotone_kernel.forward_backward
    monkeypatch.setattr(monotone_kernel, "forward_backward", lambda *a: calls.append(1) or real(*a))
    emit.requires_grad_(True)
    log_lik, log_post = lattice.monotone_alignment(emit, frames, words)
    assert calls == [1]
    log_lik.sum().backward()                          # the gradient is the kernel's posterior
    assert torch.allclose(emit.grad, log_post.exp())
    # where the kernel does not apply (float64, non-finite emissions), the TorchScript version runs
    assert monotone_kernel.forward_backward(emit.detach().double(), frames, words, 0.05) is None
    assert monotone_kernel.forward_backward(emit.detach().masked_fill(~words[:, None], float("-inf")),
                                            frames, words, 0.05) is None
    lik64, _ = lattice.monotone_alignment(emit.detach().double(), frames, words)
    assert lik64.dtype == torch.float64 and torch.allclose(lik64.float(), log_lik, rtol=1e-5)


@pytest.mark.parametrize("length", [1, 16, 17, 150])      # one step; a whole stretch of checkpoints; one more; MOSI's fused length
@pytest.mark.parametrize("z, softplus", [(True, True), (False, False)], ids=["gate-softplus", "plain"])
def test_the_training_scan_kernel_computes_the_pytorch_scan_and_its_gradients(length, z, softplus, monkeypatch):
    calls = []
    real = scan_kernel.selective_scan_training
    monkeypatch.setattr(scan_kernel, "selective_scan_training", lambda *a: calls.append(1) or real(*a))
    args = scan_inputs(length, torch.float32, z, softplus, b=3, d=40, n=16)   # 40 channels: not a whole number of vectors
    with torch.no_grad():
        args["A"].mul_(8)                                            # decays down to exp(-16 dt)
    got = fwd_bwd(selective_scan, args, softplus)
    want = fwd_bwd(functools.partial(selective_scan, backend="torch"), args, softplus)
    assert calls == [1]                                              # float32 CPU takes the kernel by itself
    assert_close_scaled(got, want, 1e-5)


def test_the_training_scan_kernel_takes_any_real_A():
    """selective_scan is a drop-in for mamba-ssm's reference, which allows A > 0 (a growing
    state): the kernel's inline exponential is right there too."""
    args = scan_inputs(20, torch.float32, softplus=False, b=2, d=8, n=4)
    with torch.no_grad():
        args["A"].copy_(torch.linspace(-3.0, 2.0, 32).view(8, 4))
    assert_close_scaled(fwd_bwd(selective_scan, args, False),
                        fwd_bwd(functools.partial(selective_scan, backend="torch"), args, False), 1e-5)


def test_the_training_scan_kernel_does_not_depend_on_threads(monkeypatch):
    args = scan_inputs(70, torch.float32, b=5, d=24, n=8, seed=3)    # over PARALLEL_MIN_UPDATES
    results = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
        results.append(fwd_bwd(selective_scan, args, True))
    for other in results[1:]:
        assert all(torch.equal(results[0][k], other[k]) for k in results[0])


def test_a_block_trains_on_the_kernel_as_on_the_pytorch_scan():
    """A few optimiser steps of a Mamba block: the kernel's gradients steer it as the PyTorch
    scan's do (the float32 differences stay at rounding level)."""
    runs = []
    for backend in (None, "torch"):
        m = _block(16, seed=4).train()
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        x = torch.randn(4, 33, 16, generator=torch.Generator().manual_seed(5))
        for _ in range(5):
            loss = m(x, backend=backend).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        runs.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    assert (runs[0] - runs[1]).abs().max() <= 1e-4
