"""CPU selective scan and Mamba block against mamba-ssm's own pure-PyTorch reference.

Needs mamba-ssm installed without its CUDA kernels (see README), plus einops and triton, which
its ``selective_scan_interface`` imports.  ``selective_scan_cuda`` never exists on CPU, so the
``mamba_ssm_ref`` fixture puts an empty stand-in module in sys.modules for the import and
removes it afterwards.
"""

import functools
import importlib.util
import io
import subprocess
import sys
import types

import pytest
import torch
import torch.nn.functional as F

import mmsa_alignmamba.mamba as mm
from conftest import assert_close_scaled, fwd_bwd, scan_inputs
from mmsa_alignmamba.mamba import Mamba, mamba_ssm_available, selective_scan


@pytest.fixture(scope="module")
def mamba_ssm_ref():
    """The mamba_ssm namespace: (selective_scan_ref, mamba_simple.Mamba)."""
    if importlib.util.find_spec("mamba_ssm") is None:
        pytest.skip("mamba-ssm not installed (MAMBA_SKIP_CUDA_BUILD=TRUE install, see README)")
    added = "selective_scan_cuda" not in sys.modules
    if added:
        sys.modules["selective_scan_cuda"] = types.ModuleType("selective_scan_cuda")
    try:
        from mamba_ssm.modules.mamba_simple import Mamba as RefMamba
        from mamba_ssm.ops.selective_scan_interface import selective_scan_ref

        yield types.SimpleNamespace(selective_scan_ref=selective_scan_ref, Mamba=RefMamba)
    finally:
        if added:
            del sys.modules["selective_scan_cuda"]
        mm._mamba_ssm_ops.cache_clear()


def scan_loop64(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """selective_scan_ref's loop without its float32 casts (the float64 reference)."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        h = torch.exp(delta[:, :, i, None] * A) * h + (delta[:, :, i] * u[:, :, i])[
            ..., None] * B[:, None, :, i]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, i]))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + u * D[:, None]
    return y if z is None else y * F.silu(z)


# 600 elements: tiles of 1 batch item x 3 chunks (the last partial at L = 64); 1: one chunk each
TILES = {"one tile": None, "1 item x 3 chunk tiles": 600, "one chunk per tile": 1}


@pytest.mark.parametrize("tile", TILES, ids=list(TILES))
@pytest.mark.parametrize("L", [1, 37, 64])
@pytest.mark.parametrize("z", [True, False], ids=["z", "no-z"])
@pytest.mark.parametrize("softplus", [True, False], ids=["softplus", "no-softplus"])
def test_scan_matches_selective_scan_ref(mamba_ssm_ref, monkeypatch, tile, L, z, softplus):
    """float32 forward and every input's gradient vs selective_scan_ref, on the PyTorch scan
    (the C kernels, which float32 CPU input takes by default, are held to it in
    test_cpu_kernels.py); L = 37 ends in a partial chunk (t = 7, c = 6), L = 64 has 8 full
    chunks, L = 1 a single step."""
    if TILES[tile]:
        monkeypatch.setattr(mm, "_TILE_ELEMS", TILES[tile])
    args = scan_inputs(L, torch.float32, z, softplus)
    want = fwd_bwd(mamba_ssm_ref.selective_scan_ref, args, softplus)
    got = fwd_bwd(functools.partial(selective_scan, backend="torch"), args, softplus)
    assert set(got) == set(want)
    assert_close_scaled(got, want, 1e-5)


@pytest.mark.parametrize("tile", TILES, ids=list(TILES))
@pytest.mark.parametrize("L", [37, 64])
@pytest.mark.parametrize("z", [True, False], ids=["z", "no-z"])
@pytest.mark.parametrize("softplus", [True, False], ids=["softplus", "no-softplus"])
def test_scan_float64(mamba_ssm_ref, monkeypatch, tile, L, z, softplus):
    """float64 to 1e-10.  selective_scan_ref casts to float32, so the float64 reference is its
    loop without the casts, itself checked against selective_scan_ref in float32."""
    if TILES[tile]:
        monkeypatch.setattr(mm, "_TILE_ELEMS", TILES[tile])
    args32 = scan_inputs(L, torch.float32, z, softplus)
    assert_close_scaled(fwd_bwd(scan_loop64, args32, softplus),
                        fwd_bwd(mamba_ssm_ref.selective_scan_ref, args32, softplus), 1e-5)
    args = scan_inputs(L, torch.float64, z, softplus)
    got = fwd_bwd(selective_scan, args, softplus)
    assert got["out"].dtype == torch.float64
    assert_close_scaled(got, fwd_bwd(scan_loop64, args, softplus), 1e-10)


def test_scan_long_sequence_many_chunks(mamba_ssm_ref):
    """L = 300: t = 18 steps x 17 chunks, the last partial, with strong decay (dt A ~ -10)."""
    args = scan_inputs(300, torch.float64, z=True, softplus=True, b=1, d=3, n=4)
    with torch.no_grad():
        args["A"].mul_(10)
    assert_close_scaled(fwd_bwd(selective_scan, args, True), fwd_bwd(scan_loop64, args, True),
                        1e-10)


def test_scan_keeps_input_dtype():
    args = {k: v.detach().bfloat16() for k, v in scan_inputs(16, torch.float32).items()}
    out = selective_scan(**args, delta_softplus=True)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 6, 16)


# ----------------------------------------------------------------------------- Mamba block


def block_reference(m, x, selective_scan_ref):
    """The whole block step by step: explicit causal conv taps, selective_scan_ref."""
    b, L, _ = x.shape
    xz = x @ m.in_proj.weight.t()
    xi, z = xz[..., : m.d_inner], xz[..., m.d_inner:]
    w = m.conv1d.weight[:, 0]  # (d_inner, d_conv); tap k looks k steps back
    conv = m.conv1d.bias.expand(b, L, -1).clone()
    for t in range(L):
        for k in range(m.d_conv):
            if t - k >= 0:
                conv[:, t] += xi[:, t - k] * w[:, m.d_conv - 1 - k]
    xc = F.silu(conv)  # (b, L, d_inner)
    dbl = xc @ m.x_proj.weight.t()
    dt, B, C = dbl.split([m.dt_rank, m.d_state, m.d_state], dim=-1)
    dt = dt @ m.dt_proj.weight.t()
    y = selective_scan_ref(
        xc.transpose(1, 2), dt.transpose(1, 2), -torch.exp(m.A_log), B.transpose(1, 2),
        C.transpose(1, 2), m.D, z=z.transpose(1, 2), delta_bias=m.dt_proj.bias,
        delta_softplus=True)
    return y.transpose(1, 2) @ m.out_proj.weight.t()


def test_block_shape_and_gradients():
    torch.manual_seed(0)
    m = Mamba(d_model=16)
    x = torch.randn(3, 21, 16, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    assert x.grad.abs().sum() > 0
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_block_matches_step_by_step_reference(mamba_ssm_ref):
    torch.manual_seed(0)
    m = Mamba(d_model=16, d_state=8)
    with torch.no_grad():  # non-trivial conv bias / D so every term matters
        m.conv1d.bias.normal_()
        m.D.normal_()
    x = torch.randn(2, 45, 16)
    with torch.no_grad():
        want = block_reference(m, x, mamba_ssm_ref.selective_scan_ref)
        got = m(x)
    assert_close_scaled({"out": got}, {"out": want}, 1e-5)


def test_block_is_causal():
    torch.manual_seed(0)
    m = Mamba(d_model=16)
    x = torch.randn(2, 40, 16, requires_grad=True)
    t = 17
    x2 = x.detach().clone()
    x2[:, t + 1:] += torch.randn_like(x2[:, t + 1:])
    with torch.no_grad():
        y, y2 = m(x), m(x2)
    torch.testing.assert_close(y[:, : t + 1], y2[:, : t + 1], rtol=0, atol=1e-6)
    assert (y[:, t + 1:] - y2[:, t + 1:]).abs().max() > 1e-3
    # and backward: output at t has no gradient path to later inputs
    m(x)[:, t].sum().backward()
    assert x.grad[:, t + 1:].abs().max() == 0
    assert x.grad[:, t].abs().max() > 0


def test_state_dict_round_trip_through_file():
    torch.manual_seed(0)
    m = Mamba(d_model=16)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    m2 = Mamba(d_model=16)
    m2.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m2(x), rtol=0, atol=0)


@pytest.mark.parametrize("kwargs", [{}, dict(d_state=8, d_conv=3, expand=3, dt_rank=5,
                                             conv_bias=False, bias=True)])
def test_parameters_and_init_match_mamba_ssm(mamba_ssm_ref, kwargs):
    """Same names, shapes and, from the same seed, the same initial values; strict loads both
    ways (mamba_ssm's Mamba constructs on CPU, only its forward needs CUDA)."""
    torch.manual_seed(123)
    ours = Mamba(d_model=24, **kwargs)
    torch.manual_seed(123)
    theirs = mamba_ssm_ref.Mamba(d_model=24, **kwargs)
    sd_ours, sd_theirs = ours.state_dict(), theirs.state_dict()
    assert list(sd_ours) == list(sd_theirs)
    for k in sd_theirs:
        assert sd_ours[k].shape == sd_theirs[k].shape, k
        torch.testing.assert_close(sd_ours[k], sd_theirs[k], rtol=0, atol=0, msg=k)
    torch.manual_seed(7)
    other = Mamba(d_model=24, **kwargs)
    theirs.load_state_dict(other.state_dict(), strict=True)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    for k, v in other.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k


def test_backend_selection_on_cpu(mamba_ssm_ref):
    # even with mamba_ssm importable through the stand-in, there are no kernels to use
    assert not mamba_ssm_available()
    m = Mamba(d_model=8)
    x = torch.randn(1, 5, 8)
    # None picks the C kernels where they build, "torch" the PyTorch scan: the same function
    torch.testing.assert_close(m(x), m(x, backend="torch"), rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError):
        m(x, backend="mamba_ssm")
    with pytest.raises(ValueError):
        m(x, backend="cuda")


def test_import_does_not_import_mamba_ssm():
    code = ("import sys, mmsa_alignmamba.mamba as m; "
            "assert not any(k.split('.')[0] in ('mamba_ssm', 'causal_conv1d') for k in "
            "sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
