"""The `mmsa` command: errors (exit 2), MMSA-style flags, results, resuming, and a second,
third-party plugin declared only through entry points.

Most runs call `cli.main([...])` in this process (importing MMSA once); a few run the installed
console script in a fresh process to prove the script, its exit status and discovery from
scratch.
"""
from __future__ import annotations

import csv
import json
import math
import sys
import textwrap
from pathlib import Path

import pytest

import mmsa_alignmamba  # noqa: F401
from conftest import run_cli as _main
from conftest import run_mmsa
from mmsa_alignmamba import host

KEY_COLUMNS = {"Model", "Dataset", "Data", "Protocol"}


def _dirs(root: Path) -> list[str]:
    return ["--res-save-dir", str(root / "results"), "--model-save-dir", str(root / "models"),
            "--log-dir", str(root / "logs")]


def _error_line(err: str) -> str:
    lines = [l for l in err.splitlines() if l.startswith("mmsa: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _summary(res_dir: Path) -> list[dict]:
    path = res_dir / "summary.csv"
    assert path.is_file(), f"no {path}"
    text = path.read_text()
    assert "np.float64" not in text and "np." not in text
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows
    for row in rows:
        for column, cell in row.items():
            if column in KEY_COLUMNS or (row["Model"].startswith("oracle:") and cell == ""):
                continue  # an oracle row has no Loss or plan accuracy
            assert "(" not in cell and "," not in cell, (column, cell)
            assert math.isfinite(float(cell)), (column, cell)   # a plain float, nothing else
    return rows


def _cell_files(res_dir: Path) -> list[Path]:
    return sorted((res_dir / "cells").rglob("*.json"))


# ------------------------------------------------------------------------------ errors
def test_unknown_model_exits_2_and_lists_models(tmp_path, isolated_home):
    proc = run_mmsa(["-m", "nosuchmodel", "-d", "mosi"], home=isolated_home, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    line = _error_line(proc.stderr)
    assert "unknown model 'nosuchmodel'" in line and "registered models:" in line
    for name in ("lf_dnn", "mult", "alignmamba"):
        assert name in line, line
    assert "Traceback" not in proc.stderr
    assert not (isolated_home / "MMSA").exists()


def test_models_lists_builtin_and_plugin_models(isolated_home, tmp_path):
    proc = run_mmsa(["models"], home=isolated_home, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    listed = dict(line.split(None, 1) for line in proc.stdout.splitlines() if line.strip())
    assert listed["lf_dnn"].strip() == "MMSA" and listed["mult"].strip() == "MMSA"
    assert listed.get("alignmamba", "").strip() == "mmsa-alignmamba", proc.stdout + proc.stderr


def test_missing_dataset_names_path_and_synthetic(tmp_path, isolated_home, capsys):
    root = tmp_path / "nodata"
    rc, _, err = _main(["-m", "lf_dnn", "-d", "mosi", "--data-dir", root], capsys)
    assert rc == 2
    line = _error_line(err)
    assert str(root / "MOSI" / "Processed" / "unaligned_50.pkl") in line
    assert "--synthetic" in line
    assert not (isolated_home / "MMSA").exists(), "nothing may be written before the inputs are checked"


def test_missing_dataset_default_root_and_env(tmp_path, monkeypatch, capsys):
    rc, _, err = _main(["-m", "lf_dnn", "-d", "sims"], capsys)
    assert rc == 2
    expected = host.mmsa_dataset_root() / host.dataset_relative_path("sims")
    assert str(expected) in _error_line(err) and "--synthetic" in err
    monkeypatch.setenv("MMSA_DATA_DIR", str(tmp_path / "envroot"))
    rc, _, err = _main(["-m", "lf_dnn", "-d", "mosei"], capsys)
    assert rc == 2
    assert str(tmp_path / "envroot" / "MOSEI" / "Processed" / "unaligned_50.pkl") in _error_line(err)
    missing = tmp_path / "not_here.pkl"
    rc, _, err = _main(["-m", "lf_dnn", "--feature-path", missing], capsys)
    assert rc == 2 and str(missing) in _error_line(err)


def test_unsafe_dataset_pickle_is_refused(evil_pickle, tmp_path, capsys):
    path, marker = evil_pickle
    rc, _, err = _main(["-m", "lf_dnn", "-d", "mosi", "--feature-path", path, "-s", "1", "--epochs", "1",
                        *_dirs(tmp_path / "out")], capsys)
    assert rc == 2
    assert "refused" in _error_line(err) and str(path) in err
    assert not marker.exists()


# ------------------------------------------------------------------------------ runs
@pytest.mark.parametrize("data", ["real", "synthetic"])
def test_lf_dnn_run_writes_plain_summary(data, tmp_path, plain_pkl, tiny_pkl, isolated_home, capsys):
    """A file without a synthetic sidecar is real data; write_synthetic's file passed by path is not."""
    out = tmp_path / "out"
    rc, stdout, err = _main(["-m", "lf_dnn", "-d", "mosi", "--feature-path", plain_pkl if data == "real" else tiny_pkl,
                             "-s", "1111", "--epochs", "1", *_dirs(out)], capsys)
    assert rc == 0, err
    rows = _summary(out / "results")
    assert [(r["Model"], r["Dataset"], r["Protocol"], r["Seeds"]) for r in rows] == [
        ("lf_dnn", "mosi", "complete", "1")]
    if data == "real":
        assert rows[0]["Data"] == "real"
    else:
        assert rows[0]["Data"].startswith("synthetic-") and "n24" in rows[0]["Data"]
    assert "lf_dnn" in stdout  # the markdown table is printed
    assert list((out / "models").glob("*.pth"))
    assert (out / "logs" / "lf_dnn-mosi.log").is_file()
    (cell,) = _cell_files(out / "results")
    record = json.loads(cell.read_text())
    assert record["synthetic"] is (data == "synthetic") and record["cell"]["seed"] == 1111
    assert all(isinstance(v, float) and math.isfinite(v) for v in record["metrics"].values())
    assert not (isolated_home / "MMSA").exists(), "explicit output dirs were given"


def test_rerun_skips_finished_cells(tmp_path, tiny_pkl, capsys):
    out = tmp_path / "out"
    argv = ["-m", "lf_dnn", "-d", "mosi", "--feature-path", tiny_pkl, "-s", "7", "--epochs", "1", *_dirs(out)]
    assert _main(argv, capsys)[0] == 0
    (cell,) = _cell_files(out / "results")
    outputs = [cell, cell.with_suffix(".trained"), *(out / "models").glob("*.pth")]
    mtimes = [p.stat().st_mtime_ns for p in outputs]
    before = (out / "logs" / "lf_dnn-mosi.log").read_text()
    assert "already finished" not in before
    rc, _, err = _main(argv, capsys)
    assert rc == 0, err
    log = (out / "logs" / "lf_dnn-mosi.log").read_text()[len(before):]
    assert "already finished" in log and "seed7" in log
    assert "TRAIN-(lf_dnn)" not in log, "the finished cell was trained again"
    assert [p.stat().st_mtime_ns for p in outputs] == mtimes
    assert len(_summary(out / "results")) == 1


def test_progress_counts_trainings_and_starts_from_the_finished_ones(tmp_path, tiny_pkl, capsys, monkeypatch):
    """One training tests every missing rate: the bar counts trainings, and a resumed sweep's bar
    starts at the trainings already done, so its pace (and ETA) is this run's alone."""
    import tqdm
    made = []
    real = tqdm.tqdm

    def recording(*args, **kwargs):
        made.append((kwargs.get("total"), kwargs.get("initial"), kwargs.get("unit")))
        return real(*args, **kwargs)

    monkeypatch.setattr(tqdm, "tqdm", recording)
    out = tmp_path / "out"
    first = ["-m", "lf_dnn", "-d", "mosi", "--feature-path", tiny_pkl, "-s", "7", "--epochs", "1",
             "--missing-protocol", "sample", "--missing-rates", "0.2", "0.5", *_dirs(out)]
    assert _main(first, capsys)[0] == 0
    assert _main([*first[:-6], "-s", "8", *_dirs(out)], capsys)[0] == 0     # a second seed beside the first
    assert made[-2:] == [(1, 0, "training"), (2, 1, "training")]


def test_synthetic_run(tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "syn"
    rc, _, err = _main(["-m", "lf_dnn", "-d", "mosi", "--synthetic", "--data-dir", cache, "-s", "1",
                        "--epochs", "1", *_dirs(out)], capsys)
    assert rc == 0, err
    rows = _summary(out / "results")
    assert [r["Data"] for r in rows] == ["synthetic-small-bertpad"]
    assert list((cache / "synthetic" / "MOSI" / "Processed").glob("unaligned_50-synthetic-small-bertpad-seed0.pkl"))
    (cell,) = _cell_files(out / "results")
    assert json.loads(cell.read_text())["synthetic"] is True


def test_mmsa_style_flags(tmp_path, tiny_pkl, monkeypatch, capsys):
    """-c '' (MMSA's default config), -n 0, -v 0 (errors only), -g 0 (CPU without CUDA), -Ft/-Fa/-Fv."""
    out, cwd = tmp_path / "out", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    rc, _, err = _main(["-m", "lf_dnn", "-d", "mosi", "--feature-path", tiny_pkl, "-c", "", "-n", "0", "-v", "0",
                        "-g", "0", "-Ft", tiny_pkl, "-Fa", tiny_pkl, "-Fv", tiny_pkl, "-s", "3", "--epochs", "1",
                        *_dirs(out)], capsys)
    assert rc == 0, err
    assert " INFO " not in err, "-v 0 prints errors only"
    assert _summary(out / "results")[0]["Model"] == "lf_dnn"
    assert list(cwd.iterdir()) == []


def test_bad_modality_file_is_an_input_error(tmp_path, tiny_pkl, capsys):
    """-Fa with a file whose samples do not match the dataset: exit 2 naming the flag."""
    import pickle
    from conftest import load_pickle
    data = load_pickle(tiny_pkl)
    for part in data.values():
        for k in ("audio", "audio_lengths"):
            part[k] = part[k][:3]
    bad = tmp_path / "bad_audio.pkl"
    bad.write_bytes(pickle.dumps(data))
    rc, _, err = _main(["-m", "lf_dnn", "--feature-path", tiny_pkl, "-Fa", bad, *_dirs(tmp_path / "o")], capsys)
    assert rc == 2 and "-Fa" in _error_line(err)


def test_mult_on_cpu(tmp_path, short_pkl, capsys):
    """MulT's trainer builds ReduceLROnPlateau(verbose=True): a TypeError on current torch without the fix.
    Short sequences and a 1-level MulT (via -c) keep this to seconds on 2 CPU cores."""
    import MMSA
    config = json.loads((Path(MMSA.__file__).parent / "config" / "config_regression.json").read_text())
    config["mult"]["datasetParams"]["mosi"].update(nlevels=1, dst_feature_dim_nheads=[8, 2], batch_size=32)
    config_file = tmp_path / "small_mult.json"
    config_file.write_text(json.dumps(config))
    out = tmp_path / "out"
    rc, _, err = _main(["-m", "mult", "-d", "mosi", "-c", config_file, "--feature-path", short_pkl, "-s", "1",
                        "--epochs", "1", *_dirs(out)], capsys)
    assert rc == 0, err
    assert _summary(out / "results")[0]["Model"] == "mult"


def test_alignmamba_via_cli(tmp_path, short_pkl, capsys):
    import MMSA
    out = tmp_path / "out"
    config = json.loads((Path(MMSA.__file__).parent / "config" / "config_regression.json").read_text())
    ours = json.loads(host.plugins()["alignmamba"].config_path.read_text())["alignmamba"]
    ours["commonParams"].update(d_model=16, n_layers=1)
    config["alignmamba"] = ours
    config_file = tmp_path / "small_alignmamba.json"
    config_file.write_text(json.dumps(config))
    rc, _, err = _main(["-m", "alignmamba", "-d", "mosi", "-c", config_file, "--feature-path", short_pkl, "-s", "1",
                        "--epochs", "1", *_dirs(out)], capsys)
    assert rc == 0, err
    assert _summary(out / "results")[0]["Model"] == "alignmamba"


def test_wordlevel_data_measures_plans_and_shows_the_oracle_ladder(tmp_path, capsys):
    """make-synthetic --task wordlevel, then a run on it: the cell holds plan accuracies, the
    summary shows them and the generator's oracle ladder beside the model, all labelled synthetic."""
    data = tmp_path / "wl.pkl"
    rc, out, err = _main(["make-synthetic", "--like", "mosi", "--task", "wordlevel", "--out", data,
                          "--n-train", 16, "--n-valid", 8, "--n-test", 8], capsys)
    assert rc == 0 and "wordlevel" in out, err
    res = tmp_path / "out"
    config = tmp_path / "small.json"
    import MMSA
    full = json.loads((Path(MMSA.__file__).parent / "config" / "config_regression.json").read_text())
    ours = json.loads(host.plugins()["alignmamba"].config_path.read_text())["alignmamba"]
    ours["commonParams"].update(d_model=16, n_layers=1)
    full["alignmamba"] = ours
    config.write_text(json.dumps(full))
    rc, _, err = _main(["-m", "alignmamba", "-c", config, "--feature-path", data, "-s", 1, "--epochs", 1,
                        *_dirs(res)], capsys)
    assert rc == 0, err
    assert "plan >> audio frames to their true word" in err        # logged at INFO every evaluation
    assert "plan >> vision frames to their true word" in err
    widest = max(len(line) for line in err.splitlines() if " MMSA INFO " in line and "%|" not in line)
    assert widest <= 170, widest   # log lines fit a terminal (the progress bars aside)
    (cell,) = _cell_files(res / "results")
    metrics = json.loads(cell.read_text())["metrics"]
    assert {"Plan_ot_audio", "Plan1_ot_vision", "Plan_none_audio"} <= set(metrics)
    rows = {r["Model"]: r for r in _summary(res / "results")}
    assert set(rows) == {"alignmamba", "oracle: text-only linear", "oracle: pooled all-modality linear",
                         "oracle: true-alignment ceiling"}
    assert {r["Data"] for r in rows.values()} == {"synthetic-wordlevel-n16-8-8-bertpad"}
    summary = (res / "results" / "summary.md").read_text()
    assert "SYNTHETIC DATA" in summary and "## Alignment: frames sent to their true word" in summary
    assert (res / "results" / "oracles" / "mosi-synthetic-wordlevel-n16-8-8-bertpad.json").is_file()


def test_console_script_default_output_dirs(tmp_path, tiny_pkl, isolated_home):
    """The installed script, no output flags: everything under $HOME/MMSA, nothing in the working directory."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = run_mmsa(["-m", "lf_dnn", "-d", "mosi", "--feature-path", tiny_pkl, "-s", "1", "--epochs", "1",
                     "-c", "", "--model-save-dir", "", "--res-save-dir", "", "--log-dir", ""],
                    home=isolated_home, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = isolated_home / "MMSA"
    assert _summary(root / "results")[0]["Model"] == "lf_dnn"
    assert list((root / "saved_models").glob("*.pth"))
    assert (root / "logs" / "lf_dnn-mosi.log").is_file()
    assert list(cwd.iterdir()) == []


# ------------------------------------------------------------------------------ a second, third-party plugin
TOY_MODULE = '''
"""A throwaway MMSA plugin: mean-pooled late fusion, MMSA's own LF_DNN trainer."""
from pathlib import Path

import torch
import torch.nn as nn

CONFIG = Path(__file__).with_name("toyfusion.json")


class ToyFusion(nn.Module):
    def __init__(self, args):
        super().__init__()
        t, a, v = args["feature_dims"]
        self.proj = nn.Linear(t + a + v, int(args["hidden"]))
        self.out = nn.Linear(int(args["hidden"]), 1)

    def forward(self, text, audio, vision, **unused):
        x = torch.cat([text.mean(1), audio.mean(1), vision.mean(1)], dim=-1)
        return {"M": self.out(torch.relu(self.proj(x)))}


def make_trainer(args):
    from MMSA.trains.singleTask.LF_DNN import LF_DNN
    return LF_DNN(args)
'''

TOY_CONFIG = {"toyfusion": {
    "commonParams": {"need_data_aligned": False, "need_model_aligned": False, "need_normalized": False,
                     "use_bert": False, "early_stop": 2},
    "datasetParams": {d: {"hidden": 8, "batch_size": 16, "learning_rate": 0.001, "weight_decay": 0.0}
                      for d in ("mosi", "mosei", "sims")},
}}

TOY_ENTRY_POINTS = {
    "all": """\
        [mmsa.models]
        toyfusion = toy_mmsa_plugin:ToyFusion

        [mmsa.trainers]
        toyfusion = toy_mmsa_plugin:make_trainer

        [mmsa.configs]
        toyfusion = toy_mmsa_plugin:CONFIG
        """,
    "none": "",
    "no trainer": """\
        [mmsa.models]
        toyfusion = toy_mmsa_plugin:ToyFusion

        [mmsa.configs]
        toyfusion = toy_mmsa_plugin:CONFIG
        """,
}


def _write_toy_distribution(site: Path, entry_points: str | None) -> Path:
    package = site / "toy_mmsa_plugin"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(TOY_MODULE)
    (package / "toyfusion.json").write_text(json.dumps(TOY_CONFIG))
    info = site / "toy_mmsa_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-mmsa-plugin\nVersion: 0.1\n")
    if entry_points:
        (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    return site


@pytest.fixture
def toy_plugin(tmp_path, monkeypatch):
    """-> install(kind): put the toy distribution (with the given entry points) on sys.path."""
    def install(kind: str) -> Path:
        site = _write_toy_distribution(tmp_path / "site", TOY_ENTRY_POINTS[kind])
        monkeypatch.syspath_prepend(str(site))
        host.refresh_plugins()
        return site
    yield install
    sys.modules.pop("toy_mmsa_plugin", None)
    host.refresh_plugins()  # rediscovered lazily, after monkeypatch has restored sys.path


def test_second_plugin_is_listed_and_trains(toy_plugin, tmp_path, short_pkl, capsys):
    toy_plugin("all")
    rc, stdout, _ = _main(["models"], capsys)
    assert rc == 0
    listed = dict(line.split(None, 1) for line in stdout.splitlines() if line.strip())
    assert listed["toyfusion"].strip() == "toy-mmsa-plugin"
    assert "alignmamba" in listed and "lf_dnn" in listed

    out = tmp_path / "out"
    rc, _, err = _main(["-m", "toyfusion", "-d", "mosi", "--feature-path", short_pkl, "-s", "1", "--epochs", "1",
                        *_dirs(out)], capsys)
    assert rc == 0, err
    rows = _summary(out / "results")
    assert [(r["Model"], r["Data"]) for r in rows] == [("toyfusion", "real")]
    (checkpoint,) = (out / "models").glob("*.pth")
    assert checkpoint.name.startswith("toyfusion-mosi")
    import torch
    payload = torch.load(checkpoint, weights_only=True)
    assert set(payload["state_dict"]) == {"Model.proj.weight", "Model.proj.bias", "Model.out.weight", "Model.out.bias"}
    assert payload["meta"]["model"] == "toyfusion"
    (cell,) = _cell_files(out / "results")
    assert json.loads(cell.read_text())["cell"]["model"] == "toyfusion"
    # a plugin's checkpoint predicts like a built-in one
    preds = tmp_path / "toy.csv"
    rc, _, err = _main(["predict", "--checkpoint", checkpoint, "--feature-path", short_pkl, "--out", preds, "-b", "1"],
                       capsys)
    assert rc == 0, err
    assert len(preds.read_text().splitlines()) == 1 + 8


def test_second_plugin_through_mmsa_run(toy_plugin, tmp_path, short_pkl):
    """MMSA's own MMSA_run trains the plugin too (AMIO / ATIO / config loaders know it)."""
    import MMSA
    toy_plugin("all")
    MMSA.MMSA_run("toyfusion", "mosi", config={"featurePath": str(short_pkl), "early_stop": 1,
                                                "learning_rate": 0.0},
                  seeds=[1], gpu_ids=[], num_workers=0, verbose_level=0, model_save_dir=str(tmp_path / "m"),
                  res_save_dir=str(tmp_path / "r"), log_dir=str(tmp_path / "l"))
    with open(tmp_path / "r" / "normal" / "mosi.csv", newline="") as f:
        assert [r["Model"] for r in csv.DictReader(f)] == ["toyfusion"]
    assert [p.name for p in (tmp_path / "m").glob("*.pth")] == ["toyfusion-mosi-seed1.pth"]


def test_second_plugin_discovered_by_console_script(toy_plugin, isolated_home, tmp_path):
    site = toy_plugin("all")
    proc = run_mmsa(["models"], home=isolated_home, cwd=tmp_path, extra_env={"PYTHONPATH": str(site)})
    assert proc.returncode == 0, proc.stderr
    listed = dict(line.split(None, 1) for line in proc.stdout.splitlines() if line.strip())
    assert listed.get("toyfusion", "").strip() == "toy-mmsa-plugin", proc.stdout


@pytest.mark.parametrize("kind", ["none", "no trainer"])
def test_undeclared_plugin_is_unknown(toy_plugin, kind, tmp_path, short_pkl, capsys):
    toy_plugin(kind)
    rc, stdout, _ = _main(["models"], capsys)
    assert rc == 0 and "toyfusion" not in stdout and "lf_dnn" in stdout
    rc, _, err = _main(["-m", "toyfusion", "-d", "mosi", "--feature-path", short_pkl, "-s", "1", "--epochs", "1",
                        *_dirs(tmp_path / "out")], capsys)
    assert rc == 2
    line = _error_line(err)
    assert "unknown model 'toyfusion'" in line and "registered models:" in line
    assert "lf_dnn" in line and "alignmamba" in line
    assert not (tmp_path / "out").exists()


def test_bad_option_is_one_error_line(capsys):
    rc, _, err = _main(["-m", "lf_dnn", "-v", "5"], capsys)
    assert rc == 2 and "-v" in _error_line(err)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-CUDA message")
def test_device_cuda_without_cuda_is_an_input_error(tmp_path, tiny_pkl, capsys):
    rc, _, err = _main(["-m", "lf_dnn", "--feature-path", tiny_pkl, "--device", "cuda", *_dirs(tmp_path / "o")],
                       capsys)
    assert rc == 2 and "CUDA" in _error_line(err)


def test_ctrl_c_keeps_a_summary_of_the_finished_runs(tmp_path, tiny_pkl, capsys, monkeypatch):
    from mmsa_alignmamba import runner
    run_cells = runner.run_cells

    def first_then_interrupt(cells, settings, progress=None, executor=None):
        run_cells(cells[:1], settings, progress, executor)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_cells", first_then_interrupt)
    out = tmp_path / "out"
    rc, _, err = _main(["-m", "lf_dnn", "-d", "mosi", "--feature-path", tiny_pkl, "-s", "1", "-s", "2", "--epochs", "1",
                        *_dirs(out)], capsys)
    assert rc == 130 and "interrupted" in err
    rows = _summary(out / "results")
    assert [r["Seeds"] for r in rows] == ["1"]


def test_ablate_trains_a_variant_that_equals_another_only_once(tmp_path, short_pkl, capsys):
    """With MMD off by default, wo_global_mmd is the configured model itself: one line says so and
    no second training (nor a duplicate row) is made for it; a variant that differs still runs."""
    rc, out, err = _main(["ablate", "-d", "mosi", "--feature-path", short_pkl, "-s", "1", "--epochs", "1",
                          "--variants", "alignmamba", "wo_global_mmd", "wo_local_ot", *_dirs(tmp_path / "out")], capsys)
    assert rc == 0, err
    trained = sorted(p.name for p in (tmp_path / "out" / "results" / "cells").rglob("*.json"))
    assert trained == ["alignmamba+wo_local_ot-mosi-real-complete-seed1.json", "alignmamba-mosi-real-complete-seed1.json"]
    assert "variant wo_global_mmd trains the same model as alignmamba with this config" in err
