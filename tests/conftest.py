"""Shared fixtures: tiny SYNTHETIC MOSI-format data, an isolated HOME, clean MMSA loggers.

Nothing a test does may write to the real ~/MMSA: HOME is moved to a temporary folder for
the whole session (so subprocesses and `Path.home()` move too), and to each test's own temporary
HOME; the output root (~/MMSA) is read from HOME at call time, so it follows.
"""
from __future__ import annotations

import logging
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

TINY_SIZES = {"n_train": 24, "n_valid": 8, "n_test": 8}
# A copy of the tiny set with short sequences, for the models that are slow on long ones on CPU
# (MulT's cross-modal attention over 500 vision frames takes minutes on 2 cores).
SHORT_LENS = {"text": 12, "audio": 24, "vision": 24}

@pytest.fixture(scope="session", autouse=True)
def session_home(tmp_path_factory):
    """HOME for the whole session (session-scoped fixtures run before the per-test one)."""
    home = tmp_path_factory.mktemp("session_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        mp.delenv("MMSA_DATA_DIR", raising=False)
        yield home


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """A fresh HOME per test; the output root (~/MMSA) follows it."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("MMSA_DATA_DIR", raising=False)
    assert Path.home() == home
    return home


def reset_loggers(names=("MMSA", "mmsa_alignmamba")) -> None:
    for name in names:
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
            h.close()


@pytest.fixture(autouse=True)
def clean_loggers():
    """MMSA's and our loggers keep handlers (and open log files) between calls: restore them."""
    loggers = [logging.getLogger(n) for n in ("MMSA", "mmsa_alignmamba")]
    saved = [(lg, list(lg.handlers), lg.level, lg.propagate) for lg in loggers]
    yield
    for lg, handlers, level, propagate in saved:
        for h in list(lg.handlers):
            if h not in handlers:
                lg.removeHandler(h)
                h.close()
        lg.setLevel(level)
        lg.propagate = propagate


# ------------------------------------------------------------------------------ data
@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def tiny_pkl(data_dir) -> Path:
    """SYNTHETIC MOSI-format pickle (24/8/8 samples, the real MOSI shapes 50x768, 375x5, 500x20),
    with write_synthetic's sidecar `<path>.json` that marks it synthetic."""
    from mmsa_alignmamba.synthetic import write_synthetic
    return Path(write_synthetic(data_dir / "tiny_mosi.pkl", like="mosi", size=TINY_SIZES, seed=0))


@pytest.fixture(scope="session")
def plain_pkl(tiny_pkl, data_dir) -> Path:
    """The tiny pickle's bytes without the synthetic sidecar JSON: the CLI must call it real data."""
    path = data_dir / "plain" / "unaligned_50.pkl"
    path.parent.mkdir()
    shutil.copyfile(tiny_pkl, path)
    return path


def small_alignmamba_config(tmp: Path) -> Path:
    """The plugin's AlignMamba config with a small model (d_model 16, one layer), written into ``tmp``."""
    import json

    from mmsa_alignmamba import host
    ours = json.loads(host.plugins()["alignmamba"].config_path.read_text())
    ours["alignmamba"]["commonParams"].update(d_model=16, n_layers=1)
    path = tmp / "small_alignmamba.json"
    path.write_text(json.dumps(ours))
    return path


def load_pickle(path):
    from mmsa_alignmamba.safeio import safe_pickle_load
    return safe_pickle_load(path)


@pytest.fixture(scope="session")
def short_pkl(tiny_pkl, data_dir) -> Path:
    """The tiny set cut to short sequences (still valid MMSA format: lengths clipped; no sidecar)."""
    data = load_pickle(tiny_pkl)
    T, A, V = SHORT_LENS["text"], SHORT_LENS["audio"], SHORT_LENS["vision"]
    for part in data.values():
        part["text"] = np.ascontiguousarray(part["text"][:, :T])
        part["text_bert"] = np.ascontiguousarray(part["text_bert"][:, :, :T])
        part["audio"] = np.ascontiguousarray(part["audio"][:, :A])
        part["vision"] = np.ascontiguousarray(part["vision"][:, :V])
        part["audio_lengths"] = np.minimum(part["audio_lengths"], A)
        part["vision_lengths"] = np.minimum(part["vision_lengths"], V)
    path = data_dir / "short_mosi.pkl"
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=4)
    return path


def single_sample(pkl: Path, out: Path) -> Path:
    """MMSA_test's feature file: one sample, {'text': (T, 768), 'audio': (T, 5), 'vision': (T, 20)}."""
    test = load_pickle(pkl)["test"]
    with open(out, "wb") as f:
        pickle.dump({k: np.asarray(test[k][0], dtype=np.float32) for k in ("text", "audio", "vision")}, f)
    return out


@pytest.fixture(scope="session")
def single_sample_pkl(tiny_pkl, data_dir) -> Path:
    return single_sample(tiny_pkl, data_dir / "single_sample.pkl")


@pytest.fixture(scope="session")
def short_single_sample_pkl(short_pkl, data_dir) -> Path:
    return single_sample(short_pkl, data_dir / "short_single_sample.pkl")


class _Evil:
    """Unpickling this runs os.makedirs(marker): a stand-in for any code a pickle can carry."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def write_evil_pickle(path: Path, marker: Path, single_sample: bool = False) -> Path:
    payload = _Evil(marker)
    if single_sample:
        data = {"text": payload, "audio": payload, "vision": payload}
    else:
        data = {split: {"text": payload, "audio": payload, "vision": payload} for split in ("train", "valid", "test")}
    with open(path, "wb") as f:
        pickle.dump(data, f)
    assert not marker.exists()
    return path


@pytest.fixture
def evil_pickle(tmp_path):
    """-> (pickle path, marker path that must never appear)."""
    marker = tmp_path / "PWNED_MARKER"
    return write_evil_pickle(tmp_path / "evil.pkl", marker), marker


@pytest.fixture
def evil_single_sample(tmp_path):
    marker = tmp_path / "PWNED_MARKER_SINGLE"
    return write_evil_pickle(tmp_path / "evil_single.pkl", marker, single_sample=True), marker


# ------------------------------------------------------------------------------ the console script
def mmsa_script() -> str:
    candidate = Path(sys.executable).with_name("mmsa")
    found = str(candidate) if candidate.is_file() else shutil.which("mmsa")
    assert found, "the `mmsa` console script is not installed (pip install -e .)"
    return found


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """`mmsa` (cli.main) in this process -> (exit status, stdout, stderr); argparse's exits count too."""
    from mmsa_alignmamba import cli
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def mmsa_env(home: Path, **extra) -> dict:
    """The environment of an `mmsa` process under test: HOME=home, nothing that points it at the
    runner's data (MMSA_DATA_DIR), source tree (PYTHONPATH) or Ray cluster (RAY_ADDRESS)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MMSA_DATA_DIR", "PYTHONPATH", "RAY_ADDRESS")}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1", **extra)
    return env


def run_mmsa(args, home: Path, cwd: Path | None = None, extra_env=None, timeout=300) -> subprocess.CompletedProcess:
    """Run the installed `mmsa` console script in a fresh process with HOME=home."""
    return subprocess.run([mmsa_script(), *map(str, args)], cwd=cwd, env=mmsa_env(home, **(extra_env or {})),
                          capture_output=True, text=True, timeout=timeout)


# selective-scan inputs and gradients, for the scan's tests (test_mamba.py, test_cpu_kernels.py)

def scan_inputs(L, dtype, z=True, softplus=True, b=2, d=6, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    u = lambda *s: torch.rand(*s, generator=g, dtype=dtype)  # noqa: E731
    # without softplus dt = delta + delta_bias must stay positive, as it does in Mamba, or
    # exp(dt A) > 1 and the recurrence blows up (in the reference too)
    delta, delta_bias = (0.5 * r(b, d, L), 0.3 * r(d)) if softplus else (0.5 * u(b, d, L),
                                                                          0.1 * u(d))
    args = dict(u=r(b, d, L), delta=delta, A=-2 * u(d, n), B=r(b, n, L), C=r(b, n, L),
                D=r(d), z=r(b, d, L) if z else None, delta_bias=delta_bias)
    for v in args.values():
        if v is not None:
            v.requires_grad_()
    return args


def fwd_bwd(fn, args, softplus):
    out = fn(**args, delta_softplus=softplus)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    names = [k for k, v in args.items() if v is not None]
    grads = torch.autograd.grad(out, [args[k] for k in names], dout)
    return {"out": out, **{"d" + k: g for k, g in zip(names, grads)}}


def assert_close_scaled(got, want, tol):
    for k in want:
        err = (got[k] - want[k]).abs().max().item()
        scale = max(1.0, want[k].abs().max().item())
        assert err <= tol * scale, f"{k}: max error {err:.3g} > {tol:.0e} * {scale:.3g}"


def lattice_case(batch, t_m, t_l, sharpness=1.0, seed=0):
    """Random emissions (B, T_m, T_l) for the aligner's forward-backward and prefix masks of random
    lengths (the last sample full)."""
    generator = torch.Generator().manual_seed(seed)
    emit = torch.randn(batch, t_m, t_l, generator=generator) * sharpness
    n_m = torch.randint(1, t_m + 1, (batch,), generator=generator)
    n_l = torch.randint(1, t_l + 1, (batch,), generator=generator)
    n_m[-1], n_l[-1] = t_m, t_l
    return emit, torch.arange(t_m)[None] < n_m[:, None], torch.arange(t_l)[None] < n_l[:, None]


def assert_same_lattice(got, want, frames):
    """Two forward-backward results (log_lik, log_post) agree as float32 lets them: the same
    impossible cells (−inf), no NaN, within 1e-5 of the largest value, posteriors summing alike."""
    got = tuple(x.cpu() for x in got)
    possible = torch.isfinite(want[1])
    assert torch.equal(possible, torch.isfinite(got[1]))
    assert not torch.isnan(got[1]).any()
    assert (got[0] - want[0]).abs().max() <= 1e-5 * want[0].abs().max().clamp_min(1.0)
    if possible.any():
        assert (got[1][possible] - want[1][possible]).abs().max() <= 1e-5 * want[1][possible].abs().max().clamp_min(1.0)
    # each frame sits in some word: the posteriors sum to 1 as well as float32 lets TorchScript's do
    assert torch.allclose(got[1].exp().sum(-1)[frames], want[1].exp().sum(-1)[frames], atol=1e-4)
