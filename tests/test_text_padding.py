"""Valid text tokens come from text_bert's attention mask wherever the data has one (BERT's [PAD]
rows are not zero), zero rows otherwise. Every test here fails if the mask is ignored: the pad
rows' contents would then reach the model."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import mmsa_alignmamba
from conftest import load_pickle, run_cli, small_alignmamba_config
from mmsa_alignmamba import cli, text_padding
from mmsa_alignmamba.errors import DataFileError
from mmsa_alignmamba.missing import make_protocol
from mmsa_alignmamba.model import AlignMamba, AlignMambaConfig

T_TEXT, T_FRAMES = 24, 24   # most synthetic utterances (median 16 tokens) leave [PAD] slots at 24


def _write(data, path: Path) -> Path:
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=4)
    return path


def _pad_variants(data: dict, seed: int = 0) -> dict[str, dict]:
    """The same samples with the [PAD] rows of text written four ways (the mask unchanged, except
    'zero', which drops text_bert and so relies on zero rows)."""
    rng = np.random.default_rng(seed)
    out = {"bert": data, "random": {}, "shuffled": {}, "zero": {}}
    for split, part in data.items():
        pads = part["text_bert"][:, 1] == 0
        for name in ("random", "shuffled", "zero"):
            copy = {k: np.array(v, copy=True) for k, v in part.items()}
            if name == "random":
                copy["text"][pads] = 3 * rng.standard_normal((int(pads.sum()), copy["text"].shape[2]))
            elif name == "shuffled":
                copy["text"][pads] = copy["text"][pads][rng.permutation(int(pads.sum()))][:, ::-1]
            else:
                copy["text"][pads] = 0
                del copy["text_bert"]
            out[name][split] = copy
    return out


@pytest.fixture(scope="module")
def variants(tiny_pkl, tmp_path_factory) -> dict[str, Path]:
    data = load_pickle(tiny_pkl)
    for part in data.values():
        part["text"] = np.ascontiguousarray(part["text"][:, :T_TEXT])
        part["text_bert"] = np.ascontiguousarray(part["text_bert"][:, :, :T_TEXT])
        for m in ("audio", "vision"):
            part[m] = np.ascontiguousarray(part[m][:, :T_FRAMES])
            part[f"{m}_lengths"] = np.minimum(part[f"{m}_lengths"], T_FRAMES)
    assert (data["train"]["text_bert"][:, 1] == 0).any(1).mean() > 0.6     # most samples have pads
    assert np.all(np.abs(data["train"]["text"]).sum(-1) > 0)                  # and they are not zero
    folder = tmp_path_factory.mktemp("pads")
    return {name: _write(d, folder / f"{name}.pkl") for name, d in _pad_variants(data).items()}


# ------------------------------------------------------------------------------ the model itself
def _batch(path: Path, split="train", n=8):
    part = load_pickle(path)[split]
    t = lambda k: torch.as_tensor(np.asarray(part[k][:n]))  # noqa: E731
    lengths = t("text_bert")[:, 1].sum(1).long() if "text_bert" in part else None
    return (t("text"), t("audio"), t("vision")), {"audio_lengths": t("audio_lengths"),
                                                   "vision_lengths": t("vision_lengths")}, lengths


@pytest.mark.parametrize("cost", ["monotone", "cosine"])
def test_model_output_ignores_pad_contents_given_lengths(variants, cost):
    """Training-mode forward (dropout drawn alike, both losses) and eval: equal for every content of
    the masked rows, and equal to zero pads without any lengths; without lengths BERT pads differ."""
    torch.manual_seed(0)
    net = AlignMamba(AlignMambaConfig(feature_dims=(768, 5, 20), d_model=16, n_layers=1, ot_cost=cost,
                                      global_alignment="mmd"))
    base, extras, lengths = _batch(variants["bert"])

    def run(inputs, lengths, train):
        net.train(train)
        torch.manual_seed(1)
        out = net(*inputs, **extras, text_lengths=lengths)
        return torch.cat([out["M"].reshape(-1), out["plan_loss"].reshape(1), out["align_loss"].reshape(1)])

    for train in (True, False):
        want = run(base, lengths, train)
        for name in ("random", "shuffled"):
            inputs, _, same_lengths = _batch(variants[name])
            assert torch.equal(same_lengths, lengths)
            torch.testing.assert_close(run(inputs, lengths, train), want, rtol=1e-5, atol=1e-6)
        zero_inputs, _, none = _batch(variants["zero"])
        assert none is None
        torch.testing.assert_close(run(zero_inputs, None, train), want, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(run(base, None, train)[:-2], want[:-2], atol=1e-4)   # the mask matters


# ------------------------------------------------------------------------------ through MMSA's pipeline
def _train(pkl: Path, out: Path, config: Path, extra=()) -> tuple[dict, Path]:
    rc = cli.main([str(a) for a in ("-m", "alignmamba", "-d", "mosi", "--feature-path", pkl, "-s", "1",
                                    "--epochs", "1", "-v", "0", "-c", config, "--res-save-dir", out / "results",
                                    "--model-save-dir", out / "models", "--log-dir", out / "logs", *extra)])
    assert rc == 0
    (cell,) = (out / "results" / "cells").rglob("*.json")
    (checkpoint,) = (out / "models").glob("*.pth")
    return json.loads(cell.read_text())["metrics"], checkpoint


@pytest.fixture(scope="module")
def trained(variants, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pad_runs")
    config = small_alignmamba_config(tmp)
    return {name: _train(variants[name], tmp / name, config) for name in ("bert", "random", "zero")}


def test_training_validation_and_test_ignore_pad_contents(trained):
    """The data loader passes the mask (text_lengths) to the model in every split: one epoch on BERT
    pads, random pads and zero pads (no mask) gives the same test metrics and the same weights."""
    from mmsa_alignmamba import checkpoints
    metrics, weights = {}, {}
    for name, (m, checkpoint) in trained.items():
        metrics[name] = m
        weights[name] = checkpoints.load(checkpoint).state_dict
    for name in ("random", "zero"):
        assert metrics[name] == pytest.approx(metrics["bert"], rel=1e-5, abs=1e-6), name
        for key, value in weights["bert"].items():
            torch.testing.assert_close(weights[name][key], value, rtol=1e-5, atol=1e-6, msg=f"{name} {key}")


def test_predict_and_load_model_ignore_pad_contents(trained, variants, tmp_path, capsys):
    _, checkpoint = trained["bert"]
    scores = {}
    for name in ("bert", "random", "shuffled", "zero"):
        out = tmp_path / f"{name}.csv"
        rc, _, err = run_cli(["predict", "--checkpoint", checkpoint, "--feature-path", variants[name], "--out", out],
                             capsys)
        assert rc == 0, err
        scores[name] = np.array([float(line.split(",")[2]) for line in out.read_text().splitlines()[1:]])
    for name in ("random", "shuffled", "zero"):
        np.testing.assert_allclose(scores[name], scores["bert"], rtol=1e-5, atol=1e-6)
    _, predict, _ = mmsa_alignmamba.load_model(checkpoint)
    api = {}
    for name in ("bert", "random"):
        test = load_pickle(variants[name])["test"]
        api[name] = predict(test["text"], test["audio"], test["vision"], test["audio_lengths"],
                            test["vision_lengths"], text_lengths=test["text_bert"][:, 1].sum(1))
    np.testing.assert_allclose(api["bert"], scores["bert"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(api["random"], scores["bert"], rtol=1e-5, atol=1e-6)
    test = load_pickle(variants["bert"])["test"]
    blind = predict(test["text"], test["audio"], test["vision"], test["audio_lengths"], test["vision_lengths"])
    assert not np.allclose(blind, scores["bert"], atol=1e-5)     # without lengths every slot is a word
    with pytest.raises(mmsa_alignmamba.errors.InputError, match="text_lengths must hold"):
        predict(test["text"], test["audio"], test["vision"], text_lengths=np.zeros(len(test["text"])))


def test_onnx_graph_takes_text_lengths_and_ignores_pad_contents(trained, variants, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    _, checkpoint = trained["bert"]
    out = tmp_path / "am.onnx"
    rc, _, err = run_cli(["export", "--checkpoint", checkpoint, "--out", out], capsys)
    assert rc == 0, err
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = {}
    for name in ("bert", "random"):
        test = load_pickle(variants[name])["test"]
        feeds = {"text": test["text"], "audio": test["audio"], "vision": test["vision"],
                 "audio_lengths": test["audio_lengths"].astype(np.int64),
                 "vision_lengths": test["vision_lengths"].astype(np.int64),
                 "text_lengths": test["text_bert"][:, 1].sum(1).astype(np.int64)}
        got[name] = session.run(None, feeds)[0]
    np.testing.assert_allclose(got["random"], got["bert"], rtol=1e-5, atol=1e-6)
    _, predict, _ = mmsa_alignmamba.load_model(checkpoint)
    test = load_pickle(variants["bert"])["test"]
    eager = predict(test["text"], test["audio"], test["vision"], test["audio_lengths"], test["vision_lengths"],
                    text_lengths=test["text_bert"][:, 1].sum(1))
    np.testing.assert_allclose(got["bert"], eager, rtol=1e-4, atol=1e-5)


def test_frame_protocol_drops_valid_tokens_only():
    """``frame`` masks tokens below text_lengths; BERT-style [PAD] rows are never touched or counted."""
    g = torch.Generator().manual_seed(0)
    B, T = 6, 20
    lengths = torch.tensor([3, 8, 20, 5, 12, 1])
    batch = {"text": torch.randn(B, T, 8, generator=g), "audio": torch.randn(B, 30, 5, generator=g),
             "vision": torch.randn(B, 30, 4, generator=g), "audio_lengths": torch.full((B,), 30),
             "vision_lengths": torch.full((B,), 30), "text_lengths": lengths, "index": torch.arange(B)}
    out = make_protocol("frame", 0.5, 3).apply(batch, "test", 0)
    valid = torch.arange(T)[None] < lengths[:, None]
    assert torch.equal(out["text"][~valid], batch["text"][~valid])           # pads untouched
    dropped = (out["text"] == 0).all(-1)
    assert dropped[valid].any() and not dropped[~valid].any()
    assert torch.equal(out["text_step_mask"], valid & ~dropped)


# ------------------------------------------------------------------------------ fallbacks and bad masks
def test_unmarked_padding_logs_one_warning(variants, tmp_path, capsys):
    """No mask and no zero rows: every slot counts as a word, and the run says so in one warning."""
    data = load_pickle(variants["bert"])
    for part in data.values():
        del part["text_bert"]
    path = _write(data, tmp_path / "unmarked.pkl")
    config = small_alignmamba_config(tmp_path)

    def warnings(pkl, name):
        rc, out, err = run_cli(["-m", "alignmamba", "-d", "mosi", "--feature-path", pkl, "-s", "1", "--epochs", "1",
                                "-c", config, "--res-save-dir", tmp_path / name / "r", "--model-save-dir",
                                tmp_path / name / "m", "--log-dir", tmp_path / name / "l"], capsys)
        assert rc == 0, err
        return [line for line in (out + err).splitlines() if "WARNING" in line and "counts as a word" in line]

    (line,) = warnings(path, "unmarked")
    assert f"every one of its {T_TEXT} slots counts as a word" in line and "train" in line
    assert warnings(variants["zero"], "zero") == [] and warnings(variants["bert"], "bert") == []


def _corrupt(data, split, sample, how):
    mask = data[split]["text_bert"][:, 1]
    if how == "values":
        mask[sample, 0] = 0.5
    elif how == "holes":
        mask[sample, :] = 1
        mask[sample, 2] = 0
    elif how == "empty":
        mask[sample, :] = 0
    elif how == "length":
        for part in data.values():
            part["text_bert"] = part["text_bert"][:, :, :-1]


@pytest.mark.parametrize("how, message", [
    ("values", "holds values other than 0 and 1 in sample 3"),
    ("holes", "is not ones then zeros .* in sample 3"),
    ("empty", "marks no valid token in sample 3"),
    ("length", f"mask has {T_TEXT - 1} slots but the text has {T_TEXT}"),
])
def test_a_mask_that_contradicts_the_text_is_one_error(variants, tmp_path, capsys, how, message):
    data = load_pickle(variants["bert"])
    _corrupt(data, "valid", 3, how)
    path = _write(data, tmp_path / f"{how}.pkl")
    out = tmp_path / "out"
    rc, _, err = run_cli(["-m", "alignmamba", "-d", "mosi", "--feature-path", path, "-s", "1", "--epochs", "1",
                          "--res-save-dir", out / "r", "--model-save-dir", out / "m", "--log-dir", out / "l"], capsys)
    assert rc == 2
    line = err.strip().splitlines()[-1]
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "split 'valid'" in line or how == "length"
    import re
    assert re.search(message, line), line
    assert not out.exists()                                 # nothing half-written
    with pytest.raises(DataFileError):
        text_padding.text_lengths(data["valid"], "valid")


# ------------------------------------------------------------------------------ mmsa inspect
def test_inspect_tells_the_two_conventions_apart(variants, tmp_path, capsys):
    rc, out, err = run_cli(["inspect", str(variants["bert"])], capsys)
    assert rc == 0, err
    assert [line.strip() for line in out.splitlines() if line.startswith("==")] == ["== train ==", "== valid ==",
                                                                                   "== test =="]
    assert "attention mask in text_bert" in out and "no synthetic-data sidecar" in out
    train = load_pickle(variants["bert"])["train"]
    by_mask = train["text_bert"][:, 1].sum(1)
    agree = 100 * np.mean(by_mask == T_TEXT)            # BERT pads: rows agree only where nothing is padded
    assert f"agree with the mask in {agree:.1f}% of samples" in out
    assert f"{int(by_mask.min())} / {int(np.median(by_mask))} / {int(by_mask.max())} (min / median / max)" in out
    labels = train["regression_labels"]
    assert f"exact zeros {100 * np.mean(labels == 0):.1f}%" in out
    rc, out, _ = run_cli(["inspect", str(variants["zero"])], capsys)
    assert rc == 0 and "zero rows of text are padding" in out and "(no attention mask)" in out
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"not a pickle")
    rc, _, err = run_cli(["inspect", str(bad)], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and str(bad) in err
