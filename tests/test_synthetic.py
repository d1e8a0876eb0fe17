"""Tests for mmsa_alignmamba.synthetic: format, determinism, MMSA loader, signal structure."""
from __future__ import annotations

import json
import logging
import os
import pickle
import re

import numpy as np
import pytest

from mmsa_alignmamba import synthetic as S

TINY = {"train": 12, "valid": 5, "test": 7}
BASE_KEYS = {"text", "text_bert", "audio", "vision", "regression_labels", "classification_labels",
             "annotations", "id", "raw_text"}


def _expected_keys(like, aligned):
    keys = set(BASE_KEYS)
    if not aligned:
        keys |= {"audio_lengths", "vision_lengths"}
    if like == "sims":
        keys |= {"regression_labels_T", "regression_labels_A", "regression_labels_V"}
    return keys


@pytest.fixture(scope="module")
def tiny_sets():
    return {(like, al): S.make_synthetic(like, aligned=al, size=TINY, seed=7)
            for like in ("mosi", "mosei", "sims") for al in (False, True)}


# ---------------------------------------------------------------- format
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("like", ["mosi", "mosei", "sims"])
def test_shapes_dtypes_keys(tiny_sets, like, aligned):
    p = S.PRESETS[like]
    data = tiny_sets[(like, aligned)]
    assert set(data) == {"train", "valid", "test"}
    T_l, T_a, T_v = p["seq_lens"]["aligned" if aligned else "unaligned"]
    d_t, d_a, d_v = p["feature_dims"]
    scale = p["label_scale"]
    for split, d in data.items():
        n = TINY[split]
        assert set(d) == _expected_keys(like, aligned), split
        assert d["text"].shape == (n, T_l, d_t) and d["text"].dtype == np.float32
        assert d["text_bert"].shape == (n, 3, T_l) and d["text_bert"].dtype == np.float32
        assert d["audio"].shape == (n, T_a, d_a) and d["audio"].dtype == np.float32
        assert d["vision"].shape == (n, T_v, d_v) and d["vision"].dtype == np.float32
        for k in ("regression_labels", "classification_labels") + (
                ("regression_labels_T", "regression_labels_A", "regression_labels_V") if like == "sims" else ()):
            y = d[k]
            assert y.shape == (n,) and y.dtype == np.float32
            assert np.all(np.isfinite(y))
        for k in ("regression_labels",) + (("regression_labels_T", "regression_labels_A",
                                             "regression_labels_V") if like == "sims" else ()):
            assert np.all(np.abs(d[k]) <= scale + 1e-6), k
        assert d["id"].dtype == object and d["raw_text"].dtype == object and d["annotations"].dtype == object
        assert len(set(d["id"])) == n
        for i, s in enumerate(d["id"]):
            assert re.fullmatch(rf"synthetic_{split}_\d{{5}}\$_\$0", s)
        for a in (d["text"], d["audio"], d["vision"]):
            assert np.all(np.isfinite(a))

        # BERT ids: [CLS] words [SEP] pad, mask 1 on real tokens, segment ids 0
        ids, mask, seg = d["text_bert"][:, 0], d["text_bert"][:, 1], d["text_bert"][:, 2]
        assert set(np.unique(mask)) <= {0.0, 1.0} and np.all(seg == 0)
        n_tok = mask.sum(1).astype(int)
        assert np.all(n_tok >= 4) and np.all(n_tok <= T_l)
        for i in range(n):
            m = n_tok[i]
            assert np.all(mask[i, :m] == 1) and np.all(mask[i, m:] == 0)
            assert ids[i, 0] == 101 and ids[i, m - 1] == 102
            assert np.all((ids[i, 1:m - 1] >= 1000) & (ids[i, 1:m - 1] < 30522))
            assert np.all(ids[i, m:] == 0)
            assert np.all(np.abs(d["text"][i]).sum(-1) > 0)      # BERT-style: [PAD] rows are not zero
            assert len(d["raw_text"][i].split()) == m - 2

        if not aligned:
            for mod, T in (("audio", T_a), ("vision", T_v)):
                L = d[mod + "_lengths"]
                assert L.shape == (n,) and np.issubdtype(L.dtype, np.integer)
                assert np.all((L >= 1) & (L <= T))
                x = d[mod]
                for i in range(n):
                    assert np.all(x[i, L[i]:] == 0), (mod, i)
                    assert np.all(np.abs(x[i, :L[i]]).sum(-1) > 0), (mod, i)
        else:
            # word-aligned: nothing outside the word slots 1..n
            for mod in ("audio", "vision"):
                x = d[mod]
                for i in range(n):
                    assert np.all(x[i, 0] == 0) and np.all(x[i, n_tok[i] - 1:] == 0)
            assert np.any(d["audio"] != 0) and np.any(d["vision"] != 0)

        cls = d["classification_labels"]
        y = d["regression_labels"]
        assert np.array_equal(cls, np.where(y < 0, 0, np.where(y > 0, 2, 1)).astype(np.float32))


def test_labels_realistic():
    d = S.make_synthetic("mosi", size="small", seed=0)["train"]
    y = d["regression_labels"]
    assert 0.8 < y.std() < 2.2                       # spread over the scale
    assert np.all(np.abs(y) <= 3)
    assert np.allclose(y / 0.2, np.round(y / 0.2), atol=1e-4)   # annotation grid
    assert 0 < np.mean(y == 0) < 0.15                 # a few exact zeros, not many
    assert 0.3 < np.mean(y > 0) < 0.7


def test_aligned_is_word_average_of_unaligned():
    size = {"train": 30, "valid": 2, "test": 2}
    un, lat = S.make_synthetic("mosi", aligned=False, size=size, seed=5, return_latents=True)
    al = S.make_synthetic("mosi", aligned=True, size=size, seed=5)
    u, a, l = un["train"], al["train"], lat["train"]
    assert np.array_equal(u["text"], a["text"])
    assert np.array_equal(u["regression_labels"], a["regression_labels"])
    for mod, key in (("audio", "audio_word"), ("vision", "vision_word")):
        wmap = l[key]
        assert wmap.shape == u[mod].shape[:2]
        assert np.array_equal((wmap >= 0).sum(1), u[mod + "_lengths"])
        for i in range(5):
            valid = wmap[i] >= 0
            assert np.all(np.diff(wmap[i][valid]) >= 0)          # monotone warp
            for k in range(l["n_words"][i]):
                sel = wmap[i] == k
                ref = u[mod][i, sel].mean(0) if sel.any() else np.zeros(u[mod].shape[2])
                np.testing.assert_allclose(a[mod][i, k + 1], ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- determinism
def _assert_same(d1, d2):
    assert d1.keys() == d2.keys()
    for split in d1:
        assert d1[split].keys() == d2[split].keys()
        for k, v in d1[split].items():
            w = d2[split][k]
            if v.dtype == object:
                assert list(v) == list(w), (split, k)
            else:
                assert v.dtype == w.dtype and v.tobytes() == w.tobytes(), (split, k)


def test_deterministic_and_seed_dependent():
    a = S.make_synthetic("sims", size=TINY, seed=11)
    b = S.make_synthetic("sims", size=TINY, seed=11)
    _assert_same(a, b)
    c = S.make_synthetic("sims", size=TINY, seed=12)
    for k in ("text", "audio", "vision", "regression_labels"):
        assert not np.array_equal(a["train"][k], c["train"][k]), k
    # a split does not depend on the other splits' sizes
    d = S.make_synthetic("sims", size={**TINY, "test": 3}, seed=11)
    assert d["train"]["text"].tobytes() == a["train"]["text"].tobytes()
    # n_* overrides
    e = S.make_synthetic("mosi", size="small", seed=0, n_train=4, n_valid=3, n_test=2)
    assert [len(e[s]["regression_labels"]) for s in S.SPLITS] == [4, 3, 2]


def test_presets_and_sizes():
    assert S.resolve_sizes("mosi", "full") == {"train": 1284, "valid": 229, "test": 686}
    assert S.resolve_sizes("MOSEI", "full") == {"train": 16326, "valid": 1871, "test": 4659}
    assert S.resolve_sizes("sims", "full") == {"train": 1368, "valid": 456, "test": 457}
    assert S.PRESETS["mosi"]["seq_lens"]["unaligned"] == (50, 375, 500)
    assert S.PRESETS["mosi"]["feature_dims"] == (768, 5, 20)
    assert S.PRESETS["mosei"]["feature_dims"] == (768, 74, 35)
    assert S.PRESETS["sims"]["seq_lens"]["unaligned"] == (39, 400, 55)
    assert S.PRESETS["sims"]["feature_dims"] == (768, 33, 709)
    small = S.resolve_sizes("mosi", "small")
    assert 400 <= small["train"] <= 800
    assert S.resolve_sizes("mosi", {"train": 3}) == {**small, "train": 3}


@pytest.mark.parametrize("call", [
    lambda: S.make_synthetic("iemocap"),
    lambda: S.make_synthetic("mosi", size="huge"),
    lambda: S.make_synthetic("mosi", size={"train": 0}),
    lambda: S.make_synthetic("mosi", size={"train": -3}),
    lambda: S.make_synthetic("mosi", size={"training": 3}),
    lambda: S.make_synthetic("mosi", n_test=0),
    lambda: S.make_synthetic("mosi", seed=-1),
    lambda: S.make_synthetic("mosi", seed=1.5),
    lambda: S.synthetic_path("/tmp", "nope", False, "small", 0),
    lambda: S.write_synthetic("/tmp/x.pkl", like="mosi", size={"valid": 0}),
])
def test_invalid_arguments(call):
    with pytest.raises(ValueError):
        call()


# ---------------------------------------------------------------- files
def test_write_and_ensure(tmp_path, caplog):
    path = S.synthetic_path(tmp_path, "mosi", False, TINY, 3)
    assert "synthetic" in path.name and path.suffix == ".pkl"
    assert path.parent == tmp_path / "synthetic" / "MOSI" / "Processed"
    p_small = S.synthetic_path(tmp_path, "mosi", False, "small", 0)
    assert p_small == tmp_path / "synthetic/MOSI/Processed/unaligned_50-synthetic-small-bertpad-seed0.pkl"
    assert S.synthetic_path(tmp_path, "sims", True, "full", 2, padding="zero").name == \
        "aligned_39-synthetic-full-zeropad-seed2.pkl"   # the padding choice is part of the cache name
    assert len({S.synthetic_path(tmp_path, lk, al, sz, sd) for lk in ("mosi", "mosei") for al in (0, 1)
                for sz in ("small", "full", TINY) for sd in (0, 1)}) == 24

    with caplog.at_level(logging.INFO, logger="mmsa_alignmamba"):
        got = S.ensure_synthetic(tmp_path, "mosi", aligned=False, size=TINY, seed=3)
    assert got == path and path.is_file()
    assert any("generating synthetic MOSI-format data (not real data)" in r.getMessage() for r in caplog.records)
    meta = json.loads(open(str(path) + ".json").read())
    assert meta["synthetic"] is True and meta["like"] == "mosi" and meta["aligned"] is False
    assert meta["padding"] == "bert"
    assert meta["seed"] == 3 and meta["sizes"] == TINY and meta["generator_version"] == S.FAMILIES.get("pooled").VERSION
    assert sorted(os.listdir(path.parent)) == sorted([path.name, path.name + ".json"])  # no temp files
    with open(path, "rb") as f:
        loaded = pickle.load(f)
    _assert_same(loaded, S.make_synthetic("mosi", size=TINY, seed=3))

    # cached: not regenerated
    mtime = path.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mmsa_alignmamba"):
        assert S.ensure_synthetic(tmp_path, "mosi", size=TINY, seed=3) == path
    assert path.stat().st_mtime_ns == mtime
    assert not any("generating" in r.getMessage() for r in caplog.records)

    # stale sidecar (other generator version) -> regenerated
    meta["generator_version"] = -1
    open(str(path) + ".json", "w").write(json.dumps(meta))
    S.ensure_synthetic(tmp_path, "mosi", size=TINY, seed=3)
    assert S.read_metadata(path)["generator_version"] == S.FAMILIES.get("pooled").VERSION

    out = S.write_synthetic(tmp_path / "sub" / "x.pkl", like="sims", aligned=True, size=TINY, seed=1)
    assert out.is_file() and S.read_metadata(out)["like"] == "sims"


# ---------------------------------------------------------------- MMSA's own loader
@pytest.fixture(scope="module")
def mmsa_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    size = {"train": 10, "valid": 6, "test": 5}
    return {(lk, al): S.write_synthetic(root / f"{lk}_{al}.pkl", like=lk, aligned=al, size=size, seed=0)
            for lk, al in (("mosi", False), ("mosi", True), ("sims", False), ("mosei", False))}, size


@pytest.mark.parametrize("model,like,aligned", [
    ("lf_dnn", "mosi", False),    # normalized: audio/vision averaged over time by the loader
    ("mult", "mosi", False),      # unaligned, lengths, no normalization
    ("ef_lstm", "mosi", True),    # need_data_aligned
    ("self_mm", "mosi", False),   # use_bert: reads text_bert
    ("mult", "sims", False),      # SIMS unimodal labels
    ("mult", "mosei", False),
])
def test_mmsa_loader_accepts_file(mmsa_files, model, like, aligned):
    MMSA_config = pytest.importorskip("MMSA.config")
    from MMSA.data_loader import MMDataLoader

    files, size = mmsa_files
    args = MMSA_config.get_config_regression(model, like)
    assert bool(args["need_data_aligned"]) == aligned
    args.update(featurePath=str(files[(like, aligned)]), custom_feature=None, feature_T="",
                feature_A="", feature_V="", train_mode="regression", batch_size=4)
    loaders = MMDataLoader(args, num_workers=0)
    p = S.PRESETS[like]
    T_l, T_a, T_v = p["seq_lens"]["aligned" if aligned else "unaligned"]
    d_t, d_a, d_v = p["feature_dims"]
    if args.get("need_normalized"):
        T_a = T_v = 1
    for split in S.SPLITS:
        assert len(loaders[split].dataset) == size[split]
        batch = next(iter(loaders[split]))
        B = min(4, size[split])
        if args.get("use_bert"):
            assert tuple(batch["text"].shape) == (B, 3, T_l)
        else:
            assert tuple(batch["text"].shape) == (B, T_l, d_t)
        assert tuple(batch["audio"].shape) == (B, T_a, d_a)
        assert tuple(batch["vision"].shape) == (B, T_v, d_v)
        assert tuple(batch["labels"]["M"].shape) == (B, 1)
        if like == "sims":
            assert set(batch["labels"]) == {"M", "T", "A", "V"}
        if not aligned:
            assert tuple(batch["audio_lengths"].shape) == (B,)
            assert int(batch["vision_lengths"].max()) <= p["seq_lens"]["unaligned"][2]
        else:
            assert "audio_lengths" not in batch
    assert tuple(args["seq_lens"]) == (T_l, T_a, T_v)


# ---------------------------------------------------------------- signal structure
def _pooled(d):
    m = d["text_bert"][:, 1, :]
    t = (d["text"] * m[:, :, None]).sum(1) / m.sum(1, keepdims=True)
    a = d["audio"].sum(1) / d["audio_lengths"][:, None]
    v = d["vision"].sum(1) / d["vision_lengths"][:, None]
    return t, a, v


def _per_word(x, wmap, W):
    oh = (wmap[:, :, None] == np.arange(W)).astype(np.float32)
    return np.einsum("ntw,ntd->nwd", oh, x) / np.maximum(oh.sum(1), 1)[:, :, None]


def _cross(d, lat, beta, wrong=False):
    """sum_k score(text token k) * mean frame of word k / sqrt(n), for audio and vision."""
    W = d["text"].shape[1] - 2
    n = lat["n_words"]
    score = (d["text"][:, 1:W + 1, :] @ beta) * (np.arange(W)[None] < n[:, None])
    maps = [lat["audio_word"].astype(np.int64), lat["vision_word"].astype(np.int64)]
    if wrong:  # a wrong but equally monotone-looking alignment: reversed word order
        maps = [np.where(m >= 0, n[:, None] - 1 - m, -1) for m in maps]
    feats = [(score[:, :, None] * _per_word(x, m, W)).sum(1) / np.sqrt(n)[:, None]
             for x, m in zip((d["audio"], d["vision"]), maps)]
    return np.concatenate(feats, 1)


def test_signal_needs_all_modalities_and_alignment():
    sk = pytest.importorskip("sklearn.linear_model")
    from sklearn.metrics import r2_score

    data, lat = S.make_synthetic("mosi", size={"train": 2000, "valid": 2, "test": 1000}, seed=3,
                                 return_latents=True)
    tr, te = data["train"], data["test"]
    ytr, yte = tr["regression_labels"], te["regression_labels"]
    alphas = np.logspace(-2, 6, 17)

    def r2(Xtr, Xte):
        m = sk.RidgeCV(alphas=alphas).fit(Xtr, ytr)
        return r2_score(yte, m.predict(Xte)), m

    Ttr, Atr, Vtr = _pooled(tr)
    Tte, Ate, Vte = _pooled(te)
    r_text, mt = r2(Ttr, Tte)
    r_audio, _ = r2(Atr, Ate)
    r_vision, _ = r2(Vtr, Vte)
    beta = mt.coef_
    st = lambda *a: np.concatenate(a, 1)  # noqa: E731
    ttr, tte = (Ttr @ beta)[:, None], (Tte @ beta)[:, None]
    r_pooled, _ = r2(st(ttr, Atr, Vtr), st(tte, Ate, Vte))
    r_aligned, _ = r2(st(ttr, Atr, Vtr, _cross(tr, lat["train"], beta)),
                      st(tte, Ate, Vte, _cross(te, lat["test"], beta)))
    r_wrong, _ = r2(st(ttr, Atr, Vtr, _cross(tr, lat["train"], beta, True)),
                    st(tte, Ate, Vte, _cross(te, lat["test"], beta, True)))
    msg = dict(text=r_text, audio=r_audio, vision=r_vision, pooled=r_pooled, aligned=r_aligned, wrong=r_wrong)
    # every single modality is informative, none suffices
    assert 0.1 < r_text < 0.5, msg
    assert 0.03 < r_audio < 0.4 and 0.03 < r_vision < 0.4, msg
    # pooled multimodal clearly beats text; true word<->frame alignment clearly beats pooling
    assert r_pooled > r_text + 0.15, msg
    assert r_aligned > r_pooled + 0.15, msg
    assert r_aligned > 0.75, msg
    # the gain comes from the correct alignment, not from the extra features
    assert r_wrong < r_aligned - 0.15, msg


# ---------------------------------------------------------------- the wordlevel family
def _time_proportional_tokens(part, modality):
    """Token index the time-proportional plan gives each valid frame (over all valid text tokens)."""
    T = part[modality].shape[1]
    lengths = part[f"{modality}_lengths"]
    n_tokens = part["text_bert"][:, 1].sum(1)
    return np.floor(np.arange(T)[None, :] * n_tokens[:, None] / lengths[:, None]).astype(int)


def _plan_accuracy(part, modality, plan):
    truth = part[f"{modality}_token"].astype(int)
    counted = truth >= 0
    return float(np.mean(plan[counted] == truth[counted]))


@pytest.fixture(scope="module")
def wordlevel():
    return S.make_synthetic("mosi", size={"train": 400, "valid": 4, "test": 200}, seed=5, task="wordlevel",
                            return_latents=True)


def _digest(data) -> str:
    import hashlib
    digest = hashlib.sha1()
    for split in S.SPLITS:
        for key in sorted(data[split]):
            digest.update(key.encode())
            digest.update(pickle.dumps(data[split][key], protocol=4))
    return digest.hexdigest()


@pytest.mark.parametrize("task, expected", [
    ("pooled", "ed434efc327d88ddbf8f37071d22503edc756b3f"),     # recorded with the first release's generator
    ("wordlevel", "44be27c2fe4ed974d57ca6c6ca6ee2732713044c"),  # the generator behind experiments/ on it
])
def test_families_are_pinned(task, expected):
    """'Keep today's family as it is', and results on either family stay reproducible: the
    generators' bytes are pinned."""
    data = S.make_synthetic("mosi", size={"train": 20, "valid": 3, "test": 4}, seed=3, task=task, padding="zero")
    assert _digest(data) == expected


@pytest.mark.parametrize("task", ["pooled", "wordlevel"])
@pytest.mark.parametrize("aligned", [False, True])
def test_bert_padding_changes_only_the_pad_rows(task, aligned):
    """--synthetic-padding: both paddings hold the same words, labels and frames; BERT-style [PAD]
    rows are one shared vector plus small noise (not zero, so only the mask marks them), zero pads are 0."""
    bert = S.make_synthetic("mosi", aligned=aligned, size=TINY, seed=4, task=task)
    zero = S.make_synthetic("mosi", aligned=aligned, size=TINY, seed=4, task=task, padding="zero")
    pads_seen = []
    for split in S.SPLITS:
        b, z = bert[split], zero[split]
        assert set(b) == set(z)
        for key in set(b) - {"text"}:
            np.testing.assert_array_equal(np.asarray(b[key]), np.asarray(z[key]), err_msg=key)
        words = b["text_bert"][:, 1] > 0
        np.testing.assert_array_equal(b["text"][words], z["text"][words])
        assert np.all(z["text"][~words] == 0)
        pads = b["text"][~words]
        assert pads.shape[0] > 0 and np.all(np.abs(pads).sum(-1) > 0)
        pads_seen.append(pads)
    pads = np.concatenate(pads_seen)
    shared = pads.mean(0)
    assert np.abs(pads - shared).std() < 0.2 * np.abs(shared).mean()    # one vector, small per-slot noise
    train = bert["train"]
    assert 0.5 < np.abs(shared).mean() / np.abs(train["text"][train["text_bert"][:, 1] > 0]).mean() < 2  # a token's scale
    with pytest.raises(ValueError, match="synthetic padding must be one of"):
        S.make_synthetic("mosi", size=TINY, padding="random")


@pytest.mark.parametrize("like", ["mosi", "mosei", "sims"])
def test_wordlevel_format_and_true_maps(like):
    data = S.make_synthetic(like, size=TINY, seed=2, task="wordlevel")
    aligned = S.make_synthetic(like, aligned=True, size=TINY, seed=2, task="wordlevel")
    p = S.PRESETS[like]
    T_l, T_a, T_v = p["seq_lens"]["unaligned"]
    for split, d in data.items():
        assert set(d) == _expected_keys(like, False) | {"audio_token", "vision_token"}
        assert set(aligned[split]) == _expected_keys(like, True)      # word-aligned: no maps
        for m, T in (("audio", T_a), ("vision", T_v)):
            tokens = d[f"{m}_token"]
            assert tokens.shape == (TINY[split], T) and tokens.dtype == np.int16
            n_words = d["text_bert"][:, 1].sum(1).astype(int) - 2
            valid = np.arange(T)[None, :] < d[f"{m}_lengths"][:, None]
            assert np.all(tokens[~valid] == -1)                        # padding speaks no word
            assert np.all((tokens == -1) | ((tokens >= 1) & (tokens <= n_words[:, None])))   # words, not [CLS]/[SEP]
            for row in tokens:                                          # words come in order
                spoken = row[row >= 0]
                assert np.all(np.diff(spoken) >= 0)
            assert np.all(d[m][~valid] == 0)
        assert np.all(np.abs(d["regression_labels"]) <= p["label_scale"] + 1e-6)


def test_wordlevel_timing_defeats_the_time_proportional_plan(wordlevel):
    """Free word durations and pauses: the time-proportional plan gets a minority of frames right."""
    data, lat = wordlevel
    test = data["test"]
    for m in ("audio", "vision"):
        accuracy = _plan_accuracy(test, m, _time_proportional_tokens(test, m))
        assert 0.15 < accuracy < 0.4, (m, accuracy)
        valid = np.arange(test[m].shape[1])[None] < test[f"{m}_lengths"][:, None]
        assert 0.1 < np.mean(test[f"{m}_token"][valid] < 0) < 0.4, m     # pauses and silence


def test_wordlevel_frames_carry_a_signature_of_their_word(wordlevel):
    """A linear map from a word's text features to its frames, fitted with the true map, picks each
    test frame's word among its utterance's tokens far above chance, from the frame alone."""
    from sklearn.linear_model import Ridge

    data, _ = wordlevel
    train, test = data["train"], data["test"]
    for m in ("audio", "vision"):
        truth = train[f"{m}_token"].astype(int)
        rows, cols = np.nonzero(truth >= 0)
        model = Ridge(alpha=10.0).fit(train["text"][rows, truth[rows, cols]], train[m][rows, cols])
        resid = train[m][rows, cols] - model.predict(train["text"][rows, truth[rows, cols]])
        precision = np.linalg.inv(np.cov(resid.T) + 1e-6 * np.eye(resid.shape[1]))
        expected = model.predict(test["text"].reshape(-1, test["text"].shape[-1])).reshape(*test["text"].shape[:2], -1)
        gap = test[m][:, :, None, :] - expected[:, None, :, :]                     # (N, T_m, T_l, d)
        loglik = -np.einsum("ntld,de,ntle->ntl", gap, precision, gap)
        tokens = test["text_bert"][:, 1] > 0
        loglik[~np.broadcast_to(tokens[:, None, :], loglik.shape)] = -np.inf
        accuracy = _plan_accuracy(test, m, loglik.argmax(-1))
        chance = float(np.mean(1.0 / tokens.sum(1)))
        assert accuracy > 2.5 * chance, (m, accuracy, chance)


def test_wordlevel_label_rests_on_word_level_cooccurrence(wordlevel):
    """The latent ladder: pooled terms explain part of the label, adding the word-level products
    (which need the alignment) explains nearly all of it."""
    from sklearn.linear_model import LinearRegression

    data, lat = wordlevel
    y = data["train"]["regression_labels"]
    t = lat["train"]
    pooled = np.stack([t["L"], t["A"], t["V"]], 1)
    full = np.concatenate([pooled, np.stack([t["X_a"], t["X_v"]], 1)], 1)
    r2 = {name: LinearRegression().fit(x, y).score(x, y) for name, x in (("pooled", pooled), ("full", full))}
    assert r2["pooled"] < 0.6 and r2["full"] > 0.85 and r2["full"] > r2["pooled"] + 0.3, r2


def test_oracle_ladder_orders_text_pooled_and_true_alignment(wordlevel):
    from mmsa_alignmamba.synthetic.oracle import RUNGS, oracle_ladder

    data, _ = wordlevel
    ladder = oracle_ladder(data, "mosi")
    assert list(ladder) == list(RUNGS)
    acc = {rung: ladder[rung]["Has0_acc_2"] for rung in RUNGS}
    corr = {rung: ladder[rung]["Corr"] for rung in RUNGS}
    assert corr["text_linear"] < corr["pooled_linear"] < corr["aligned_ceiling"], corr
    assert acc["aligned_ceiling"] > acc["pooled_linear"] + 0.04, acc
    # the ceiling needs the TRUE map: the same read-out with the time-proportional map falls back
    shuffled = {split: dict(part) for split, part in data.items()}
    for split in ("train", "test"):
        for m in ("audio", "vision"):
            part = shuffled[split]
            lengths = part[f"{m}_lengths"]
            plan = _time_proportional_tokens(part, m)
            part[f"{m}_token"] = np.where(np.arange(part[m].shape[1])[None] < lengths[:, None], plan, -1)
    assert oracle_ladder(shuffled, "mosi")["aligned_ceiling"]["Corr"] < corr["aligned_ceiling"] - 0.03


def test_wordlevel_files_paths_and_tags(tmp_path):
    path = S.synthetic_path(tmp_path, "mosi", False, TINY, 1, task="wordlevel")
    assert path.name == "unaligned_50-synthetic-wordlevel-n12-5-7-bertpad-seed1.pkl"
    assert S.synthetic_path(tmp_path, "mosi", False, TINY, 1) != path
    written = S.ensure_synthetic(tmp_path, "mosi", size=TINY, seed=1, task="wordlevel")
    meta = S.read_metadata(written)
    assert meta["task"] == "wordlevel" and meta["synthetic"] is True
    assert set(meta["oracle"]) == {"text_linear", "pooled_linear", "aligned_ceiling"}
    assert S.data_tag(meta) == "synthetic-wordlevel-n12-5-7-bertpad"
    assert S.data_tag({"size": "small"}) == "synthetic-small"        # pooled files of the first release (zero pads)
    assert S.data_tag({"size": "small", "padding": "zero"}) == "synthetic-small-zeropad"
    mtime = written.stat().st_mtime_ns
    assert S.ensure_synthetic(tmp_path, "mosi", size=TINY, seed=1, task="wordlevel") == written
    assert written.stat().st_mtime_ns == mtime                          # cached, not regenerated
    with pytest.raises(ValueError, match="unknown synthetic task"):
        S.make_synthetic("mosi", size=TINY, task="nope")


def test_a_new_family_is_one_table_entry_and_changes_no_other_family(tmp_path, monkeypatch):
    """Registering a family (here the pooled generator under another name and seed tag) makes it
    generate and cache like the built-ins, and the wordlevel family's bytes stay pinned: a family's
    seed comes from its own fixed tag, not from its place in the table."""
    import types

    from mmsa_alignmamba.synthetic import pooled
    before = _digest(S.make_synthetic("mosi", size={"train": 20, "valid": 3, "test": 4}, seed=3, task="wordlevel"))
    toy = types.SimpleNamespace(VERSION=1, SEED_TAG=7, structure=pooled.structure, make_split=pooled.make_split)
    monkeypatch.setitem(S.FAMILIES, "toy", toy)
    data = S.make_synthetic("mosi", size=TINY, seed=3, task="toy")
    assert _digest(data) != _digest(S.make_synthetic("mosi", size=TINY, seed=3))   # its own seed tag
    path = S.ensure_synthetic(tmp_path, "mosi", size=TINY, seed=3, task="toy")
    assert path.name == "unaligned_50-synthetic-toy-n12-5-7-bertpad-seed3.pkl" and S.read_metadata(path)["seed_tag"] == 7
    assert _digest(S.make_synthetic("mosi", size={"train": 20, "valid": 3, "test": 4}, seed=3,
                                    task="wordlevel")) == before
    # a cached file made under another seed tag is stale: generated again
    meta = S.read_metadata(path)
    meta["seed_tag"] = 8
    open(str(path) + ".json", "w").write(json.dumps(meta))
    S.ensure_synthetic(tmp_path, "mosi", size=TINY, seed=3, task="toy")
    assert S.read_metadata(path)["seed_tag"] == 7
