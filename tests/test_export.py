"""ONNX export of AlignMamba: one graph for every batch size and length, equal to eager PyTorch."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

from mmsa_alignmamba import cli, host, load_model
from mmsa_alignmamba.alignment.lattice import forward_backward, starts_or_full
from mmsa_alignmamba.export import ONNX_INPUTS, example_inputs
from mmsa_alignmamba.mamba import selective_scan, selective_scan_steps
from mmsa_alignmamba.tracing import compiled

ort = pytest.importorskip("onnxruntime")   # in the test extra: CI always runs these


def _train(pkl: Path, out: Path, **params) -> Path:
    config = json.loads(host.plugins()["alignmamba"].config_path.read_text())
    config["alignmamba"]["commonParams"].update(d_model=16, n_layers=2, **params)
    (out / "config.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config))
    rc = cli.main([str(a) for a in ("-m", "alignmamba", "-d", "mosi", "--feature-path", pkl, "-s", "1", "--epochs", "1",
                                    "-v", "0", "-c", out / "config.json", "--res-save-dir", out / "results",
                                    "--model-save-dir", out / "models", "--log-dir", out / "logs")])
    assert rc == 0
    (checkpoint,) = (out / "models").glob("*.pth")
    return checkpoint


@pytest.mark.parametrize("cost", ["monotone", "cosine"])
def test_onnx_graph_equals_eager_at_every_shape(cost, short_pkl, tmp_path, capsys):
    checkpoint = _train(short_pkl, tmp_path, ot_cost=cost)
    out = tmp_path / "am.onnx"
    rc, stdout, err = run_cli(["export", "--checkpoint", checkpoint, "--format", "onnx", "--out", out], capsys)
    assert rc == 0, err
    assert "agrees with PyTorch" in stdout
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(ONNX_INPUTS)
    model, _, info = load_model(checkpoint)
    net = model.Model
    exact = copy.deepcopy(net).double()
    # batch 1 and larger, lengths shorter and longer than the traced example's, MOSI's own
    for seed, (batch, lengths) in enumerate([(1, (50, 375, 500)), (4, (3, 7, 5)), (1, (1, 2, 1)), (5, (24, 90, 64))]):
        inputs = example_inputs(info.feature_dims, batch, lengths, seed=seed)
        with torch.no_grad():
            expected = net(*inputs)["M"].squeeze(-1).numpy()
            in_float64 = exact(*(x.double() if x.is_floating_point() else x for x in inputs))["M"].squeeze(-1).numpy()
        (got,) = session.run(None, {name: x.numpy() for name, x in zip(ONNX_INPUTS, inputs)})
        assert got.shape == (batch,)
        # 1e-4 relative, plus the rounding error eager float32 itself makes: over hundreds of
        # frames a barely trained model's near-zero score can move by more than 1e-4 of itself
        # with the order of float32 operations (eager against float64: ~1e-3 at MOSI's shape)
        rounding = np.abs(expected - in_float64)
        np.testing.assert_array_less(np.abs(got - expected), 1e-4 * np.abs(expected).max() + 2 * rounding + 1e-7)


def test_export_refuses_other_models(tiny_pkl, tmp_path, capsys):
    rc = cli.main([str(a) for a in ("-m", "lf_dnn", "-d", "mosi", "--feature-path", tiny_pkl, "-s", "1", "--epochs",
                                    "1", "-v", "0", "--res-save-dir", tmp_path / "r", "--model-save-dir", tmp_path / "m",
                                    "--log-dir", tmp_path / "l")])
    assert rc == 0
    (checkpoint,) = (tmp_path / "m").glob("*.pth")
    out = tmp_path / "lf.onnx"
    rc, _, err = run_cli(["export", "--checkpoint", checkpoint, "--out", out], capsys)
    assert rc == 2 and "ONNX export covers AlignMamba" in err and "'lf_dnn'" in err
    assert not out.exists()


def test_export_paths_compute_the_eager_functions():
    """The compiled reference paths the graph runs are the eager functions, not approximations."""
    g = torch.Generator().manual_seed(0)
    b, d, n, length = 2, 8, 4, 33
    u, delta, z = (torch.randn(b, d, length, generator=g) for _ in range(3))
    A, B, C = -torch.rand(d, n, generator=g) * 3, torch.randn(b, n, length, generator=g), torch.randn(b, n, length, generator=g)
    D, bias = torch.randn(d, generator=g), torch.randn(d, generator=g)
    fast = selective_scan(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True)
    steps = compiled(selective_scan_steps)(u, delta, A, B, C, D, z, bias)
    torch.testing.assert_close(steps, fast, rtol=1e-5, atol=1e-5)

    emit = torch.randn(3, 40, 9, generator=g) * 30 - 200    # very negative log-likelihoods, as real ones are
    frames = torch.arange(40)[None] < torch.tensor([40, 17, 3])[:, None]
    words = torch.arange(9)[None] < torch.tensor([9, 4, 1])[:, None]
    full = starts_or_full(frames, None)                     # the band of the full lattice
    eager = forward_backward(emit, frames, words, 0.05, False, full)
    # compiled for training and inference: the same operations, the same numbers
    same = compiled(forward_backward)(emit, frames, words, 0.05, False, full)
    assert torch.equal(same[0], eager[0]) and torch.equal(same[1], eager[1])
    # compiled with the operations ONNX has
    onnx = compiled(forward_backward)(emit, frames, words, 0.05, True, full)
    torch.testing.assert_close(onnx[0], eager[0], rtol=1e-5, atol=1e-4)
    finite = torch.isfinite(eager[1])
    assert torch.equal(finite, torch.isfinite(onnx[1]))
    torch.testing.assert_close(onnx[1][finite], eager[1][finite], rtol=1e-5, atol=1e-4)
