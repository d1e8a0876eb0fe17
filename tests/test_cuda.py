"""CUDA only (skipped elsewhere; CI never needs a GPU): the aligner's forward-backward on the GPU
(Triton, and TorchScript) against the CPU kernel on the same inputs, and the model's training
step and inference on CUDA with the full and the banded lattice. benchmarks/gpu_check.sh runs these."""
from __future__ import annotations

import pytest
import torch

from conftest import assert_same_lattice, lattice_case

from mmsa_alignmamba import monotone_kernel
from mmsa_alignmamba.alignment import band, lattice
from mmsa_alignmamba.model import AlignMamba, AlignMambaConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("batch, t_m, t_l, sharpness, width", [
    (32, 500, 50, 1.0, 0), (8, 1600, 1600, 1.0, 16), (4, 40, 7, 30.0, 0), (3, 13, 30, 0.1, 0), (2, 1, 5, 1.0, 0)])
@pytest.mark.parametrize("path", ["triton", "torchscript"])
def test_the_cuda_forward_backward_is_the_cpu_kernel(path, batch, t_m, t_l, sharpness, width):
    emit, frames, words = lattice_case(batch, t_m, t_l, sharpness)
    starts = band.band_starts(frames, words, width) if width else None
    if starts is not None:
        emit = emit.gather(2, band.band_words(starts, width))
    want = monotone_kernel.forward_backward(emit, frames, words, 0.05, starts)
    cuda = [x.cuda() if x is not None else None for x in (emit, frames, words, starts)]
    if path == "triton":
        from mmsa_alignmamba import monotone_triton
        got = monotone_triton.forward_backward(*cuda[:3], 0.05, cuda[3])
        assert got is not None, "the Triton programs did not run on CUDA"
    else:
        got = lattice.compiled(lattice.forward_backward)(*cuda[:3], 0.05, False, lattice.starts_or_full(cuda[1], cuda[3]))
    assert_same_lattice(got, want, frames)


@pytest.mark.parametrize("width", [0, 8])
def test_the_model_trains_and_infers_on_cuda(width):
    torch.manual_seed(0)
    model = AlignMamba(AlignMambaConfig(aligner_band=width)).cuda()
    text, audio, vision = (torch.randn(4, t, d, device="cuda") for t, d in ((50, 768), (375, 5), (500, 20)))
    out = model(text, audio, vision)
    (out["M"].sum() + out["plan_loss"]).backward()
    assert torch.isfinite(out["plan_loss"]) and lattice._triton_usable
    model.eval()
    with torch.no_grad():
        lean, full = model(text, audio, vision)["M"], model(text, audio, vision, with_plans=True)["M"]
    assert torch.equal(lean, full)
