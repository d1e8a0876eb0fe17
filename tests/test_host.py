"""The MMSA adapter (host.py): plugin registration and one test per compat fix, all through
MMSA's own entry points (MMSA_run, MMSA_test, MMDataLoader, _set_logger, the trainers).

Every compat-fix test fails when that fix is left out of `host.COMPAT_FIXES`.
"""
from __future__ import annotations

import ast
import csv
import importlib
import logging
import os
import pickle
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mmsa_alignmamba  # noqa: F401  (registers the plugins and applies the fixes)
import MMSA
import MMSA.run
from conftest import load_pickle, reset_loggers
from mmsa_alignmamba import host, settings
from mmsa_alignmamba.errors import InputError
from mmsa_alignmamba.safeio import UnsafePickleError

METRICS = ["Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Mult_acc_5", "Mult_acc_7", "MAE", "Corr"]
# lr 0 keeps the validation loss constant, so MMSA's LF_DNN trainer (which trains until
# `early_stop` epochs pass without improvement) stops after exactly 2 epochs.
LF_DNN_FAST = {"early_stop": 1, "learning_rate": 0.0}
ALIGNMAMBA_SMALL = {"max_epochs": 1, "d_model": 16, "n_layers": 1}


def _mmsa_run(model, feature_path, out: Path, seeds, overrides, **kwargs):
    dirs = {"model_save_dir": str(out / "models"), "res_save_dir": str(out / "results"), "log_dir": str(out / "logs")}
    dirs.update(kwargs.pop("dirs", {}))
    try:
        MMSA.MMSA_run(model, "mosi", config={"featurePath": str(feature_path), **overrides}, seeds=seeds,
                      gpu_ids=[], num_workers=0, verbose_level=0, **dirs, **kwargs)
    finally:
        reset_loggers(("MMSA",))  # MMSA_run leaves its log file open on the MMSA logger
    return out


def _mmsa_config(model, **overrides):
    cfg = MMSA.get_config_regression(model, "mosi")
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def lf_dnn_run(tmp_path_factory, tiny_pkl):
    """MMSA_run('lf_dnn', 'mosi', seeds=[1, 2]) on CPU after `import mmsa_alignmamba`."""
    return _mmsa_run("lf_dnn", tiny_pkl, tmp_path_factory.mktemp("lf_dnn_run"), [1, 2], LF_DNN_FAST)


@pytest.fixture(scope="module")
def alignmamba_run(tmp_path_factory, short_pkl):
    return _mmsa_run("alignmamba", short_pkl, tmp_path_factory.mktemp("alignmamba_run"), [1, 2], ALIGNMAMBA_SMALL)


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------ registration
def test_install_is_idempotent_and_registers_builtin_and_plugin_models():
    host.install()
    host.install()
    models = host.registered_models()
    assert models["lf_dnn"] == "MMSA" and models["mult"] == "MMSA"
    assert models.get("alignmamba") == "mmsa-alignmamba", (
        "alignmamba is not registered: `import mmsa_alignmamba.model` must work "
        f"(registered: {sorted(models)})")
    # MMSA's own model map is unchanged; ours lives beside it
    from MMSA.trains import ATIO
    assert "alignmamba" not in ATIO().TRAIN_MAP


def test_check_model_name_lists_registered_models():
    assert host.check_model_name("LF_DNN") == "lf_dnn"
    with pytest.raises(host.UnknownModelError) as e:
        host.check_model_name("nosuchmodel")
    message = str(e.value)
    assert "nosuchmodel" in message and "lf_dnn" in message and "alignmamba" in message


def test_mmsa_config_loaders_know_plugin_models():
    """MMSA.get_config_regression / get_config_tune (and the names MMSA.run imported) see the plugin."""
    import json
    section = json.loads(host.plugins()["alignmamba"].config_path.read_text())["alignmamba"]
    for getter in (MMSA.get_config_regression, MMSA.config.get_config_regression, MMSA.run.get_config_regression):
        cfg = getter("alignmamba", "mosi")
        assert cfg["model_name"] == "alignmamba" and cfg["dataset_name"] == "mosi"
        assert cfg["d_model"] == section["commonParams"]["d_model"]
        assert cfg["batch_size"] == section["datasetParams"]["mosi"]["batch_size"]
        assert cfg["featurePath"].endswith("unaligned_50.pkl")  # MMSA's dataset params are merged in
    tune = MMSA.run.get_config_tune("alignmamba", "mosi")
    assert tune["d_model"] in section["debugParams"]["d_model"] and "d_paras" in tune
    # built-in models still read MMSA's own JSON
    assert MMSA.run.get_config_regression("lf_dnn", "mosi")["hidden_dims"] == [128, 16, 128]


def test_amio_and_atio_build_plugin_model_and_trainer():
    from MMSA.models import AMIO
    from MMSA.trains import ATIO
    from mmsa_alignmamba.model import AlignMamba
    from mmsa_alignmamba.trainer import AlignMambaTrainer
    args = _mmsa_config("alignmamba", feature_dims=[768, 5, 20], train_mode="regression", device=torch.device("cpu"))
    model = AMIO(args)
    assert isinstance(model.Model, AlignMamba)
    assert isinstance(ATIO().getTrain(args), AlignMambaTrainer)
    # and MMSA's own models are untouched
    lf = _mmsa_config("lf_dnn", feature_dims=[768, 5, 20], train_mode="regression", device=torch.device("cpu"))
    assert type(AMIO(lf).Model).__name__ == "LF_DNN"
    assert type(ATIO().getTrain(lf)).__name__ == "LF_DNN"


def test_compat_fixes_are_the_tested_ones():
    """Each fix below has its own test (here, or in test_builtins.py for the fixes of single models;
    each fails with that fix left out): a new fix needs one too."""
    assert [f.__name__ for f in host.COMPAT_FIXES] == [
        "fix_cpu_set_device", "fix_reduce_lr_verbose", "fix_numpy_text_in_csv", "fix_duplicate_log_handlers",
        "fix_empty_paths", "fix_checkpoint_per_seed", "fix_eval_shuffle", "fix_unsafe_pickle_load",
        "fix_text_lengths_from_mask", "fix_glibc_heap_growth", "fix_mctn_hardcoded_cuda",
        "fix_bert_ignores_pretrained", "fix_mag_bert_transformers5",
        "fix_multitask_train_log"]   # the last four: tests/test_builtins.py


_HEAP_PATTERN = """
import sys, torch
def rss():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]) / 1024
if sys.argv[1] == 'fixed':
    from mmsa_alignmamba.host import fixes
    fixes.fix_glibc_heap_growth()
big = torch.empty(16 * 2**20 // 4); del big    # a freed 16 MB mapping: glibc raises its mmap threshold to 16 MB
base, keep = rss(), []
for _ in range(40):                            # what a training step leaves: a large activation freed,
    t = torch.ones(8 * 2**20 // 4)             # a small tensor kept after it
    keep.append(torch.ones(96 * 1024 // 4))    # 96 KB: too big for the small holes imports leave behind
    del t
print(rss() - base)
"""


def test_glibc_heap_growth_fix_hands_freed_activations_back():
    """fix_glibc_heap_growth: freed large tensors stayed resident (glibc's rising mmap threshold put
    them on the heap behind small live blocks); MulT's memory grew epoch after epoch until killed."""
    import subprocess
    def kept(mode, **env):
        return float(subprocess.run([sys.executable, "-c", _HEAP_PATTERN, mode], capture_output=True, text=True,
                                    check=True, env={**os.environ, **env}).stdout)
    plain, fixed = kept("plain"), kept("fixed")
    assert plain > 200, plain      # 40 freed 8 MB tensors still resident: the bug is real here
    assert fixed < 20, fixed


@pytest.mark.parametrize("setting, threshold", [(None, 128 * 1024), ("1048576", 1048576), ("0", None)])
def test_glibc_heap_growth_fix_follows_its_environment_variable(monkeypatch, setting, threshold):
    """The fix acts on the whole process, so its size can be changed and 0 turns it off. Checked on
    the mallopt call itself: what glibc then does with the heap also depends on what the imports
    before it left there, so the opt-out cannot be read reliably from the process's memory."""
    import ctypes
    from mmsa_alignmamba.host import fixes
    calls = []

    class RecordingLibc:
        def __init__(self, name):
            self.mallopt = lambda option, value: calls.append((option, value))

    monkeypatch.setattr(ctypes, "CDLL", RecordingLibc)
    if setting is None:
        monkeypatch.delenv("MMSA_ALIGNMAMBA_MMAP_THRESHOLD", raising=False)
    else:
        monkeypatch.setenv("MMSA_ALIGNMAMBA_MMAP_THRESHOLD", setting)
    fixes.fix_glibc_heap_growth()
    M_MMAP_THRESHOLD = -3
    assert calls == ([] if threshold is None else [(M_MMAP_THRESHOLD, threshold)])


def test_glibc_heap_growth_fix_refuses_a_bad_size(monkeypatch):
    from mmsa_alignmamba.host import fixes
    monkeypatch.setenv("MMSA_ALIGNMAMBA_MMAP_THRESHOLD", "lots")
    with pytest.raises(InputError, match="MMSA_ALIGNMAMBA_MMAP_THRESHOLD must be a size in bytes"):
        fixes.fix_glibc_heap_growth()


# ------------------------------------------------------------------------------ end to end through MMSA's API
def test_mmsa_run_lf_dnn_on_cpu(lf_dnn_run):
    """fix_cpu_set_device: MMSA_run called torch.cuda.set_device('cpu') and crashed without CUDA."""
    rows = _csv_rows(lf_dnn_run / "results" / "normal" / "mosi.csv")
    assert [r["Model"] for r in rows] == ["lf_dnn"]
    assert (lf_dnn_run / "logs" / "lf_dnn-mosi.log").is_file()


def test_cpu_set_device_is_harmless_inside_mmsa_run():
    MMSA.run.torch.cuda.set_device(torch.device("cpu"))  # raised ValueError before the fix
    MMSA.run.torch.cuda.set_device("cpu")
    assert MMSA.run.torch.zeros(2).sum().item() == 0.0   # everything else is plain torch


def test_mmsa_run_alignmamba_on_cpu(alignmamba_run):
    rows = _csv_rows(alignmamba_run / "results" / "normal" / "mosi.csv")
    assert [r["Model"] for r in rows] == ["alignmamba"]
    for metric in METRICS:
        mean, std = ast.literal_eval(rows[0][metric])
        assert math.isfinite(mean) and math.isfinite(std)
    assert sorted(p.name for p in (alignmamba_run / "models").glob("*.pth")) == [
        "alignmamba-mosi-seed1.pth", "alignmamba-mosi-seed2.pth"]


def test_result_csv_has_plain_numbers(lf_dnn_run):
    """fix_numpy_text_in_csv: under numpy 2 MMSA wrote '(np.float64(85.2), np.float64(0.3))'."""
    text = (lf_dnn_run / "results" / "normal" / "mosi.csv").read_text()
    assert "np.float64" not in text and "np." not in text
    row = _csv_rows(lf_dnn_run / "results" / "normal" / "mosi.csv")[0]
    for metric in METRICS:
        value = ast.literal_eval(row[metric])  # MMSA's cell is the tuple (mean, std) in percent
        assert isinstance(value, tuple) and len(value) == 2
        assert all(type(v) is float and math.isfinite(v) for v in value), (metric, row[metric])


def test_one_checkpoint_per_seed(lf_dnn_run):
    """fix_checkpoint_per_seed: MMSA saved every seed to '<model>-<dataset>.pth' (only the last survived)."""
    checkpoints = sorted((lf_dnn_run / "models").glob("*.pth"))
    assert [p.name for p in checkpoints] == ["lf_dnn-mosi-seed1.pth", "lf_dnn-mosi-seed2.pth"]
    first, second = (torch.load(p, weights_only=True) for p in checkpoints)
    assert first.keys() == second.keys()
    assert any(not torch.equal(first[k], second[k]) for k in first), "both files hold the same weights"


def test_checkpoint_path_helper():
    assert settings.checkpoint_path("/m", "lf_dnn", "mosi", 3) == Path("/m/lf_dnn-mosi-seed3.pth")


def test_mmsa_test_lf_dnn(lf_dnn_run, single_sample_pkl):
    checkpoint = lf_dnn_run / "models" / "lf_dnn-mosi-seed1.pth"
    cfg = _mmsa_config("lf_dnn")
    # the checkpoint matches the model MMSA_test builds (it loads with strict=False, so check here)
    from MMSA.models import AMIO
    model = AMIO(_mmsa_config("lf_dnn", feature_dims=[768, 5, 20], train_mode="regression",
                              device=torch.device("cpu")))
    model.load_state_dict(torch.load(checkpoint, weights_only=True), strict=True)
    torch.manual_seed(0)
    first = MMSA.MMSA_test(cfg, str(checkpoint), str(single_sample_pkl), gpu_id=-1)
    torch.manual_seed(12345)
    second = MMSA.MMSA_test(_mmsa_config("lf_dnn"), str(checkpoint), str(single_sample_pkl), gpu_id=-1)
    assert math.isfinite(float(first))
    assert float(first) == float(second), "prediction depends on the random init: weights were not loaded"


def test_mmsa_test_alignmamba(alignmamba_run, short_single_sample_pkl):
    checkpoint = alignmamba_run / "models" / "alignmamba-mosi-seed1.pth"
    predictions = []
    for seed in (0, 12345):
        torch.manual_seed(seed)
        predictions.append(float(MMSA.MMSA_test(_mmsa_config("alignmamba", **ALIGNMAMBA_SMALL), str(checkpoint),
                                                str(short_single_sample_pkl), gpu_id=-1)))
    assert math.isfinite(predictions[0])
    assert predictions[0] == predictions[1]


# ------------------------------------------------------------------------------ compat fixes, one by one
@pytest.mark.parametrize("module", ["MMSA.trains.singleTask.MULT", "MMSA.trains.singleTask.MMIM",
                                    "MMSA.trains.missingTask.TFR_NET"])
def test_reduce_lr_on_plateau_accepts_verbose(module):
    """fix_reduce_lr_verbose: these trainers call ReduceLROnPlateau(..., verbose=True), a TypeError on current torch."""
    scheduler_cls = importlib.import_module(module).ReduceLROnPlateau
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = scheduler_cls(optimizer, mode="min", factor=0.1, verbose=True, patience=0)
    assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    scheduler.step(1.0)
    scheduler.step(2.0)  # no improvement, patience 0: the learning rate drops
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)


def test_empty_paths_use_home_defaults_not_cwd(tmp_path, isolated_home, monkeypatch, tiny_pkl):
    """fix_empty_paths: '' for -c and the output dirs became Path('.'): -c failed and outputs landed in CWD."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    _mmsa_run("lf_dnn", tiny_pkl, tmp_path, [1], LF_DNN_FAST, config_file="",
              dirs={"model_save_dir": "", "res_save_dir": "", "log_dir": ""})
    root = isolated_home / "MMSA"
    assert (root / "results" / "normal" / "mosi.csv").is_file()
    assert (root / "logs" / "lf_dnn-mosi.log").is_file()
    assert list((root / "saved_models").glob("*.pth"))
    assert list(cwd.iterdir()) == []


def test_mmsa_run_accepts_positional_arguments(tmp_path, tiny_pkl):
    """MMSA_run's signature is positional-or-keyword; the wrapper must accept every argument positionally."""
    out = tmp_path / "out"
    try:
        MMSA.MMSA_run("lf_dnn", "mosi", None, {"featurePath": str(tiny_pkl), **LF_DNN_FAST}, [1], False, 50, None,
                      "", "", "", [], 0, 0, str(out / "models"), str(out / "results"), str(out / "logs"))
    finally:
        reset_loggers(("MMSA",))
    assert (out / "results" / "normal" / "mosi.csv").is_file()
    assert [p.name for p in (out / "models").glob("*.pth")] == ["lf_dnn-mosi-seed1.pth"]


def test_resolve_output_dirs_defaults(isolated_home):
    dirs = settings.resolve_output_dirs("", None, "/x/logs")
    assert dirs == {"model_save_dir": isolated_home / "MMSA" / "saved_models",
                    "res_save_dir": isolated_home / "MMSA" / "results", "log_dir": Path("/x/logs")}


def test_default_output_root_is_under_home(tmp_path):
    """The output root is ~/MMSA of the HOME the process runs with."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", "from mmsa_alignmamba import settings; print(settings.output_root())"],
                         env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == str(tmp_path / "MMSA")


def test_set_logger_twice_keeps_one_file_and_one_stream_handler(tmp_path):
    """fix_duplicate_log_handlers: MMSA's _set_logger added two more handlers on every call."""
    reset_loggers(("MMSA",))
    for _ in range(3):
        MMSA.run._set_logger(tmp_path, "lf_dnn", "mosi", 1)
    handlers = logging.getLogger("MMSA").handlers
    files = [h for h in handlers if isinstance(h, logging.FileHandler)]
    streams = [h for h in handlers if type(h) is logging.StreamHandler]
    assert len(files) == 1 and len(streams) == 1 and len(handlers) == 2
    logging.getLogger("MMSA").info("one line")
    files[0].flush()
    assert (tmp_path / "lf_dnn-mosi.log").read_text().count("one line") == 1


def _loader_args(feature_path, **overrides):
    args = {"featurePath": str(feature_path), "custom_feature": None, "feature_T": "", "feature_A": "",
            "feature_V": "", "train_mode": "regression"}
    return _mmsa_config("lf_dnn", **{**args, **overrides})


def test_eval_loaders_do_not_shuffle(tiny_pkl):
    """fix_eval_shuffle: MMSA's DataLoaders (valid and test too) all shuffled."""
    from torch.utils.data import RandomSampler, SequentialSampler
    loaders = MMSA.run.MMDataLoader(_loader_args(tiny_pkl, batch_size=3), 0)
    assert isinstance(loaders["train"].sampler, RandomSampler)
    expected_ids = {split: list(load_pickle(tiny_pkl)[split]["id"]) for split in ("valid", "test")}
    for split in ("valid", "test"):
        assert isinstance(loaders[split].sampler, SequentialSampler), split
        for _ in range(2):
            ids = [i for batch in loaders[split] for i in batch["id"]]
            assert ids == expected_ids[split], split


def test_mmsa_batches_carry_the_attention_masks_text_lengths(tiny_pkl, tmp_path):
    """fix_text_lengths_from_mask: MMSA's MMDataset read text_bert only for BERT models, so its mask
    never reached a batch and BERT-style [PAD] rows counted as words."""
    from MMSA.data_loader import MMDataLoader
    data = load_pickle(tiny_pkl)
    loaders = MMDataLoader(_loader_args(tiny_pkl, batch_size=5), 0)
    for split in ("train", "valid", "test"):
        expected = dict(zip(data[split]["id"], data[split]["text_bert"][:, 1].sum(1).astype(int)))
        seen = {i: int(n) for batch in loaders[split] for i, n in zip(batch["id"], batch["text_lengths"])}
        assert seen == expected, split
    # -Ft's file is where the text comes from, so its mask counts; a file without one adds nothing
    text_only = {s: {"text": data[s]["text"], "text_bert": data[s]["text_bert"][:, :, ::-1].copy()} for s in data}
    for part in text_only.values():
        part["text_bert"][:, 1] = 0
        part["text_bert"][:, 1, :3] = 1
    with open(tmp_path / "text.pkl", "wb") as f:
        pickle.dump(text_only, f, protocol=4)
    batch = next(iter(MMDataLoader(_loader_args(tiny_pkl, batch_size=5, feature_T=str(tmp_path / "text.pkl")), 0)["test"]))
    assert batch["text_lengths"].tolist() == [3] * 5
    del data["train"]["text_bert"], data["valid"]["text_bert"], data["test"]["text_bert"]
    with open(tmp_path / "no_mask.pkl", "wb") as f:
        pickle.dump(data, f, protocol=4)
    assert "text_lengths" not in next(iter(MMDataLoader(_loader_args(tmp_path / "no_mask.pkl", batch_size=5), 0)["test"]))


@pytest.mark.parametrize("key", ["featurePath", "feature_A"])
def test_mmsa_data_loader_refuses_unsafe_pickle(evil_pickle, tiny_pkl, key):
    """fix_unsafe_pickle_load: MMSA's data loader unpickled with pickle.load, running any code in the file."""
    path, marker = evil_pickle
    args = _loader_args(tiny_pkl, **{key: str(path)})
    from MMSA.data_loader import MMDataLoader  # MMSA's own loader, not ours
    with pytest.raises(UnsafePickleError, match="refused"):
        MMDataLoader(args, 0)
    assert not marker.exists()


def test_mmsa_test_refuses_unsafe_feature_pickle(lf_dnn_run, evil_single_sample):
    path, marker = evil_single_sample
    with pytest.raises(UnsafePickleError, match="refused"):
        MMSA.MMSA_test(_mmsa_config("lf_dnn"), str(lf_dnn_run / "models" / "lf_dnn-mosi-seed1.pth"), str(path),
                       gpu_id=-1)
    assert not marker.exists()


def test_safe_pickle_still_reads_mmsa_data(tiny_pkl):
    data = load_pickle(tiny_pkl)
    assert data["train"]["text"].shape == (24, 50, 768)
    assert isinstance(data["train"]["id"][0], str)
    assert np.isfinite(data["test"]["regression_labels"]).all()
