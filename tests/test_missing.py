"""Tests for mmsa_alignmamba.missing (incomplete-modality protocols)."""
import copy

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from mmsa_alignmamba.missing import (
    IMDER_MISS_1,
    IMDER_MISS_2,
    UNK_TOKEN_ID,
    MissingModalityLoader,
    imder_shares,
    make_protocol,
)

T_TEXT, T_A, T_V = 12, 20, 16
D_T, D_A, D_V = 8, 5, 6


def make_batch(n=8, use_bert=False, unaligned=True, start=0, seed=0, indices=None):
    g = torch.Generator().manual_seed(seed)
    idx = torch.arange(start, start + n) if indices is None else torch.as_tensor(indices)
    n = len(idx)
    if use_bert:
        L = torch.randint(4, T_TEXT + 1, (n,), generator=g)
        ids = torch.randint(1000, 3000, (n, T_TEXT), generator=g).float()
        pos = torch.arange(T_TEXT)[None]
        att = (pos < L[:, None]).float()
        ids = ids * att
        ids[:, 0] = 101.0
        ids[torch.arange(n), L - 1] = 102.0
        text = torch.stack([ids, att, torch.zeros_like(att)], dim=1)
    else:
        text = torch.randn(n, T_TEXT, D_T, generator=g) + 3.0
        lt = torch.randint(3, T_TEXT + 1, (n,), generator=g)
        text = text * (torch.arange(T_TEXT)[None, :, None] < lt[:, None, None])
    audio = torch.randn(n, T_A, D_A, generator=g) + 3.0
    vision = torch.randn(n, T_V, D_V, generator=g) + 3.0
    batch = {
        "text": text, "audio": audio, "vision": vision,
        "labels": {"M": torch.randn(n, 1, generator=g)},
        "index": idx, "id": [f"s{int(i)}" for i in idx], "raw_text": ["x"] * n,
    }
    if unaligned:
        la = torch.randint(1, T_A + 1, (n,), generator=g)
        lv = torch.randint(1, T_V + 1, (n,), generator=g)
        batch["audio"] = audio * (torch.arange(T_A)[None, :, None] < la[:, None, None])
        batch["vision"] = vision * (torch.arange(T_V)[None, :, None] < lv[:, None, None])
        batch["audio_lengths"], batch["vision_lengths"] = la, lv
    return batch


def assert_batch_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        elif isinstance(a[k], dict):
            assert_batch_equal(a[k], b[k])
        else:
            assert a[k] == b[k], k


# ----------------------------------------------------------------------------- imder
LISTED = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]


@pytest.mark.parametrize("mr", LISTED)
def test_imder_shares_match_lists_and_rate(mr):
    a, b = imder_shares(mr)
    i = round(mr * 10) - 1
    assert (a, b) == (IMDER_MISS_2[i], IMDER_MISS_1[i])
    if mr <= 0.6 + 1e-9:
        assert 2 * a + b == pytest.approx(3 * mr)
    else:  # 0.7 is capped: every batch keeps one modality -> 2/3 dropped
        assert (a, b) == (1.0, 0.0)
        assert 2 * a + b == pytest.approx(2.0)
    p = make_protocol("imder", mr, seed=1)
    assert p.realised_rate == pytest.approx(min(mr, 2 / 3))


def test_imder_offgrid_rates_consistent():
    for mr in np.linspace(0, 0.66, 34):
        a, b = imder_shares(float(mr))
        assert 0 <= a <= 1 and 0 <= b <= 1 and a + b <= 1 + 1e-12
        assert 2 * a + b == pytest.approx(3 * mr)
    assert imder_shares(0.9) == (1.0, 0.0)


@pytest.mark.parametrize("mr", LISTED)
def test_imder_empirical_shares(mr):
    p = make_protocol("imder", mr, seed=3)
    a, b = imder_shares(mr)
    # exact per-pass shares when the number of batches is known
    N = 50
    for epoch in range(3):
        kept = np.array([p.batch_plan("train", i, epoch, num_batches=N).sum() for i in range(N)])
        assert (kept == 1).sum() == round(a * N)
        assert (kept == 2).sum() == round(b * N)
        assert ((kept == 3).sum()) == N - round(a * N) - round(b * N)
    # independent draws without num_batches: shares converge
    kept = np.array([p.batch_plan("train", i, 0).sum() for i in range(4000)])
    assert (kept == 1).mean() == pytest.approx(a, abs=0.03)
    assert (kept == 2).mean() == pytest.approx(b, abs=0.03)
    assert 1 - kept.mean() / 3 == pytest.approx(p.realised_rate, abs=0.02)


def test_imder_applies_whole_batch_pattern_and_zeroes():
    p = make_protocol("imder", 0.5, seed=0)
    seen = set()
    for i in range(40):
        batch = make_batch(6, seed=i)
        out = p.apply(batch, "train", i, epoch=0, num_batches=40)
        mm = out["modality_mask"]
        assert mm.shape == (6, 3) and mm.dtype == torch.bool
        assert (mm == mm[0]).all()  # one pattern per batch
        assert mm[0].sum() >= 1
        seen.add(tuple(mm[0].tolist()))
        for m, key in enumerate(["text", "audio", "vision"]):
            if mm[0, m]:
                assert torch.equal(out[key], batch[key])
            else:
                assert (out[key] == 0).all()
        assert torch.equal(out["audio_lengths"], batch["audio_lengths"])  # lengths unchanged
    assert len(seen) >= 4  # kept modalities vary (uniform choice)


def test_imder_mr0_complete_and_deterministic():
    p = make_protocol("imder", 0.0, seed=0)
    assert p.realised_rate == 0
    batch = make_batch(4)
    for i in range(20):
        out = p.apply(batch, "test", i, num_batches=20)
        assert out["modality_mask"].all()
        assert_batch_equal({k: v for k, v in out.items() if k != "modality_mask"}, batch)
        assert p.apply(batch, "test", i).get("modality_mask").all()
    # same seed -> same schedule in another protocol object ("another model")
    q1, q2 = make_protocol("imder", 0.4, 7), make_protocol("imder", 0.4, 7)
    s1 = [tuple(q1.batch_plan("valid", i, 2, 30)) for i in range(30)]
    s2 = [tuple(q2.batch_plan("valid", i, 2, 30)) for i in range(30)]
    assert s1 == s2
    s3 = [tuple(make_protocol("imder", 0.4, 8).batch_plan("valid", i, 2, 30)) for i in range(30)]
    assert s1 != s3


def test_imder_bert_text_becomes_unk():
    p = make_protocol("imder", 0.7, seed=0, use_bert=True)  # every batch keeps exactly one
    for i in range(30):
        batch = make_batch(5, use_bert=True, seed=i)
        out = p.apply(batch, "train", i)
        if out["modality_mask"][0, 0]:
            continue
        t, t0 = out["text"], batch["text"]
        assert torch.equal(t[:, 1:], t0[:, 1:])  # attention mask & segment ids unchanged
        L = t0[:, 1].sum(1).long()
        for r in range(5):
            assert t[r, 0, 0] == 101 and t[r, 0, L[r] - 1] == 102
            assert (t[r, 0, 1:L[r] - 1] == UNK_TOKEN_ID).all()
            assert torch.equal(t[r, 0, L[r]:], t0[r, 0, L[r]:])
        return
    pytest.fail("text was never dropped")


# ----------------------------------------------------------------------------- sample
@pytest.mark.parametrize("mr", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
def test_sample_rate_and_at_least_one(mr):
    p = make_protocol("sample", mr, seed=11)
    masks = p.sample_masks(np.arange(10_000), "train")
    assert masks.any(axis=1).all()
    assert 1 - masks.mean() == pytest.approx(mr, abs=0.02)
    assert p.realised_rate == pytest.approx(mr)
    # per-modality marginal is also MR (symmetry)
    assert 1 - masks.mean(axis=0) == pytest.approx([mr] * 3, abs=0.03)


def test_sample_cap_at_two_thirds():
    p = make_protocol("sample", 0.8, seed=0)
    assert p.realised_rate == pytest.approx(2 / 3)
    masks = p.sample_masks(np.arange(2000), "test")
    assert (masks.sum(axis=1) == 1).all()


def test_sample_same_masks_across_models_and_orders():
    N = 200
    p1, p2 = make_protocol("sample", 0.4, seed=5), make_protocol("sample", 0.4, seed=5)
    full = make_batch(N, seed=1)

    def run(p, order, epoch):
        got = {}
        for bi, chunk in enumerate(np.array_split(order, 7)):
            sub = {k: (v[chunk] if isinstance(v, torch.Tensor) else v) for k, v in full.items()}
            sub["index"] = torch.as_tensor(chunk)
            out = p.apply(sub, "train", bi, epoch)
            for j, i in enumerate(chunk):
                got[int(i)] = tuple(out["modality_mask"][j].tolist())
                # absent modalities zeroed, present ones untouched
                for m, key in enumerate(["text", "audio", "vision"]):
                    if out["modality_mask"][j, m]:
                        assert torch.equal(out[key][j], full[key][i])
                    else:
                        assert (out[key][j] == 0).all()
        return got

    rng = np.random.default_rng(0)
    g1 = run(p1, rng.permutation(N), 0)
    g2 = run(p2, rng.permutation(N), 3)
    assert g1 == g2
    g3 = run(make_protocol("sample", 0.4, seed=6), rng.permutation(N), 0)
    assert g1 != g3
    # different split -> different masks
    assert not np.array_equal(p1.sample_masks(range(N), "train"), p1.sample_masks(range(N), "test"))


# ----------------------------------------------------------------------------- frame
@pytest.mark.parametrize("use_bert", [False, True])
def test_frame_valid_steps_rate_cls_sep(use_bert):
    mr = 0.3
    p = make_protocol("frame", mr, seed=2, use_bert=use_bert)
    dropped, droppable = {"audio": 0, "vision": 0, "text": 0}, {"audio": 0, "vision": 0, "text": 0}
    for bi in range(25):
        batch = make_batch(40, use_bert=use_bert, start=40 * bi, seed=bi)
        out = p.apply(batch, "train", bi)
        for key, lk in [("audio", "audio_lengths"), ("vision", "vision_lengths")]:
            x0, x = batch[key], out[key]
            T = x.shape[1]
            valid = torch.arange(T)[None] < batch[lk][:, None]
            zeroed = (x == 0).all(-1) & ~(x0 == 0).all(-1)
            assert not (zeroed & ~valid).any()  # only valid steps dropped
            assert torch.equal(out[f"{key}_step_mask"], valid & ~zeroed)
            assert torch.equal(x[~zeroed], x0[~zeroed])
            dropped[key] += int(zeroed.sum())
            droppable[key] += int(valid.sum())
        t0, t = batch["text"], out["text"]
        if use_bert:
            assert torch.equal(t[:, 1:], t0[:, 1:])
            L = t0[:, 1].sum(1).long()
            r = torch.arange(len(L))
            assert (t[:, 0, 0] == 101).all() and (t[r, 0, L - 1] == 102).all()
            changed = t[:, 0] != t0[:, 0]
            assert (t[:, 0][changed] == UNK_TOKEN_ID).all()
            inner = (torch.arange(T_TEXT)[None] >= 1) & (torch.arange(T_TEXT)[None] < (L - 1)[:, None])
            assert not (changed & ~inner).any()
            assert torch.equal(out["text_step_mask"], (t0[:, 1] > 0.5) & ~changed)
            dropped["text"] += int(changed.sum())
            droppable["text"] += int(inner.sum())
        else:
            valid = (t0 != 0).any(-1)
            zeroed = (t == 0).all(-1) & valid
            assert torch.equal(out["text_step_mask"], valid & ~zeroed)
            dropped["text"] += int(zeroed.sum())
            droppable["text"] += int(valid.sum())
        mm = out["modality_mask"]
        for m, key in enumerate(["audio", "vision"], start=1):
            assert torch.equal(mm[:, m], out[f"{key}_step_mask"].any(1))
        if use_bert:  # CLS/SEP always kept: text absent iff every inner token became [UNK]
            assert torch.equal(mm[:, 0], (inner & ~changed).any(1) | ~inner.any(1))
        else:
            assert torch.equal(mm[:, 0], out["text_step_mask"].any(1))
    for key in dropped:
        assert dropped[key] / droppable[key] == pytest.approx(mr, abs=0.03), key


def test_frame_static_across_epochs_models_and_orders():
    batch = make_batch(16, use_bert=True, seed=4)
    p1, p2 = make_protocol("frame", 0.5, 9, True), make_protocol("frame", 0.5, 9, True)
    o1 = p1.apply(batch, "valid", 0, epoch=0)
    o2 = p2.apply(batch, "valid", 5, epoch=7)
    assert_batch_equal(o1, o2)
    perm = torch.randperm(16)
    sub = {k: (v[perm] if isinstance(v, torch.Tensor) else [v[i] for i in perm] if isinstance(v, list) else v)
           for k, v in batch.items()}
    o3 = p1.apply(sub, "valid", 1, epoch=1)
    for key in ["text", "audio", "vision", "audio_step_mask", "text_step_mask", "modality_mask"]:
        assert torch.equal(o3[key], o1[key][perm]), key
    o4 = make_protocol("frame", 0.5, 10, True).apply(batch, "valid", 0)
    assert not torch.equal(o4["audio"], o1["audio"])


def test_frame_modality_absent_when_all_dropped():
    p = make_protocol("frame", 0.99, seed=0)
    batch = make_batch(30, seed=0)
    out = p.apply(batch, "train", 0)
    # with length-1 audio/vision and rate .99 a modality is almost surely fully dropped somewhere
    assert not out["modality_mask"].all()
    for m, key in enumerate(["text", "audio", "vision"]):
        assert torch.equal(out["modality_mask"][:, m], out[f"{key}_step_mask"].any(1))


# ----------------------------------------------------------------------------- common
@pytest.mark.parametrize("name", ["imder", "sample", "frame"])
@pytest.mark.parametrize("use_bert", [False, True])
def test_no_mutation(name, use_bert):
    p = make_protocol(name, 0.6, seed=0, use_bert=use_bert)
    for i in range(6):
        batch = make_batch(8, use_bert=use_bert, seed=i)
        ref = copy.deepcopy(batch)
        out = p.apply(batch, "train", i, num_batches=6)
        assert_batch_equal(batch, ref)
        assert out is not batch and "modality_mask" not in batch
        assert out["modality_mask"].shape == (8, 3)


def test_aligned_frame_uses_text_mask():
    p = make_protocol("frame", 0.5, seed=1, use_bert=True)
    batch = make_batch(10, use_bert=True, unaligned=False, seed=3)
    batch["audio"] = torch.randn(10, T_TEXT, D_A) + 3  # aligned: same T as text
    out = p.apply(batch, "train", 0)
    valid = batch["text"][:, 1] > 0.5
    zeroed = (out["audio"] == 0).all(-1)
    assert not (zeroed & ~valid).any()
    assert zeroed.any()


def test_bad_name_and_rate():
    with pytest.raises(ValueError, match="registered: frame, imder, sample"):
        make_protocol("random", 0.1, 0)
    for bad in [-0.1, 1.0, 1.5, float("nan"), "0.1", None, True]:
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            make_protocol("sample", bad, 0)
    with pytest.raises(ValueError):
        make_protocol("frame", 0.1, -1)
    assert make_protocol("IMDER", 0.1, 0).name == "imder"


class ToyDataset(Dataset):
    def __init__(self, n=50):
        self.b = make_batch(n, seed=0)

    def __len__(self):
        return len(self.b["index"])

    def __getitem__(self, i):
        return {
            "text": self.b["text"][i], "audio": self.b["audio"][i], "vision": self.b["vision"][i],
            "audio_lengths": int(self.b["audio_lengths"][i]), "vision_lengths": int(self.b["vision_lengths"][i]),
            "labels": {"M": self.b["labels"]["M"][i]}, "index": i, "id": f"s{i}", "raw_text": "x",
        }


def test_loader_wrapper_with_torch_dataloader():
    ds = ToyDataset(50)
    dl = DataLoader(ds, batch_size=8, shuffle=True)
    wrapped = MissingModalityLoader(dl, make_protocol("sample", 0.3, 4), "train")
    assert len(wrapped) == len(dl) == 7
    assert wrapped.dataset is ds and wrapped.batch_size == 8
    masks = []
    for epoch in range(2):
        got = {}
        n = 0
        for b in wrapped:
            n += 1
            assert b["modality_mask"].shape == (len(b["index"]), 3)
            for j, i in enumerate(b["index"].tolist()):
                got[i] = tuple(b["modality_mask"][j].tolist())
        assert n == 7 and len(got) == 50
        masks.append(got)
    assert wrapped.epoch == 2
    assert masks[0] == masks[1]  # per-sample masks survive reshuffling
    # imder: epoch counter feeds the schedule; exact shares per pass
    w2 = MissingModalityLoader(DataLoader(ds, batch_size=5, shuffle=True), make_protocol("imder", 0.2, 4), "valid")
    plans = [[tuple(b["modality_mask"][0].tolist()) for b in w2] for _ in range(3)]
    for plan in plans:
        k = [sum(t) for t in plan]
        assert k.count(1) == 2 and k.count(2) == 2 and k.count(3) == 6
    assert len({tuple(plan) for plan in plans}) == 3  # a fresh draw every epoch
    # passthrough when protocol is None
    plain = next(iter(MissingModalityLoader(dl, None, "test")))
    assert "modality_mask" not in plain
