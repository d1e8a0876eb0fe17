"""The aligner's forward-backward in Triton (monotone_triton.py), run on CPU through Triton's
interpreter (TRITON_INTERPRET=1), against the C kernel and the TorchScript recursions: the same
numbers within 1e-5 of their scale, the same impossible cells. The interpreter is slow (tens of
ms a step), so the shapes are small but one: MOSI's grid and words."""
from __future__ import annotations

import importlib

import pytest
import torch

from conftest import assert_same_lattice, lattice_case

from mmsa_alignmamba import monotone_kernel
from mmsa_alignmamba.alignment import band, lattice

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def interpreted():
    """monotone_triton imported with the interpreter on (Triton reads it when it decorates)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRITON_INTERPRET", "1")
        from mmsa_alignmamba import monotone_triton
        module = importlib.reload(monotone_triton)
        assert module.interpreting()
        yield module
    importlib.reload(monotone_triton)


@pytest.mark.parametrize("batch, t_m, t_l, sharpness, width", [
    (1, 500, 50, 1.0, 0),                  # MOSI's grid and words
    (3, 30, 7, 30.0, 0),                   # sharp: most paths far below the best
    (3, 30, 7, 0.01, 0),                   # flat
    (2, 1, 5, 1.0, 0), (2, 6, 1, 1.0, 0),  # one frame; one word
    (3, 13, 30, 0.1, 0),                   # fewer frames than words: the end may be anywhere
    (3, 30, 12, 1.0, 4),                   # the banded form
])
def test_the_triton_programs_compute_the_c_kernel_and_the_torchscript_recursions(interpreted, batch, t_m, t_l,
                                                                                 sharpness, width):
    emit, frames, words = lattice_case(batch, t_m, t_l, sharpness)
    starts = band.band_starts(frames, words, width) if width else None
    if width:
        assert starts is not None
        emit = emit.gather(2, band.band_words(starts, width))
    got = interpreted.forward_backward(emit, frames, words, 0.05, starts)
    assert got is not None and got[1].shape == emit.shape
    assert_same_lattice(got, monotone_kernel.forward_backward(emit, frames, words, 0.05, starts), frames)
    assert_same_lattice(got, lattice.compiled(lattice.forward_backward)(emit, frames, words, 0.05, False,
                                                                         lattice.starts_or_full(frames, starts)), frames)


def test_the_triton_programs_leave_what_they_do_not_serve(interpreted):
    emit, frames, words = lattice_case(2, 5, 3, 1.0)
    assert interpreted.forward_backward(emit.double(), frames, words, 0.05) is None      # float64
    emit[0, 0, 0] = float("-inf")
    assert interpreted.forward_backward(emit, frames, words, 0.05) is None                # non-finite emissions


def test_the_model_takes_triton_on_cuda_only_and_falls_back_for_good_when_it_fails(monkeypatch, caplog):
    from mmsa_alignmamba import monotone_triton
    calls = []

    def broken(*args):
        calls.append(1)
        raise RuntimeError("no GPU for this")

    monkeypatch.setattr(monotone_triton, "forward_backward", broken)
    monkeypatch.setattr(lattice, "_triton_usable", True)
    emit, frames, words = lattice_case(2, 8, 4, 1.0)
    lattice.monotone_alignment(emit, frames, words)                 # CPU: the C kernel, Triton never asked
    assert calls == []
    with caplog.at_level("WARNING", logger="mmsa_alignmamba"):
        assert lattice._on_cuda(emit, frames, words, 0.05, None) is None
    assert calls == [1] and "Triton forward-backward failed" in caplog.text
    assert lattice._on_cuda(emit, frames, words, 0.05, None) is None and calls == [1]   # not tried again
