"""The banded lattice of the learned aligner (alignment/band.py): exact where the band covers the
lattice, the full lattice with the out-of-band words made impossible where it does not, the same
in the C kernel and in TorchScript, and really (B, G, W) inside the aligner."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import assert_same_lattice

from mmsa_alignmamba import monotone_kernel
from mmsa_alignmamba.alignment import aligner as aligner_module
from mmsa_alignmamba.alignment import band, lattice
from mmsa_alignmamba.alignment.aligner import WordAligner
from mmsa_alignmamba.model import AlignMamba, AlignMambaConfig

D64 = torch.float64


def _masks(n_m, n_l, t_m, t_l):
    return (torch.arange(t_m)[None] < torch.tensor(n_m)[:, None],
            torch.arange(t_l)[None] < torch.tensor(n_l)[:, None])


def _case(t_m=60, t_l=14, n_m=(60, 41, 9), n_l=(14, 9, 3), sharpness=2.0, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    frames, words = _masks(n_m, n_l, t_m, t_l)
    return torch.randn(len(n_m), t_m, t_l, generator=g, dtype=dtype) * sharpness, frames, words


def _in_band(emit, starts, width):
    """The banded form's emissions, (B, T_m, W), and the full lattice's with every word outside
    the band impossible (−inf), (B, T_m, T_l)."""
    slots = band.band_words(starts, width)
    outside = torch.ones_like(emit, dtype=torch.bool).scatter_(2, slots, False)
    return emit.gather(2, slots), emit.masked_fill(outside, -math.inf)


def test_band_starts_follow_the_time_proportional_word_and_move_like_the_chain():
    frames, words = _masks((60, 41, 9), (14, 9, 3), 60, 14)
    starts = band.band_starts(frames, words, 5)
    n_m, n_l = frames.sum(1), words.sum(1)
    step = torch.minimum(torch.arange(60)[None], (n_m - 1)[:, None])
    centre = torch.floor(step * ((n_l - 1) / (n_m - 1))[:, None] + 0.5).long()
    assert ((starts <= centre) & (centre < starts + 5)).all()                    # the diagonal is in the band
    moves = starts.diff(dim=1)
    assert ((moves >= 0) & (moves <= 2)).all()                                   # a chain's step at most
    assert (starts + 5 <= 14).all() and (starts[:, 0] == 0).all()
    assert (starts[1, 41:] == starts[1, 40]).all()                               # padded steps keep the band
    # the full lattice: no band, a band as wide as the words, and words outnumbering frames twice over
    assert band.band_starts(frames, words, 0) is None and band.band_starts(frames, words, 14) is None
    few_frames, many_words = _masks((3,), (8,), 3, 8)
    assert band.band_starts(few_frames, many_words, 4) is None


@pytest.mark.parametrize("kernel", [True, False], ids=["C kernel", "TorchScript"])
def test_a_band_covering_the_lattice_is_the_full_lattice_bit_for_bit(kernel, monkeypatch):
    emit, frames, words = _case()
    if not kernel:
        monkeypatch.setattr(monotone_kernel, "forward_backward", lambda *a: None)
    full = lattice.monotone_alignment(emit, frames, words)
    covering = lattice.monotone_alignment(emit, frames, words, starts=torch.zeros(frames.shape, dtype=torch.long))
    assert torch.equal(full[0], covering[0]) and torch.equal(full[1], covering[1])


@pytest.mark.parametrize("width", [1, 3, 6])
def test_a_narrow_band_is_the_full_lattice_without_the_words_outside_it(width):
    emit, frames, words = _case(dtype=D64)
    starts = band.band_starts(frames, words, width)
    banded, masked = _in_band(emit, starts, width)
    log_lik, log_post = lattice.monotone_alignment(banded, frames, words, starts=starts)
    want_lik, want_post = lattice.forward_backward(masked, frames, words, 0.05, False, lattice.starts_or_full(frames, None))
    torch.testing.assert_close(log_lik, want_lik)
    torch.testing.assert_close(log_post.exp(), want_post.gather(2, band.band_words(starts, width)).exp())
    assert torch.isfinite(log_lik).all()
    torch.testing.assert_close(log_post.exp().sum(-1), frames.to(D64))         # normalised on every valid frame


def test_the_banded_gradient_is_the_band_posterior():
    emit, frames, words = _case(t_m=12, t_l=6, n_m=(12, 8), n_l=(6, 4), dtype=D64)
    starts = band.band_starts(frames, words, 3)
    banded = _in_band(emit, starts, 3)[0].requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: lattice.monotone_alignment(x, frames, words, 0.1, starts)[0], (banded,))
    log_lik, log_post = lattice.monotone_alignment(banded, frames, words, 0.1, starts)
    grad, = torch.autograd.grad(log_lik.sum(), banded)
    torch.testing.assert_close(grad, log_post.exp())


@pytest.mark.parametrize("t_m, t_l, n_m, n_l, sharpness, width", [
    ((500, 50, (500, 310, 120, 64), (50, 37, 20, 50), 1.0, 9)),   # MOSI's grid and words
    ((40, 12, (40, 23), (12, 7), 30.0, 4)),                         # sharp emissions
    ((40, 12, (40, 23), (12, 7), 0.01, 4)),                         # flat emissions
    ((30, 20, (30, 12), (20, 20), 1.0, 5)),                         # nearly twice as many words as frames
])
def test_the_c_kernel_and_torchscript_agree_on_the_banded_lattice(t_m, t_l, n_m, n_l, sharpness, width):
    emit, frames, words = _case(t_m, t_l, n_m, n_l, sharpness)
    starts = band.band_starts(frames, words, width)
    assert starts is not None
    banded = _in_band(emit, starts, width)[0]
    got = monotone_kernel.forward_backward(banded, frames, words, 0.05, starts)
    want = lattice.compiled(lattice.forward_backward)(banded, frames, words, 0.05, False, starts)
    assert got is not None and got[1].shape == banded.shape
    assert_same_lattice(got, want, frames)      # float32 over 500 steps: as for the full lattice's kernel


def _aligner_inputs(b=3, t_m=30, t_l=10, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    frames = {"audio": (torch.randn(b, t_m, 4, generator=g, dtype=dtype), _masks((30, 22, 17), (1,) * b, t_m, 1)[0]),
              "vision": (torch.randn(b, 24, 3, generator=g, dtype=dtype), _masks((24, 20, 12), (1,) * b, 24, 1)[0])}
    words = torch.randn(b, t_l, 6, generator=g, dtype=dtype)
    return frames, words, _masks((1,) * b, (10, 7, 5), 1, t_l)[1]


def test_the_aligner_with_a_covering_band_is_the_full_aligner(monkeypatch):
    """The banded path end to end (emissions of the band's words only, posteriors per frame) with
    a band forced as wide as the words: the full aligner's numbers."""
    frames, words, word_mask = _aligner_inputs(dtype=D64)
    aligner = WordAligner(6, {"audio": 4, "vision": 3}, band=10).double().eval()
    full_lik, full_posts = aligner(frames, words, word_mask)                    # W >= T_l: the full lattice
    assert all(torch.is_tensor(p) for p in full_posts.values())
    monkeypatch.setattr(aligner_module, "band_starts", lambda grid_mask, wm, width: torch.zeros(grid_mask.shape, dtype=torch.long))
    lik, posts = aligner(frames, words, word_mask)
    torch.testing.assert_close(lik, full_lik, rtol=0, atol=1e-6)
    for m, post in posts.items():
        assert isinstance(post, band.BandPosterior)
        torch.testing.assert_close(post.rows(0, 100), full_posts[m], rtol=0, atol=1e-6)


def test_the_aligner_runs_the_lattice_on_the_band_only(monkeypatch):
    frames, words, word_mask = _aligner_inputs()
    shapes = []
    real = aligner_module.monotone_alignment
    monkeypatch.setattr(aligner_module, "monotone_alignment", lambda e, *a: shapes.append(e.shape) or real(e, *a))
    aligner = WordAligner(6, {"audio": 4, "vision": 3}, band=3)
    words.requires_grad_(True)
    log_lik, posts = aligner(frames, words, word_mask)
    assert shapes == [torch.Size([3, 30, 3])]                                  # (B, G, W), not (B, G, T_l)
    log_lik.sum().backward()
    assert torch.isfinite(words.grad).all() and words.grad.abs().sum() > 0
    post = posts["audio"]
    assert post.values.shape == (3, 30, 3) and post.starts.shape == (3, 30)
    dense = post.rows(0, 30)
    torch.testing.assert_close(dense.exp().sum(-1), frames["audio"][1].float(), rtol=0, atol=1e-3)   # float32
    # the relaxed-OT plan reads the band's posteriors block by block, as it reads the full ones
    scores = WordAligner.scores(post)
    blocked_out = torch.zeros(3, 1, 10).masked_fill(~word_mask[:, None], -math.inf)
    torch.testing.assert_close(torch.cat([scores(s, 7, blocked_out) for s in range(0, 30, 7)], 1),
                               dense.clamp_min(-1e4) + blocked_out)


def test_the_model_trains_with_a_band_and_rejects_a_negative_one():
    with pytest.raises(ValueError, match="aligner_band"):
        AlignMambaConfig(aligner_band=-1)
    torch.manual_seed(0)
    model = AlignMamba(AlignMambaConfig(aligner_band=3, d_model=16, n_layers=1))
    text, audio, vision = torch.randn(2, 12, 768), torch.randn(2, 40, 5), torch.randn(2, 30, 20)
    out = model(text, audio, vision)
    (out["M"].sum() + out["plan_loss"]).backward()
    assert torch.isfinite(out["plan_loss"]) and model.aligner.emissions["audio"].read.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("direct", [True, False], ids=["posteriors-per-thread", "sqrt-T-checkpoints"])
@pytest.mark.parametrize("width", [0, 3])
def test_best_words_are_the_posteriors_argmax_without_them(width, direct, monkeypatch):
    # both of the kernel's routes: a sample's posteriors in its thread's workspace, and (long
    # samples) the betas recomputed from every ceil(sqrt(T_m))-th frame
    monkeypatch.setattr(monotone_kernel, "BEST_DIRECT_MAX_CELLS", monotone_kernel.BEST_DIRECT_MAX_CELLS if direct else 0)
    emit, frames, words = _case(t_m=80, t_l=14, n_m=(80, 41, 9, 1), n_l=(14, 9, 3, 1))
    starts = band.band_starts(frames, words, width)
    banded = emit if starts is None else _in_band(emit, starts, width)[0]
    log_lik, log_post = lattice.monotone_alignment(banded, frames, words, 0.05, starts)
    got_lik, best = lattice.best_words(banded, frames, words, 0.05, starts)
    want = (log_post.argmax(-1) + lattice.starts_or_full(frames, starts)).masked_fill(~frames, -1)
    assert torch.equal(best, want) and torch.equal(got_lik, log_lik)
    # where the kernel does not apply (float64): the argmax of the TorchScript posteriors
    lik64, best64 = lattice.best_words(banded.double(), frames, words, 0.05, starts)
    assert torch.equal(best64[frames], want[frames]) and (best64[~frames] == -1).all()


def test_the_model_at_inference_plans_from_best_words_with_the_same_output(monkeypatch):
    calls = []
    real = monotone_kernel.best_words
    monkeypatch.setattr(monotone_kernel, "best_words", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    for width in (0, 3):
        model = AlignMamba(AlignMambaConfig(aligner_band=width, d_model=16, n_layers=1)).eval()
        text, audio, vision = torch.randn(2, 12, 768), torch.randn(2, 40, 5), torch.randn(2, 30, 20)
        with torch.no_grad():
            lean = model(text, audio, vision)["M"]
            assert len(calls) == 1
            full = model(text, audio, vision, with_plans=True)["M"]                  # every plan: the posteriors
        assert len(calls) == 1 and torch.equal(lean, full)
        calls.clear()


@pytest.mark.parametrize("width", [3, 6])
def test_the_relaxed_plan_reads_a_band_without_dense_rows_and_picks_the_same_words(width, monkeypatch):
    from mmsa_alignmamba.alignment import relaxed_ot_from_scores
    from mmsa_alignmamba.alignment.aligner import BestWords
    emit, frames, words = _case()
    starts = band.band_starts(frames, words, width)
    banded, _ = _in_band(emit, starts, width)
    _, post = lattice.monotone_alignment(banded, frames, words, 1, starts)
    post[:, 5:9] = 0.0                                  # ties inside the band: the lowest word wins
    post = post.masked_fill(~frames[..., None], -math.inf)
    values = torch.randn(*frames.shape, 4)
    posteriors = {"band": band.BandPosterior(post, starts, words.shape[1]),
                  "best": BestWords(torch.randint(0, 3, frames.shape).masked_fill(~frames, -1), words.shape[1])}
    for name, log_post in posteriors.items():
        scores = WordAligner.scores(log_post)
        dense = relaxed_ot_from_scores(scores.block, values, frames, words, rescale=False, reduce="mean")
        calls = []
        monkeypatch.setattr(type(log_post), "rows", lambda self, *a: calls.append(a))
        sparse = relaxed_ot_from_scores(scores, values, frames, words, rescale=False, reduce="mean")
        monkeypatch.undo()
        assert calls == [], name                        # no dense row was built
        assert torch.equal(sparse.assignment, dense.assignment), name
        assert torch.equal(sparse.aligned, dense.aligned), name
