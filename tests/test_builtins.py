"""Every MMSA built-in trains, validates and tests for one epoch through `mmsa` on CPU, on tiny
SYNTHETIC data, the BERT models from a tiny random BERT built here (no network: the hub is
offline for these tests). Each of these fails without one of the compat fixes of
host/fixes.py: mctn (fix_mctn_hardcoded_cuda), bert_mag (fix_bert_ignores_pretrained,
fix_mag_bert_transformers5), tfr_net (fix_bert_ignores_pretrained), self_mm and mmim (the epoch
budget counted in validation passes, cell_training.EpochBudget), mlf_dnn, mtfn and mlmf
(fix_multitask_train_log).

A crash inside a built-in's own code is one line naming the model, the phase and the cause,
exit 1, with its failure record, and the sweep goes on.
"""
from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import mmsa_alignmamba  # noqa: F401  (registers the plugins and applies the fixes)
from conftest import TINY_SIZES, load_pickle, run_cli
from mmsa_alignmamba import host
from mmsa_alignmamba.synthetic.common import CLS, SEP, VOCAB_OFFSET

SIZES = {"train": TINY_SIZES["n_train"], "valid": TINY_SIZES["n_valid"], "test": TINY_SIZES["n_test"]}
# MMSA's multi-task trainers assert SIMS (they read its unimodal labels)
SIMS_ONLY = {"mlf_dnn", "mtfn", "mlmf"}
# slow on 375/500-frame audio/vision on CPU (cross-modal attention; TFR-Net's reconstruction): copies
# with 25 audio and vision frames; the text keeps its 50 tokens (TFR-Net's 25 temporal heads must
# divide every length)
SHORT = {"mult", "tfr_net"}
SHORT_FRAMES = 25
SYNTHETIC_WORDS = 2000   # the synthetic families' vocabulary: ids VOCAB_OFFSET .. VOCAB_OFFSET + 1999


def write_tiny_bert(path: Path) -> Path:
    """A random-weight BERT (hidden 768 as MMSA's models expect, 1 layer) and a vocab.txt that has
    every id of the synthetic text_bert: [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, words from 1000."""
    from transformers import BertConfig, BertModel
    BertModel(BertConfig(vocab_size=VOCAB_OFFSET + SYNTHETIC_WORDS, hidden_size=768, num_hidden_layers=1,
                         num_attention_heads=12, intermediate_size=64, max_position_embeddings=64)).save_pretrained(path)
    tokens = [f"[unused{i}]" for i in range(VOCAB_OFFSET)]
    tokens[0], tokens[100], tokens[CLS], tokens[SEP], tokens[103] = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
    tokens += [f"w{i:04d}" for i in range(SYNTHETIC_WORDS)]
    (path / "vocab.txt").write_text("\n".join(tokens) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def _shorten(src: Path, dst: Path) -> Path:
    data = load_pickle(src)
    for part in data.values():
        for key in ("audio", "vision"):
            part[key] = np.ascontiguousarray(part[key][:, :SHORT_FRAMES])
            part[f"{key}_lengths"] = np.minimum(part[f"{key}_lengths"], SHORT_FRAMES)
    with open(dst, "wb") as f:
        pickle.dump(data, f, protocol=4)
    return dst


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory):
    """(dataset, aligned, short) -> a tiny SYNTHETIC pickle, made when first asked for."""
    from mmsa_alignmamba.synthetic import write_synthetic
    root, made = tmp_path_factory.mktemp("builtin-data"), {}

    def get(dataset: str, aligned: bool, short: bool) -> Path:
        key = (dataset, aligned, short)
        if key not in made:
            name = f"{dataset}{'-aligned' if aligned else ''}"
            full = made.get((dataset, aligned, False)) or write_synthetic(root / f"{name}.pkl", like=dataset,
                                                                          aligned=aligned, size=SIZES, seed=0)
            made[(dataset, aligned, False)] = Path(full)
            made[key] = _shorten(Path(full), root / f"{name}-short.pkl") if short else Path(full)
        return made[key]

    return get


@pytest.fixture
def offline_hub(monkeypatch):
    """No Hugging Face hub: a model that loads BERT by name fails here instead of downloading."""
    import huggingface_hub.constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def builtin_argv(model: str, tiny_sets, tiny_bert: Path, out: Path) -> list:
    dataset = "sims" if model in SIMS_ONLY else "mosi"
    config = host.load_config(model, dataset, None)
    aligned = bool(config.get("need_data_aligned")) and dataset != "sims"
    argv = ["-m", model, "-d", dataset, "--feature-path", tiny_sets(dataset, aligned, model in SHORT),
            "--epochs", "1", "-s", "1111", "-v", "0", "--res-save-dir", out / "r", "--model-save-dir", out / "m",
            "--log-dir", out / "l"]
    return argv + (["--pretrained", tiny_bert] if config.get("use_bert") else [])


def test_every_builtin_is_tested_here():
    """The list below is MMSA's: a built-in added or removed fails here, not silently."""
    assert sorted(host.builtin_models()) == sorted(BUILTINS)


BUILTINS = ["tfn", "ef_lstm", "lf_dnn", "lmf", "mfn", "graph_mfn", "mfm", "misa", "mult", "mctn", "bert_mag",
            "tfr_net", "self_mm", "mmim", "mlf_dnn", "mtfn", "mlmf"]


@pytest.mark.parametrize("model", BUILTINS)
def test_builtin_trains_and_tests_one_epoch_on_cpu(model, tiny_sets, tiny_bert, tmp_path, capsys, offline_hub):
    rc, _, err = run_cli(builtin_argv(model, tiny_sets, tiny_bert, tmp_path), capsys)
    assert rc == 0, err
    (cell,) = (tmp_path / "r" / "cells").rglob("*.json")
    metrics = json.loads(cell.read_text())["metrics"]
    assert metrics and all(math.isfinite(v) for v in metrics.values()), metrics
    (checkpoint,) = (tmp_path / "m").glob(f"{model}-*.pth")
    assert torch.load(checkpoint, weights_only=True)["meta"]["model"] == model


def _crash_when_validating_seed_1(monkeypatch):
    """LF_DNN's forward raises while validating (eval mode, inside do_train) for seed 1 only."""
    from MMSA.models.singleTask.LF_DNN import LF_DNN
    forward = LF_DNN.forward

    def crashing(self, *args, **kwargs):
        if not self.training and torch.initial_seed() == 1:
            raise ZeroDivisionError("a bug inside the model")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(LF_DNN, "forward", crashing)


@pytest.mark.parametrize("verbose", ["1", "2"])
def test_a_crash_in_a_builtin_is_one_line_and_the_sweep_goes_on(tiny_pkl, tmp_path, capsys, monkeypatch, verbose):
    _crash_when_validating_seed_1(monkeypatch)
    argv = ["-m", "lf_dnn", "--feature-path", tiny_pkl, "-s", "1", "-s", "2", "--epochs", "1", "-v", verbose,
            "--res-save-dir", tmp_path / "r", "--model-save-dir", tmp_path / "m", "--log-dir", tmp_path / "l"]
    rc, _, err = run_cli(argv, capsys)
    assert rc == 1
    said = [line for line in err.splitlines() if "FAILED" in line]
    assert len(said) == 1 and "lf_dnn" in said[0] and "seed1" in said[0] and "while validating" in said[0] \
        and "ZeroDivisionError: a bug inside the model" in said[0], err
    assert ("Traceback" in err) == (verbose == "2")
    (record,) = (tmp_path / "r" / "failed").rglob("*.json")
    assert "seed1-" in record.name or record.name.endswith("seed1.json")
    assert "while validating" in json.loads(record.read_text())["likely_cause"]
    cells = list((tmp_path / "r" / "cells").rglob("*.json"))
    assert [json.loads(c.read_text())["cell"]["seed"] for c in cells] == [2]     # seed 2 trained all the same
    assert "Runs that did not finish" in (tmp_path / "r" / "summary.md").read_text()


class _Loader(list):
    dataset = None


@pytest.mark.parametrize("passes_before, train_passes_per_epoch", [(0, 1), (1, 1), (0, 2)])
def test_epoch_budget_counts_epochs_in_validation_passes(passes_before, train_passes_per_epoch):
    """A plain trainer, Self-MM's (one pass over the train loader before its first epoch) and
    MMIM's (two per epoch): each trains exactly the budget's epochs, each validated."""
    from mmsa_alignmamba.cell_training import EpochBudget, EpochBudgetReached
    budget = EpochBudget({"train": _Loader([1]), "valid": _Loader([2]), "test": _Loader([3])}, 2)
    loaders, epochs = budget.loaders, 0
    for _ in range(passes_before):
        list(loaders["train"])
    with pytest.raises(EpochBudgetReached):
        while True:                                   # MMSA's "until early stop"
            for _ in range(train_passes_per_epoch):
                list(loaders["train"])
                assert budget.phase == "training"
            epochs += 1
            list(loaders["valid"])
            assert budget.phase == "validating"
    assert epochs == 2 and budget.validated == 2


# ------------------------------------------------------------------------------ mmsa leaderboard
def test_leaderboard_all_is_every_model_with_a_config_for_the_dataset():
    from mmsa_alignmamba.cli.leaderboard import leaderboard_models
    mosi = leaderboard_models(["all"], "mosi")
    assert ("alignmamba", "") in mosi and ("alignmamba", "paper") in mosi and ("mctn", "") in mosi
    assert not {m for m, _ in mosi} & SIMS_ONLY
    sims = {m for m, _ in leaderboard_models(["all"], "sims")}
    assert SIMS_ONLY <= sims and "mctn" not in sims
    assert {m for m, _ in mosi} | sims == set(host.registered_models())


@pytest.mark.parametrize("models, message", [
    (["all", "tfn"], "--models all stands alone"), (["tfn+paper"], "only alignmamba has variants"),
    (["alignmamba+nope"], "unknown variant"), (["mlf_dnn"], "MMSA has no mosi config for mlf_dnn"),
    (["nosuchmodel"], "nosuchmodel")])
def test_leaderboard_refuses_bad_model_lists(models, message, tmp_path, capsys):
    rc, _, err = run_cli(["leaderboard", "--models", *models, "--res-save-dir", tmp_path / "r"], capsys)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_leaderboard_trains_aligned_and_unaligned_models_and_keeps_mmsa_rows_apart(tiny_sets, tmp_path, capsys):
    """ef_lstm trains on the aligned file and lf_dnn on the unaligned one, in one summary; MMSA's
    published MOSI rows follow in their own section, each marked, none in the measured table."""
    root = tmp_path / "data" / "MOSI" / "Processed"
    root.mkdir(parents=True)
    for aligned, name in ((False, "unaligned_50.pkl"), (True, "aligned_50.pkl")):
        (root / name).write_bytes(tiny_sets("mosi", aligned, False).read_bytes())
    rc, out, err = run_cli(["leaderboard", "-d", "mosi", "--data-dir", tmp_path / "data", "--models", "lf_dnn",
                            "ef_lstm", "-s", "1111", "--epochs", "1", "--reference", "mmsa", "-v", "0",
                            "--res-save-dir", tmp_path / "r", "--model-save-dir", tmp_path / "m",
                            "--log-dir", tmp_path / "l"], capsys)
    assert rc == 0, err
    trained = {json.loads(p.read_text())["cell"]["model"] for p in (tmp_path / "r" / "cells").rglob("*.json")}
    assert trained == {"lf_dnn", "ef_lstm"}
    meta = {m: torch.load(next((tmp_path / "m").glob(f"{m}-*.pth")), weights_only=True)["meta"]
            for m in trained}
    assert meta["ef_lstm"]["config"]["need_data_aligned"] and not meta["lf_dnn"]["config"]["need_data_aligned"]
    md = (tmp_path / "r" / "summary.md").read_text()
    measured, reference = md.split("## Reference: reported by MMSA, not measured here")
    assert "reported by MMSA" not in measured
    assert "| self_mm (reported by MMSA) | unaligned | 83.44 | 83.36 | 85.46 | 85.43 | 53.47 | 46.67 | 0.708 | 0.7963 |" \
        in reference
    assert "results/result-stat.md" in reference and "### MOSI" in reference and "### SIMS" not in reference


def test_a_model_without_a_config_for_the_dataset_is_one_error_line(tiny_pkl, tmp_path, capsys):
    rc, _, err = run_cli(["-m", "mlf_dnn", "-d", "mosi", "--feature-path", tiny_pkl, "--res-save-dir", tmp_path / "r"],
                         capsys)
    assert rc == 2 and err.strip() == "mmsa: error: MMSA has no mosi config for mlf_dnn (see its datasetParams)"


@pytest.mark.parametrize("dataset, models", [("mosi", ["self_mm", "bert_mag"]), ("sims", ["mlf_dnn"])])
def test_builtins_run_on_ray_with_a_missing_protocol_and_early_stop(dataset, models, tiny_sets, tiny_bert, tmp_path):
    """The models whose fixes touch their trainers and BERT loading (Self-MM's epoch budget,
    MAG-BERT's own BERT, a SIMS multi-task trainer) on a real local Ray, through `mmsa leaderboard`,
    with the hub offline in the workers: trained under --epochs and --early-stop, tested complete and
    at a missing rate."""
    from conftest import run_mmsa
    pytest.importorskip("ray")                     # in the test extra: CI always runs this
    root = tmp_path / "data" / dataset.upper() / "Processed"
    root.mkdir(parents=True)
    (root / "unaligned_39.pkl" if dataset == "sims" else root / "unaligned_50.pkl").write_bytes(
        tiny_sets(dataset, False, False).read_bytes())
    if dataset == "mosi":
        (root / "aligned_50.pkl").write_bytes(tiny_sets(dataset, True, False).read_bytes())
    proc = run_mmsa(["leaderboard", "-d", dataset, "--data-dir", tmp_path / "data", "--models", *models,
                     "-s", "1111", "--epochs", "2", "--early-stop", "1", "--missing-protocol", "sample",
                     "--missing-rates", "0", "0.5", "--executor", "ray", "--cpus-per-run", "1",
                     "--pretrained", tiny_bert, "--res-save-dir", tmp_path / "r", "--model-save-dir", tmp_path / "m",
                     "--log-dir", tmp_path / "l"], home=tmp_path,
                    extra_env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "to Ray" in proc.stderr
    cells = [json.loads(p.read_text()) for p in (tmp_path / "r" / "cells").rglob("*.json")]
    tested = sorted((c["cell"]["model"], c["cell"]["rate"]) for c in cells)
    assert tested == sorted((m, r) for m in models for r in (0.0, 0.5)), tested
    assert all(math.isfinite(v) for c in cells for v in c["metrics"].values())
