"""Tests of mmsa_alignmamba.alignment: relaxed / soft OT alignment and MMD² (METHOD.md §2–3).

References are written independently of the module: explicit Python loops over float64 values.
geomloss (a test dependency) is the external oracle for MMD²: SamplesLoss("gaussian") = ½·MMD².
"""
import math

import pytest
import torch
from geomloss import SamplesLoss

import mmsa_alignmamba.alignment as alignment_module
from mmsa_alignmamba.alignment import (
    OTAlignment,
    alignment_loss,
    mmd2,
    relaxed_ot_align,
    soft_ot_align,
)

D64 = torch.float64


def _lengths_mask(lengths, t):
    return torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]


def _random_case(seed=0, b=3, t_m=11, t_l=6, d=5, src_len=(11, 7, 1), anc_len=(6, 2, 4)):
    g = torch.Generator().manual_seed(seed)
    source = torch.randn(b, t_m, d, generator=g, dtype=D64)
    anchor = torch.randn(b, t_l, d, generator=g, dtype=D64)
    return source, anchor, _lengths_mask(src_len, t_m), _lengths_mask(anc_len, t_l)


def _brute_force_plan(source, anchor, source_mask, anchor_mask):
    """Dense relaxed-OT plan by explicit loops: 1/T_m(true) on argmin_j over valid anchors."""
    b, t_m, _ = source.shape
    t_l = anchor.shape[1]
    plan = torch.zeros(b, t_m, t_l, dtype=D64)
    for bi in range(b):
        n_m = int(source_mask[bi].sum())
        for i in range(t_m):
            if not source_mask[bi, i]:
                continue
            best_j, best_c = None, math.inf
            for j in range(t_l):
                if not anchor_mask[bi, j]:
                    continue
                x, y = source[bi, i], anchor[bi, j]
                c = 1.0 - float(x @ y) / (float(x.norm()) * float(y.norm()))
                if c < best_c:
                    best_j, best_c = j, c
            plan[bi, i, best_j] = 1.0 / n_m
    return plan


# ------------------------------------------------------------------ relaxed OT (hard)


def test_relaxed_plan_matches_brute_force_and_row_sums():
    source, anchor, sm, am = _random_case()
    out = relaxed_ot_align(source, anchor, sm, am)
    assert isinstance(out, OTAlignment) and out.is_sparse and out.plan is None
    ref = _brute_force_plan(source, anchor, sm, am)
    torch.testing.assert_close(out.dense_plan(), ref, rtol=0, atol=1e-15)
    # Sparse fields agree with the dense reference.
    assert out.assignment.dtype == torch.long and out.assignment.shape == sm.shape
    assert torch.equal(out.assignment[sm], ref.argmax(-1)[sm])
    assert (out.assignment[~sm] == -1).all()
    lengths = sm.sum(1, keepdim=True).to(D64)
    torch.testing.assert_close(out.mass, sm.to(D64) / lengths)
    torch.testing.assert_close(out.dense_plan().sum(-1), sm.to(D64) / lengths)


def test_relaxed_column_constraint_not_enforced():
    # Every source step is a copy of anchor step 2 plus noise: all mass lands on column 2,
    # which full OT (columns 1/T_l) would forbid.
    g = torch.Generator().manual_seed(1)
    anchor = torch.randn(1, 4, 8, generator=g, dtype=D64)
    source = anchor[:, 2:3].repeat(1, 9, 1) + 0.01 * torch.randn(1, 9, 8, generator=g, dtype=D64)
    plan = relaxed_ot_align(source, anchor).dense_plan()
    torch.testing.assert_close(plan.sum(1), torch.tensor([[0.0, 0.0, 1.0, 0.0]], dtype=D64))


@pytest.mark.parametrize("rescale", [False, True])
def test_aligned_equals_plan_transpose_times_source(rescale):
    source, anchor, sm, am = _random_case(seed=2)
    source[~sm] = 1e3  # garbage in padding must not leak in
    out = relaxed_ot_align(source, anchor, sm, am, rescale=rescale)
    clean = source.masked_fill(~sm[:, :, None], 0.0)
    expected = out.dense_plan().transpose(1, 2) @ clean
    if rescale:
        expected = expected * am.sum(1).to(D64)[:, None, None]
    torch.testing.assert_close(out.aligned, expected)
    assert out.aligned.shape == anchor.shape
    assert (out.aligned[~am] == 0).all()


def test_blockwise_equals_full_including_gradients(monkeypatch):
    source, anchor, sm, am = _random_case(seed=3, b=2, t_m=37, t_l=5, d=6,
                                          src_len=(37, 20), anc_len=(5, 3))
    weight = torch.randn(2, 5, 6, dtype=D64, generator=torch.Generator().manual_seed(9))
    results = []
    # (block_size, cost-block cap): the cap of 30 entries with B·T_l = 10 gives 3-row blocks
    for block, cap in ((1, None), (4, None), (10_000, 30), (10_000, None)):
        if cap:
            monkeypatch.setattr(alignment_module, "_COST_BLOCK_ELEMS", cap)
        else:
            monkeypatch.undo()
        src = source.clone().requires_grad_(True)
        out = relaxed_ot_align(src, anchor, sm, am, block_size=block)
        (out.aligned * weight).sum().backward()
        results.append((out.assignment, out.aligned.detach(), src.grad))
    for assignment, aligned, grad in results[:-1]:
        assert torch.equal(assignment, results[-1][0])
        torch.testing.assert_close(aligned, results[-1][1])
        torch.testing.assert_close(grad, results[-1][2])


def test_relaxed_gradient_flows_through_source_only():
    source, anchor, sm, am = _random_case(seed=4)
    src = source.clone().requires_grad_(True)
    anc = anchor.clone().requires_grad_(True)
    out = relaxed_ot_align(src, anc, sm, am)
    weight = torch.randn_like(out.aligned)
    (out.aligned * weight).sum().backward()
    # d/d source_i of Σ_j <W_j, aligned_j> = mass_i · W[assignment_i]; 0 on padding.
    idx = out.assignment.clamp_min(0)
    expected = out.mass[:, :, None] * torch.gather(weight, 1, idx[:, :, None].expand(-1, -1, 5))
    torch.testing.assert_close(src.grad, expected)
    assert anc.grad is None  # the argmin passes no gradient


def test_padding_never_chosen_and_true_lengths():
    g = torch.Generator().manual_seed(5)
    t_m, t_l, d = 8, 6, 4
    source = torch.randn(2, t_m, d, generator=g, dtype=D64)
    anchor = torch.randn(2, t_l, d, generator=g, dtype=D64)
    sm, am = _lengths_mask([8, 5], t_m), _lengths_mask([6, 3], t_l)
    # Padded anchor steps of sample 1 are exact copies of its source steps: cost 0, the most
    # similar of all, yet they must never be chosen.
    anchor[1, 3:] = source[1, :3]
    # Padded source steps hold garbage; they must carry no mass and change nothing.
    source[1, 5:] = float("nan")
    out = relaxed_ot_align(source, anchor, sm, am)
    assert (out.assignment[1, :5] < 3).all()
    assert (out.dense_plan()[1, :, 3:] == 0).all()
    assert (out.mass[1, 5:] == 0).all() and (out.dense_plan()[1, 5:] == 0).all()
    torch.testing.assert_close(out.mass[1, :5], torch.full((5,), 1 / 5, dtype=D64))
    assert torch.isfinite(out.aligned).all()
    # Same result as the unpadded sample on its own (1/T uses the true length, 5 not 8).
    alone = relaxed_ot_align(source[1:, :5], anchor[1:, :3])
    torch.testing.assert_close(out.aligned[1, :3], alone.aligned[0])
    assert torch.equal(out.assignment[1, :5], alone.assignment[0])


def test_missing_anchor_raises():
    source, anchor, sm, am = _random_case()
    am[1] = False
    with pytest.raises(ValueError, match="anchor"):
        relaxed_ot_align(source, anchor, sm, am)
    with pytest.raises(ValueError, match="anchor"):
        soft_ot_align(source, anchor, sm, am)


def test_empty_source_sample_gives_zero():
    source, anchor, sm, am = _random_case()
    sm[2] = False
    src = source.clone().requires_grad_(True)
    out = relaxed_ot_align(src, anchor, sm, am)
    assert (out.aligned[2] == 0).all() and (out.mass[2] == 0).all()
    out.aligned.sum().backward()
    assert torch.isfinite(src.grad).all()


# ------------------------------------------------------------------ soft OT


@pytest.mark.parametrize("sinkhorn_iters", [0, 3])  # 3: rows exact even far from convergence
def test_soft_plan_rows_padding_and_product(sinkhorn_iters):
    source, anchor, sm, am = _random_case(seed=6)
    source[~sm] = float("inf")
    anchor[~am] = float("nan")
    src = source.clone().requires_grad_(True)
    anc = anchor.clone().requires_grad_(True)
    out = soft_ot_align(src, anc, sm, am, temperature=0.3, sinkhorn_iters=sinkhorn_iters)
    assert not out.is_sparse and out.assignment is None and out.mass is None
    plan = out.dense_plan()
    assert plan is out.plan and plan.shape == (3, 11, 6)
    lengths = sm.sum(1, keepdim=True).to(D64)
    torch.testing.assert_close(plan.sum(-1), sm.to(D64) / lengths)
    assert (plan[~sm] == 0).all()
    assert (plan.transpose(1, 2)[~am] == 0).all()
    clean = source.masked_fill(~sm[:, :, None], 0.0)
    torch.testing.assert_close(out.aligned, plan.transpose(1, 2) @ clean)
    # Gradients flow through the plan into both inputs, finite despite the garbage padding.
    weight = torch.randn_like(out.aligned)
    (out.aligned * weight).sum().backward()
    assert torch.isfinite(src.grad).all() and torch.isfinite(anc.grad).all()
    assert anc.grad[am].abs().sum() > 1e-3
    assert (anc.grad[~am] == 0).all() and (src.grad[~sm] == 0).all()


def test_softmax_plan_matches_loop_reference_and_blocks():
    source, anchor, sm, am = _random_case(seed=7)
    tau = 0.25
    ref = torch.zeros(3, 11, 6, dtype=D64)
    for b in range(3):
        n_m = int(sm[b].sum())
        for i in range(n_m):
            logits = []
            for j in range(int(am[b].sum())):
                x, y = source[b, i], anchor[b, j]
                logits.append(-(1.0 - float(x @ y) / float(x.norm() * y.norm())) / tau)
            z = sum(math.exp(v) for v in logits)
            for j, v in enumerate(logits):
                ref[b, i, j] = math.exp(v) / z / n_m
    full = soft_ot_align(source, anchor, sm, am, temperature=tau)
    torch.testing.assert_close(full.plan, ref)
    grads = []
    for block in (1, 3, 10_000):
        src = source.clone().requires_grad_(True)
        anc = anchor.clone().requires_grad_(True)
        out = soft_ot_align(src, anc, sm, am, temperature=tau, block_size=block)
        torch.testing.assert_close(out.aligned, full.aligned)
        out.aligned.square().sum().backward()
        grads.append((src.grad, anc.grad))
    for g_src, g_anc in grads[:-1]:
        torch.testing.assert_close(g_src, grads[-1][0])
        torch.testing.assert_close(g_anc, grads[-1][1])


def test_soft_approaches_hard_plan_as_temperature_vanishes():
    source, anchor, sm, am = _random_case(seed=8)
    hard = relaxed_ot_align(source, anchor, sm, am)
    gaps = [
        (soft_ot_align(source, anchor, sm, am, temperature=t).plan - hard.dense_plan()).abs().max()
        for t in (1.0, 0.1, 1e-4)
    ]
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 1e-8
    torch.testing.assert_close(
        soft_ot_align(source, anchor, sm, am, temperature=1e-4).aligned, hard.aligned
    )


def test_sinkhorn_matches_both_marginals():
    source, anchor, sm, am = _random_case(seed=9)
    plan = soft_ot_align(source, anchor, sm, am, temperature=0.5, sinkhorn_iters=300).plan
    torch.testing.assert_close(plan.sum(1), am.to(D64) / am.sum(1, keepdim=True), atol=1e-6,
                               rtol=0)
    # The softmax variant does not balance the columns.
    soft = soft_ot_align(source, anchor, sm, am, temperature=0.5).plan
    assert (soft.sum(1) - am.to(D64) / am.sum(1, keepdim=True)).abs().max() > 1e-3


def test_soft_rejects_bad_arguments():
    source, anchor, sm, am = _random_case()
    with pytest.raises(ValueError):
        soft_ot_align(source, anchor, sm, am, temperature=0.0)
    with pytest.raises(ValueError):
        soft_ot_align(source, anchor, sm, am, sinkhorn_iters=-1)


# ------------------------------------------------------------------ MMD²


def _brute_force_mmd2(x, y, x_mask, y_mask, sigmas):
    """Per-sample biased MMD² by double loops in float64; kernels averaged over σ."""
    out = []
    for b in range(x.shape[0]):
        xs = [x[b, i].to(D64) for i in range(x.shape[1]) if x_mask[b, i]]
        ys = [y[b, j].to(D64) for j in range(y.shape[1]) if y_mask[b, j]]
        if not xs or not ys:
            out.append(0.0)
            continue
        if sigmas == "median":
            pooled = xs + ys
            dists = sorted(float((pooled[i] - pooled[j]).norm())
                           for i in range(len(pooled)) for j in range(i + 1, len(pooled)))
            bws = [dists[(len(dists) - 1) // 2]]  # lower median
        else:
            bws = [sigmas] if isinstance(sigmas, float) else list(sigmas)

        def k(u, v):
            sq = float((u - v).square().sum())
            return sum(math.exp(-sq / (2 * s * s)) for s in bws) / len(bws)

        def mean_k(us, vs):
            return sum(k(u, v) for u in us for v in vs) / (len(us) * len(vs))

        out.append(mean_k(xs, xs) + mean_k(ys, ys) - 2 * mean_k(xs, ys))
    return torch.tensor(out, dtype=D64)


@pytest.mark.parametrize("sigmas", [0.7, (0.5, 2.0, 5.0), "median"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mmd2_matches_brute_force(sigmas, dtype):
    g = torch.Generator().manual_seed(10)
    x = torch.randn(4, 7, 3, generator=g, dtype=D64)
    y = torch.randn(4, 5, 3, generator=g, dtype=D64) * 1.5 + 0.4
    xm, ym = _lengths_mask([7, 4, 1, 3], 7), _lengths_mask([5, 5, 2, 1], 5)
    x[~xm] = float("nan")  # padding must be excluded
    y[~ym] = float("inf")
    ref = _brute_force_mmd2(x, y, xm, ym, sigmas)
    got = mmd2(x.to(dtype), y.to(dtype), xm, ym, sigmas=sigmas)
    assert got.shape == (4,)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(got.to(D64), ref, atol=tol, rtol=tol)


def test_mmd2_zero_for_identical_positive_for_shifted():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(3, 20, 4, generator=g)
    for sigmas in (1.0, (0.3, 3.0), "median"):
        same = mmd2(x, x.clone(), sigmas=sigmas)
        assert same.abs().max() < 1e-6
        shifted = mmd2(x, torch.randn(3, 20, 4, generator=g) + 2.0, sigmas=sigmas)
        assert (shifted > 1e-2).all()


def test_mmd2_matches_geomloss_half():
    g = torch.Generator().manual_seed(12)
    x = torch.randn(3, 9, 4, generator=g, dtype=D64)
    y = torch.randn(3, 6, 4, generator=g, dtype=D64) + 0.5
    for sigma in (0.5, 1.0, 3.0):
        oracle = SamplesLoss("gaussian", blur=sigma, backend="tensorized")(x, y)
        torch.testing.assert_close(mmd2(x, y, sigmas=sigma), 2 * oracle)


def test_mmd2_empty_side_contributes_zero_with_finite_grad():
    g = torch.Generator().manual_seed(13)
    x = torch.randn(3, 5, 2, generator=g, requires_grad=True)
    y = torch.randn(3, 4, 2, generator=g, requires_grad=True)
    xm = _lengths_mask([5, 0, 3], 5)
    ym = _lengths_mask([4, 2, 0], 4)
    for sigmas in (1.0, "median"):
        x.grad = y.grad = None
        out = mmd2(x, y, xm, ym, sigmas=sigmas)
        assert out[1] == 0 and out[2] == 0 and out[0] > 0
        out.sum().backward()
        assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
        assert (x.grad[~xm] == 0).all() and (x.grad[1:] == 0).all()


def test_mmd2_rejects_bad_sigmas():
    x = torch.randn(1, 3, 2)
    for bad in ("mean", 0.0, (), (1.0, -1.0)):
        with pytest.raises(ValueError):
            mmd2(x, x, sigmas=bad)


def test_alignment_loss_composes_mmd_terms():
    g = torch.Generator().manual_seed(14)
    lang = torch.randn(3, 6, 4, generator=g)
    a = torch.randn(3, 6, 4, generator=g)
    v = torch.randn(3, 6, 4, generator=g) + 1.0
    lm = _lengths_mask([6, 3, 0], 6)  # sample 2 has no language: excluded from the mean
    per = mmd2(v, lang, lm, lm, "median") + mmd2(a, lang, lm, lm, "median")
    torch.testing.assert_close(alignment_loss(a, v, lang, lm, "median"), per[:2].mean())
    torch.testing.assert_close(alignment_loss(None, v, lang, lm, 1.0),
                               mmd2(v, lang, lm, lm, 1.0)[:2].mean())


def test_end_to_end_alignment_loss_backward():
    """OT alignment feeding the MMD loss: gradients reach the source encoders' outputs."""
    g = torch.Generator().manual_seed(15)
    audio = torch.randn(2, 30, 8, generator=g, requires_grad=True)
    lang = torch.randn(2, 5, 8, generator=g, requires_grad=True)
    am, lm = _lengths_mask([30, 12], 30), _lengths_mask([5, 4], 5)
    aligned = relaxed_ot_align(audio, lang, am, lm, block_size=7, rescale=True).aligned
    loss = alignment_loss(aligned, None, lang, lm, sigmas="median")
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert audio.grad[am].abs().sum() > 0 and (audio.grad[~am] == 0).all()
    assert lang.grad[lm].abs().sum() > 0


def test_autocast_does_not_lower_precision():
    # Under bf16 autocast the argmin and the MMD distance expansion must still run in float32.
    g = torch.Generator().manual_seed(16)
    source, anchor = torch.randn(2, 40, 16, generator=g), torch.randn(2, 7, 16, generator=g)
    plain_assign = relaxed_ot_align(source, anchor).assignment
    plain_mmd = mmd2(source, anchor + 0.1, sigmas="median")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(relaxed_ot_align(source, anchor).assignment, plain_assign)
        auto_mmd = mmd2(source, anchor + 0.1, sigmas="median")
    assert auto_mmd.dtype == torch.float32
    torch.testing.assert_close(auto_mmd, plain_mmd)
