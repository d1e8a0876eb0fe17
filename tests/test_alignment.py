"""Tests of mmsa_alignmamba.alignment: relaxed / soft OT alignment and MMD² (docs/method.md §2–3).

References are written independently of the module: explicit Python loops over float64 values.
geomloss (a test dependency) is the external oracle for MMD²: SamplesLoss("gaussian") = ½·MMD².
"""
import itertools
import math

import pytest
import torch
from geomloss import SamplesLoss

import mmsa_alignmamba.alignment as alignment_module
from mmsa_alignmamba.alignment import ot as ot_module
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
            monkeypatch.setattr(ot_module, "_COST_BLOCK_ELEMS", cap)
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


def test_sinkhorn_padding_fill_is_below_every_valid_entry_with_a_strong_position_prior():
    """With the prior, −C/τ − β·δ²/τ reaches far below −2/τ (β = 1, τ = 0.1, 50 words): the fill of
    the padded entries must still be below every valid one, and the rows stay exact."""
    from mmsa_alignmamba.alignment.common import position_gap, unit_rows
    from mmsa_alignmamba.alignment.soft import neg_cost, padding_fill
    g = torch.Generator().manual_seed(3)
    source, anchor = torch.randn(2, 60, 8, generator=g, dtype=D64), torch.randn(2, 50, 8, generator=g, dtype=D64)
    sm = torch.arange(60)[None] < torch.tensor([[60], [41]])
    am = torch.arange(50)[None] < torch.tensor([[50], [30]])
    logits = neg_cost(unit_rows(source), unit_rows(anchor), 0.1) - position_gap(sm, am, dtype=D64).square() / 0.1
    valid = sm[:, :, None] & am[:, None, :]
    assert logits[valid].min() < -2 / 0.1 - 1.0e4          # where the old fill stood
    assert padding_fill(logits, valid) < logits[valid].min()
    plan = soft_ot_align(source, anchor, sm, am, temperature=0.1, sinkhorn_iters=5, position_prior=1.0).plan
    torch.testing.assert_close(plan.sum(-1), sm.to(D64) / sm.sum(1, keepdim=True), atol=1e-9, rtol=0)
    assert (plan.transpose(1, 2)[~am] == 0).all()


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


def test_mmd2_float32_is_exact_on_the_diagonal_for_large_features():
    """Features far from the origin: the ||x||² + ||y||² − 2xy expansion leaves rounding residue on
    the self-distance diagonals and cancels the cross terms in float32 (errors of 1e-4 before the
    fix); float64 is the reference."""
    g = torch.Generator().manual_seed(12)
    x = torch.randn(2, 30, 8, generator=g, dtype=D64) + 100.0
    y = torch.randn(2, 20, 8, generator=g, dtype=D64) * 1.2 + 100.3
    for sigmas in (1.0, (0.5, 1.0, 2.0)):
        ref = mmd2(x, y, sigmas=sigmas)
        got = mmd2(x.float(), y.float(), sigmas=sigmas)
        torch.testing.assert_close(got.to(D64), ref, atol=1e-6, rtol=1e-5)


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
    torch.testing.assert_close(alignment_loss({"audio": a, "vision": v}, lang, lm, "median"), per[:2].mean())
    torch.testing.assert_close(alignment_loss({"vision": v}, lang, lm, 1.0),
                               mmd2(v, lang, lm, lm, 1.0)[:2].mean())
    # each term averages over the samples that have both its modality and language
    present = {"audio": torch.tensor([True, False, True]), "vision": torch.ones(3, dtype=torch.bool)}
    torch.testing.assert_close(alignment_loss({"audio": a, "vision": v}, lang, lm, 1.0, present),
                               mmd2(a, lang, lm, lm, 1.0)[0] + mmd2(v, lang, lm, lm, 1.0)[:2].mean())


def test_end_to_end_alignment_loss_backward():
    """OT alignment feeding the MMD loss: gradients reach the source encoders' outputs."""
    g = torch.Generator().manual_seed(15)
    audio = torch.randn(2, 30, 8, generator=g, requires_grad=True)
    lang = torch.randn(2, 5, 8, generator=g, requires_grad=True)
    am, lm = _lengths_mask([30, 12], 30), _lengths_mask([5, 4], 5)
    aligned = relaxed_ot_align(audio, lang, am, lm, block_size=7, rescale=True).aligned
    loss = alignment_loss({"audio": aligned}, lang, lm, sigmas="median")
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


# ------------------------------------------------------------------ our options on the plans


def _brute_force_gap(source_mask, anchor_mask):
    """δ(i, j) by loops: (rank_i + ½)·n_l/n_m − (rank_j + ½) over valid steps, 0 elsewhere."""
    b, t_m = source_mask.shape
    t_l = anchor_mask.shape[1]
    gap = torch.zeros(b, t_m, t_l)
    for bi in range(b):
        src = [i for i in range(t_m) if source_mask[bi, i]]
        anc = [j for j in range(t_l) if anchor_mask[bi, j]]
        for r, i in enumerate(src):
            for q, j in enumerate(anc):
                gap[bi, i, j] = (r + 0.5) * len(anc) / len(src) - (q + 0.5)
    return gap


def test_position_gap_matches_loops_and_blocks():
    _, _, sm, am = _random_case(seed=21)
    sm[1, 2] = False  # a hole inside the sequence: ranks skip it
    full = alignment_module.position_gap(sm, am)
    torch.testing.assert_close(full, _brute_force_gap(sm, am))
    torch.testing.assert_close(alignment_module.position_gap(sm, am, 4, 3), full[:, 4:7])


def test_strong_position_prior_makes_ot_follow_time():
    """β → ∞: every source step goes to the anchor step nearest its time-proportional position."""
    # lengths chosen so that no source step lies exactly halfway between two anchor steps
    source, anchor, sm, am = _random_case(seed=22, src_len=(10, 8, 1), anc_len=(6, 3, 3))
    out = relaxed_ot_align(source, anchor, sm, am, position_prior=1e6, block_size=4)
    nearest = _brute_force_gap(sm, am).abs().masked_fill(~am[:, None, :], math.inf).argmin(-1)
    assert torch.equal(out.assignment[sm], nearest[sm])
    # and with β = 0 it is the paper's plan
    torch.testing.assert_close(relaxed_ot_align(source, anchor, sm, am, position_prior=0.0).dense_plan(),
                               _brute_force_plan(source, anchor, sm, am))


@pytest.mark.parametrize("soft", [False, True])
def test_values_are_transported_and_mean_reduce_averages_them(soft):
    source, anchor, sm, am = _random_case(seed=23)
    values = torch.randn(*source.shape[:2], 2, dtype=D64)
    align = (lambda **k: soft_ot_align(source, anchor, sm, am, temperature=0.3, **k)) if soft else \
        (lambda **k: relaxed_ot_align(source, anchor, sm, am, **k))
    summed, mean = align(values=values), align(values=values, reduce="mean")
    plan = summed.dense_plan()                                   # same plan: the cost ignores values
    torch.testing.assert_close(summed.aligned, plan.mT @ values.masked_fill(~sm[..., None], 0.0))
    received = plan.sum(1)                                       # (B, T_l) mass per anchor step
    expected = (plan.mT @ values.masked_fill(~sm[..., None], 0.0)) / received.clamp_min(1e-300)[..., None]
    torch.testing.assert_close(mean.aligned, expected.masked_fill(received[..., None] == 0, 0.0))
    assert torch.equal(mean.scale, torch.ones_like(mean.scale))
    with pytest.raises(ValueError, match="reduce"):
        align(reduce="max")


def test_relaxed_plan_takes_any_score():
    """relaxed_ot_from_scores is the argmax of whatever scores it is given (here a fixed random table)."""
    _, _, sm, am = _random_case(seed=24)
    table = torch.randn(sm.shape[0], sm.shape[1], am.shape[1])
    values = torch.randn(*sm.shape, 3)
    out = alignment_module.relaxed_ot_from_scores(lambda start, rows, blocked: table[:, start:start + rows] + blocked,
                                        values, sm, am, block_size=2)
    assert torch.equal(out.assignment[sm], table.masked_fill(~am[:, None, :], -math.inf).argmax(-1)[sm])
    assert (out.assignment[~sm] == -1).all()


def test_plan_hits_counts_hard_and_soft_plans():
    truth = torch.tensor([[1, 2, -1, 3, 3], [0, 0, 1, -1, -1]])
    assignment = torch.tensor([[1, 3, 2, 1, 3], [0, 2, 1, -1, -1]])   # -1: padded source steps
    mass = (assignment >= 0).double() / (assignment >= 0).sum(1, keepdim=True)
    hard = OTAlignment(aligned=torch.zeros(2, 4, 1), scale=torch.ones(2), assignment=assignment, mass=mass)
    # counted: truth >= 0 and valid -> 4 + 3 = 7; exact: (1,-,-,-,3) 2 + (0,-,1) 2 = 4; within 1: +(2 vs 3),(3 vs 1 no),(2 vs 0 no) = 5
    assert alignment_module.plan_hits(hard, truth).tolist() == [4.0, 5.0, 7.0]
    dense = torch.zeros(1, 2, 4)
    dense[0, 0] = torch.tensor([0.5, 0.25, 0.25, 0.0]) * 0.5   # rows keep their mass 1/T_m
    dense[0, 1] = torch.tensor([0.0, 0.0, 0.0, 1.0]) * 0.5
    soft = OTAlignment(aligned=torch.zeros(1, 4, 1), scale=torch.ones(1), plan=dense)
    hits = alignment_module.plan_hits(soft, torch.tensor([[1, 1]]))
    torch.testing.assert_close(hits, torch.tensor([0.25 + 0.0, 1.0 + 0.0, 2.0]))
    with pytest.raises(ValueError, match="does not match"):
        alignment_module.plan_hits(hard, truth[:, :3])


# ------------------------------------------------------------------ the learned likelihood cost


def _toy_speech(n=96, t_l=8, t_m=40, d=4, seed=0):
    """Utterances of random words with freely varying durations; each frame is a noisy copy of its
    word's signature, which the word's features predict linearly. -> words, frames, masks, truth."""
    g = torch.Generator().manual_seed(seed)
    vocab = torch.randn(30, 6, generator=g)                        # word features
    mix = torch.randn(6, d, generator=g)                           # features -> frame signature
    ids = torch.randint(0, 30, (n, t_l), generator=g)
    words = vocab[ids] + 0.1 * torch.randn(n, t_l, 6, generator=g)
    durations = torch.distributions.Gamma(1.5, 1.0).sample((n, t_l)) + 0.2
    bounds = durations.cumsum(1) / durations.sum(1, keepdim=True) * t_m
    truth = (torch.arange(t_m)[None, :, None] + 0.5 >= bounds[:, None, :]).sum(-1).clamp_max(t_l - 1)
    frames = (vocab[ids] @ mix).gather(1, truth[..., None].expand(-1, -1, d))
    frames = frames + 0.8 * torch.randn(n, t_m, d, generator=g) + torch.randn(n, 1, d, generator=g)
    return words, frames, torch.ones(n, t_m, dtype=torch.bool), torch.ones(n, t_l, dtype=torch.bool), truth


def _toy_audiovisual(n=96, seed=0):
    """The toy utterances seen by two sources on one clock: 40 'audio' frames and 30 'vision'
    frames of the same words, each a noisy copy of its word's signature in that source."""
    words, audio, fm_a, wm, truth_a = _toy_speech(n=n, t_m=40, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    t_v = 30
    frame_time = (torch.arange(t_v) + 0.5) / t_v * 40                      # vision frame k at audio time
    truth_v = truth_a[:, frame_time.long()]
    mix = torch.randn(6, 3, generator=g)
    vision = (words @ mix).gather(1, truth_v[..., None].expand(-1, -1, 3)) + 0.8 * torch.randn(n, t_v, 3, generator=g)
    return words, {"audio": (audio, fm_a), "vision": (vision, torch.ones(n, t_v, dtype=torch.bool))}, wm, \
        {"audio": truth_a, "vision": truth_v}


def _accuracy(aligner, words, frames, wm, truth):
    aligner.eval()
    with torch.no_grad():
        _, posts = aligner(frames, words, wm)
    out = {}
    for m, (x, mask) in frames.items():
        plan = alignment_module.relaxed_ot_from_scores(aligner.scores(posts[m]), x, mask, wm)
        exact, _, count = alignment_module.plan_hits(plan, truth[m])
        out[m] = float(exact / count)
    return out


@pytest.mark.parametrize("structure", ["monotone", "mixture"])
def test_learned_cost_aligns_without_labels(structure):
    """Trained only on the frames' likelihood, the cost aligns frames to words far better than the
    time-proportional plan, and better than before training. (No true alignment is used.)"""
    torch.manual_seed(0)
    words, frames, wm, truth = _toy_audiovisual()
    aligner = alignment_module.WordAligner(6, {"audio": 4, "vision": 3}, structure)
    time_accuracy = {m: float((lambda h: h[0] / h[2])(alignment_module.plan_hits(
        alignment_module.time_proportional(x, mask, wm), truth[m]))) for m, (x, mask) in frames.items()}
    before = _accuracy(aligner, words, frames, wm, truth)
    optimizer = torch.optim.Adam(aligner.parameters(), lr=0.03)
    for _ in range(150):
        aligner.train()
        log_lik, _ = aligner(frames, words, wm)
        loss = aligner.nll(log_lik, frames)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = _accuracy(aligner, words, frames, wm, truth)
    for m in frames:
        assert after[m] > time_accuracy[m] + 0.25 and after[m] > before[m] + 0.05, (m, before, time_accuracy, after)


def test_one_clock_lets_each_source_borrow_the_others_evidence():
    """Monotone: vision frames that carry no signature at all are still aligned, through the audio
    frames recorded at the same time; the mixture, frame by frame, cannot do that."""
    torch.manual_seed(0)
    words, frames, wm, truth = _toy_audiovisual(n=64)
    frames["vision"] = (torch.randn_like(frames["vision"][0]), frames["vision"][1])   # pure noise
    accuracy = {}
    for structure in ("monotone", "mixture"):
        aligner = alignment_module.WordAligner(6, {"audio": 4, "vision": 3}, structure)
        optimizer = torch.optim.Adam(aligner.parameters(), lr=0.03)
        for _ in range(100):
            aligner.train()
            loss = aligner.nll(aligner(frames, words, wm)[0], frames)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        accuracy[structure] = _accuracy(aligner, words, frames, wm, truth)
    time_vision = float((lambda h: h[0] / h[2])(alignment_module.plan_hits(
        alignment_module.time_proportional(*frames["vision"], wm), truth["vision"])))
    assert accuracy["monotone"]["vision"] > time_vision + 0.2, accuracy
    assert accuracy["mixture"]["vision"] < time_vision + 0.1, accuracy


def test_absent_source_adds_nothing_to_the_joint_likelihood():
    words, frames, wm, _ = _toy_audiovisual(n=4)
    aligner = alignment_module.WordAligner(6, {"audio": 4, "vision": 3}).eval()
    present = {"audio": torch.tensor([True, True, False, False]), "vision": torch.ones(4, dtype=torch.bool)}
    log_lik, posts = aligner(frames, words, wm, present)
    alone, _ = aligner({"vision": frames["vision"]}, words, wm)
    torch.testing.assert_close(log_lik[2:], alone[2:])
    assert (posts["audio"][2:] == -math.inf).all()
    vision_only = aligner.nll(log_lik, frames, present, torch.tensor([False, False, True, True]))
    torch.testing.assert_close(vision_only, -alone[2:].sum() / (2 * 30 * 3))


def test_mixture_posterior_and_likelihood_by_hand():
    torch.manual_seed(1)
    words, frames, fm, wm, _ = _toy_speech(n=3, t_l=5, t_m=9)
    fm[1, 6:] = False
    wm[2, 3:] = False
    aligner = alignment_module.WordAligner(6, {"audio": 4}, structure="mixture").eval()
    emission = aligner.emissions["audio"]
    with torch.no_grad():
        emission.log_spread.uniform_(-0.5, 0.5)
    log_lik, posts = aligner({"audio": (frames, fm)}, words, wm)
    # by hand: Gaussian log density per word, plus the normalised position prior
    obs = emission.observations(frames, fm)
    mean, spread = emission.read(words), emission.log_spread.exp()
    log_p = torch.distributions.Normal(mean[:, None], spread).log_prob(obs[:, :, None]).sum(-1)  # (B, T_m, T_l)
    beta = aligner.log_beta.exp()
    prior = (-beta * alignment_module.position_gap(fm, wm).square()).masked_fill(~wm[:, None], -math.inf)
    joint = log_p + torch.log_softmax(prior, -1)
    expected_post = (joint - torch.logsumexp(joint, -1, keepdim=True)).masked_fill(~wm[:, None], -math.inf)
    torch.testing.assert_close(posts["audio"][fm], expected_post[fm], atol=1e-4, rtol=1e-5)  # float32 sums
    torch.testing.assert_close(log_lik, (torch.logsumexp(joint, -1) * fm).sum(1))
    frames_only = {"audio": (frames, fm)}
    torch.testing.assert_close(aligner.nll(log_lik, frames_only), -log_lik.sum() / (fm.sum() * 4))
    torch.testing.assert_close(aligner.nll(log_lik, frames_only, samples=torch.tensor([True, False, False])),
                               -log_lik[0] / (9 * 4))


def test_grid_emissions_are_each_sources_weighted_gaussian_log_density(monkeypatch):
    """The monotone aligner's grid emissions, one product over the sources side by side (dense and
    banded), against the Gaussian log densities summed by hand."""
    from mmsa_alignmamba.alignment import aligner as aligner_module
    from mmsa_alignmamba.alignment.band import band_words
    torch.manual_seed(2)
    aligner = alignment_module.WordAligner(6, {"audio": 4, "vision": 3}).eval()
    batch, t_l, grid_steps = 3, 7, 11
    words = torch.randn(batch, t_l, 6)
    obs = {"audio": torch.randn(batch, 9, 4), "vision": torch.randn(batch, 5, 3)}
    frames = {m: torch.randint(0, o.shape[1], (batch, grid_steps)) for m, o in obs.items()}
    weights = {"audio": torch.tensor([1.0, 0.5, 0.0]), "vision": torch.tensor([0.4, 1.0, 1.0])}
    expected = 0
    for m, emission in aligner.emissions.items():
        with torch.no_grad():
            emission.log_spread.uniform_(-0.5, 0.5)
        picked = obs[m].gather(1, frames[m][..., None].expand(-1, -1, obs[m].shape[2]))      # (B, G, d)
        log_p = torch.distributions.Normal(emission.read(words)[:, None], emission.log_spread.exp()).log_prob(
            picked[:, :, None]).sum(-1)                                                        # (B, G, T_l)
        expected = expected + weights[m][:, None, None] * log_p
    names = list(obs)
    terms = [aligner.emissions[m].terms(obs[m], words).weighted(weights[m]) for m in names]
    on_grid = [frames[m] for m in names]
    # vision's 5 frames cover two or more of the 11 steps each: its product is taken at its frames
    got = aligner_module._grid_emissions(terms, on_grid, None, 0)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)
    shared = aligner_module.EmissionTerms.beside([t.at(f) for t, f in zip(terms, on_grid)]).dense()  # all read first
    torch.testing.assert_close(shared, expected, atol=1e-4, rtol=1e-5)
    starts = torch.randint(0, t_l - 3 + 1, (batch, grid_steps))
    want_band = expected.gather(2, band_words(starts, 3))
    torch.testing.assert_close(aligner_module._grid_emissions(terms, on_grid, starts, 3), want_band, atol=1e-4, rtol=1e-5)
    monkeypatch.setattr(aligner_module, "_BAND_BLOCK_ELEMS", 3 * 3 * 7 * 4)   # blocks of 4 steps (d = 4 + 3)
    torch.testing.assert_close(aligner_module._grid_emissions(terms, on_grid, starts, 3), want_band, atol=1e-4, rtol=1e-5)


def _brute_force_chain(log_emit, n_m, n_l, skip):
    """log p(frames) and posteriors by enumerating every path of the left-to-right chain."""
    advance = min(max((n_l - 1) / max(n_m - 1, 1) / (1 + skip), 1e-4), 0.95)
    log_step = {0: math.log(1 - advance), 1: math.log(advance * (1 - skip)), 2: math.log(advance * skip)}
    paths = []
    for path in itertools.product(range(n_l), repeat=n_m):
        if path[0] > 1 or path[-1] != n_l - 1 or any(b - a not in log_step for a, b in zip(path, path[1:])):
            continue
        lp = math.log(skip if path[0] == 1 else 1 - skip) + sum(log_step[b - a] for a, b in zip(path, path[1:]))
        paths.append((path, lp + sum(float(log_emit[t, j]) for t, j in enumerate(path))))
    total = torch.logsumexp(torch.tensor([lp for _, lp in paths], dtype=D64), 0)
    post = torch.zeros(n_m, n_l, dtype=D64)
    for path, lp in paths:
        for t, j in enumerate(path):
            post[t, j] += math.exp(lp - float(total))
    return float(total), post


def test_monotone_alignment_matches_enumerated_paths_and_its_gradient_is_the_posterior():
    g = torch.Generator().manual_seed(5)
    log_emit = torch.randn(2, 6, 4, generator=g, dtype=D64)
    fm, wm = _lengths_mask([6, 5], 6), _lengths_mask([4, 3], 4)
    log_emit.requires_grad_(True)
    log_lik, log_post = alignment_module.monotone_alignment(log_emit, fm, wm, skip=0.1)
    for b, (n_m, n_l) in enumerate(((6, 4), (5, 3))):
        total, post = _brute_force_chain(log_emit[b].detach(), n_m, n_l, 0.1)
        assert float(log_lik[b].detach()) == pytest.approx(total, abs=1e-9)
        torch.testing.assert_close(log_post[b, :n_m, :n_l].exp(), post)
        assert (log_post[b, n_m:] == -math.inf).all() and (log_post[b, :, n_l:] == -math.inf).all()
    assert torch.autograd.gradcheck(lambda x: alignment_module.monotone_alignment(x, fm, wm, 0.1)[0], (log_emit,))
    grad, = torch.autograd.grad(log_lik.sum(), log_emit)
    torch.testing.assert_close(grad, log_post.exp())


def test_monotone_alignment_with_fewer_frames_than_half_the_words_stays_finite():
    log_emit = torch.randn(1, 2, 6, dtype=D64)
    log_lik, log_post = alignment_module.monotone_alignment(log_emit, torch.ones(1, 2, dtype=torch.bool),
                                                            torch.ones(1, 6, dtype=torch.bool))
    assert torch.isfinite(log_lik).all()
    torch.testing.assert_close(log_post.exp().sum(-1), torch.ones(1, 2, dtype=D64))


def test_emission_observations_are_centred_and_batch_independent_at_inference():
    words, frames, fm, wm, _ = _toy_speech(n=6)
    emission = alignment_module.FrameEmission(d_model=6, d_frame=4)
    emission.observations(frames + 5.0, fm)                                      # one training batch
    emission.eval()
    obs = emission.observations(frames, fm)
    torch.testing.assert_close(obs.mean(1), torch.zeros(6, 4), atol=1e-5, rtol=0)   # per-utterance centring
    torch.testing.assert_close(emission.observations(frames[:1], fm[:1]), obs[:1])
    for bad in (dict(position_prior=0.0), dict(structure="hmm"), dict(skip=1.0)):
        with pytest.raises(ValueError):
            alignment_module.WordAligner(6, {"audio": 4}, **bad)
