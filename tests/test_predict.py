"""Using a trained model: self-describing checkpoints, `mmsa predict`, the Python API, bad input."""
from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_pickle, run_cli, small_alignmamba_config

import mmsa_alignmamba
from mmsa_alignmamba import checkpoints, cli
from mmsa_alignmamba.predict import sentiment_classes
from mmsa_alignmamba.errors import InputError


def _train(model: str, pkl: Path, out: Path, extra=()) -> Path:
    rc = cli.main([str(a) for a in ("-m", model, "-d", "mosi", "--feature-path", pkl, "-s", "1", "--epochs", "1",
                                    "-v", "0", "--res-save-dir", out / "results", "--model-save-dir", out / "models",
                                    "--log-dir", out / "logs", *extra)])
    assert rc == 0
    (checkpoint,) = (out / "models").glob(f"{model}-*.pth")
    return checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory, short_pkl):
    """An AlignMamba trained for one epoch on the short SYNTHETIC set: (checkpoint, results dir)."""
    out = tmp_path_factory.mktemp("trained")
    return _train("alignmamba", short_pkl, out, ("-c", small_alignmamba_config(out))), out / "results"


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write(data, path: Path) -> Path:
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=4)
    return path


# ------------------------------------------------------------------------------ checkpoints
def test_checkpoint_describes_itself(trained, tmp_path):
    checkpoint, results = trained
    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)   # plain types only
    assert payload["format"] == checkpoints.FORMAT
    meta = payload["meta"]
    assert (meta["model"], meta["dataset"], meta["seed"], meta["variant"]) == ("alignmamba", "mosi", 1, None)
    assert meta["data"] == "real"      # the short set has no synthetic sidecar
    assert meta["feature_dims"] == [768, 5, 20]
    assert meta["config"]["d_model"] == 16 and meta["config"]["model_name"] == "alignmamba"
    assert set(meta["versions"]) == {"mmsa-alignmamba", "mmsa", "torch"} and meta["versions"]["mmsa"] == "2.2.1"
    (cell,) = (results / "cells").rglob("*.json")
    assert meta["test_metrics"]["complete"] == json.loads(cell.read_text())["metrics"]
    # nothing machine-local travels with it
    text = json.dumps(meta)
    assert str(tmp_path.parent.parent) not in text and "featurePath" not in meta["config"]


def test_bare_state_dict_still_loads(trained, tmp_path, short_pkl):
    checkpoint, _ = trained
    bare = tmp_path / "bare.pth"
    torch.save(checkpoints.load(checkpoint).state_dict, bare)    # what every earlier release wrote
    test = load_pickle(short_pkl)["test"]
    inputs = (test["text"], test["audio"], test["vision"], test["audio_lengths"], test["vision_lengths"])
    described = mmsa_alignmamba.load_model(checkpoint)
    old = mmsa_alignmamba.load_model(bare, model="alignmamba", dataset="mosi", feature_dims=(768, 5, 20),
                                     config_file=small_alignmamba_config(tmp_path))
    np.testing.assert_allclose(old.predict(*inputs), described.predict(*inputs), rtol=1e-6, atol=1e-6)
    with pytest.raises(InputError, match="does not describe itself"):
        mmsa_alignmamba.load_model(bare)


# ------------------------------------------------------------------------------ mmsa predict
def test_predict_matches_the_test_run(trained, short_pkl, tmp_path, capsys):
    checkpoint, results = trained
    out = tmp_path / "preds.csv"
    rc, stdout, err = run_cli(["predict", "--checkpoint", checkpoint, "--feature-path", short_pkl, "--out", out], capsys)
    assert rc == 0, err
    test = load_pickle(short_pkl)["test"]
    rows = _rows(out)
    assert [r["id"] for r in rows] == [str(i) for i in test["id"]]
    assert set(rows[0]) == {"id", "split", "score", "class_2", "class_7", "label"}
    (cell,) = (results / "cells").rglob("*.json")
    reported = json.loads(cell.read_text())["metrics"]
    # the printed metrics are MMSA's, on the same predictions the test run scored
    assert f"Has0 Acc-2 {100 * reported['Has0_acc_2']:.2f}" in stdout and f"MAE {reported['MAE']:.4f}" in stdout
    for row in rows:
        assert row["class_2"] == ("positive" if float(row["score"]) >= 0 else "negative")


def test_unlabelled_single_sample_and_batch_size_one(trained, short_pkl, tmp_path, capsys):
    checkpoint, _ = trained
    data = load_pickle(short_pkl)
    for part in data.values():
        del part["regression_labels"]
    unlabelled = _write(data, tmp_path / "unlabelled.pkl")
    one = _write({s: {k: v[:1] for k, v in part.items()} for s, part in data.items()}, tmp_path / "one.pkl")
    full, single = tmp_path / "full.csv", tmp_path / "single.csv"
    rc, stdout, err = run_cli(["predict", "--checkpoint", checkpoint, "--feature-path", unlabelled, "--out", full,
                               "--split", "all"], capsys)
    assert rc == 0, err
    assert "Has0" not in stdout      # no labels, no metrics
    rows = _rows(full)
    assert "label" not in rows[0] and [r["split"] for r in rows].count("test") == len(data["test"]["id"])
    rc, _, err = run_cli(["predict", "--checkpoint", checkpoint, "--feature-path", one, "--out", single, "-b", "1"],
                         capsys)
    assert rc == 0, err
    (alone,) = _rows(single)
    batched = next(r for r in rows if r["split"] == "test" and r["id"] == alone["id"])
    assert float(alone["score"]) == pytest.approx(float(batched["score"]), abs=1e-5)


def test_absent_modality_uses_the_protocols_mask(trained, short_pkl, tmp_path, capsys):
    checkpoint, _ = trained
    scores = {}
    for absent in ([], ["audio"], ["audio", "vision"]):
        out = tmp_path / f"{'-'.join(absent) or 'none'}.csv"
        rc, _, err = run_cli(["predict", "--checkpoint", checkpoint, "--feature-path", short_pkl, "--out", out,
                              *(["--absent", *absent] if absent else [])], capsys)
        assert rc == 0, err
        scores[tuple(absent)] = np.array([float(r["score"]) for r in _rows(out)])
    assert not np.allclose(scores[()], scores[("audio",)])
    # the API's `absent` is the same switch
    test = load_pickle(short_pkl)["test"]
    _, predict, _ = mmsa_alignmamba.load_model(checkpoint)
    api = predict(test["text"], test["audio"], test["vision"], test["audio_lengths"], test["vision_lengths"],
                  absent=["audio", "vision"], text_lengths=test["text_bert"][:, 1].sum(1))
    np.testing.assert_allclose(api, scores[("audio", "vision")], atol=1e-5)


def test_builtin_model_at_batch_size_one(tiny_pkl, tmp_path, capsys):
    """MMSA's own do_test squeezes a batch of one to a 0-d array; predictions must not care."""
    checkpoint = _train("lf_dnn", tiny_pkl, tmp_path / "lf")
    assert checkpoints.load(checkpoint).meta["model"] == "lf_dnn"
    out = tmp_path / "lf.csv"
    rc, _, err = run_cli(["predict", "--checkpoint", checkpoint, "--feature-path", tiny_pkl, "--out", out, "-b", "1"],
                         capsys)
    assert rc == 0, err
    assert len(_rows(out)) == len(load_pickle(tiny_pkl)["test"]["id"])


# ------------------------------------------------------------------------------ Python API
def test_load_model_predicts_numpy_one_sample_or_a_batch(trained, short_pkl):
    checkpoint, _ = trained
    model, predict, info = mmsa_alignmamba.load_model(checkpoint)
    assert not model.training and info.model == "alignmamba" and info.feature_dims == (768, 5, 20)
    test = load_pickle(short_pkl)["test"]
    batch = predict(test["text"], test["audio"], test["vision"], test["audio_lengths"], test["vision_lengths"])
    assert batch.shape == (len(test["id"]),) and np.isfinite(batch).all()
    one = predict(test["text"][2], test["audio"][2], test["vision"][2], test["audio_lengths"][2:3],
                  test["vision_lengths"][2:3])
    assert one.shape == (1,) and one[0] == pytest.approx(batch[2], abs=1e-5)
    no_lengths = predict(test["text"][:2], test["audio"][:2], test["vision"][:2])   # full padded lengths
    assert no_lengths.shape == (2,)
    with pytest.raises(InputError, match="feature widths"):
        predict(test["text"], test["audio"][..., :4], test["vision"])


def test_classes_follow_mmsa_thresholds():
    mosi = sentiment_classes(np.array([-3.4, -0.2, 0.0, 0.6, 2.5]), "mosi")
    assert mosi["class_2"] == ["negative", "negative", "positive", "positive", "positive"]
    assert mosi["class_7"] == [-3, 0, 0, 1, 2]
    sims = sentiment_classes(np.array([-0.8, -0.1, 0.05, 0.1, 0.5, 1.3]), "sims")
    assert sims["class_2"] == ["negative", "negative", "positive", "positive", "positive", "positive"]
    assert sims["class_3"] == ["negative", "negative", "neutral", "neutral", "positive", "positive"]
    assert sims["class_5"] == [0, 1, 2, 2, 3, 4]


# ------------------------------------------------------------------------------ bad input
class _Code:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os
        return (os.makedirs, (self.marker,))


def _bad_checkpoints(trained, tmp_path, tiny_pkl):
    checkpoint, _ = trained
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(checkpoint.read_bytes()[:2000])
    code = tmp_path / "code.pth"
    torch.save({"weight": _Code(tmp_path / "MARKER")}, code)
    lf = _train("lf_dnn", tiny_pkl, tmp_path / "lf")
    return {"other_model": (["-m", "alignmamba", "--checkpoint", lf], "checkpoint of 'lf_dnn', not of 'alignmamba'"),
            "truncated": (["--checkpoint", truncated], "truncated or corrupt"),
            "code": (["--checkpoint", code], "holds more than weights")}


def test_bad_checkpoints_exit_2_and_write_nothing(trained, tmp_path, short_pkl, tiny_pkl, capsys):
    for name, (argv, message) in _bad_checkpoints(trained, tmp_path, tiny_pkl).items():
        out = tmp_path / f"{name}.csv"
        rc, _, err = run_cli(["predict", *argv, "--feature-path", short_pkl, "--out", out], capsys)
        lines = [line for line in err.splitlines() if line.startswith("mmsa: error:")]
        assert rc == 2 and len(lines) == 1 and message in lines[0], (name, err)
        assert not out.exists(), name
    assert not (tmp_path / "MARKER").exists()


def test_feature_widths_mismatch_exits_2(trained, short_pkl, tmp_path, capsys):
    checkpoint, _ = trained
    data = load_pickle(short_pkl)
    for part in data.values():
        part["vision"] = part["vision"][..., :7]
    narrow = _write(data, tmp_path / "narrow.pkl")
    out = tmp_path / "narrow.csv"
    rc, _, err = run_cli(["predict", "--checkpoint", checkpoint, "--feature-path", narrow, "--out", out], capsys)
    assert rc == 2 and "feature widths (text, audio, vision) = (768, 5, 7)" in err and "(768, 5, 20)" in err
    assert not out.exists()
