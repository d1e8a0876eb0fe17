"""User configs (-c): a config may hold only what it changes, merged over the defaults; every
config error is one line, exit 2, naming the file and the key, with nothing written."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import mmsa_alignmamba  # noqa: F401
from conftest import run_cli as _main
from mmsa_alignmamba import host
from mmsa_alignmamba.model import AlignMambaConfig

REPO = Path(__file__).resolve().parents[1]



def _write(tmp_path, content, name="my.json") -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_a_config_with_only_the_changed_keys_is_merged_over_the_defaults(tmp_path):
    path = _write(tmp_path, {"alignmamba": {"commonParams": {"d_model": 32},
                                            "datasetParams": {"mosi": {"learning_rate": 0.0005}}}})
    args = host.load_config("alignmamba", "mosi", path)
    default = host.load_config("alignmamba", "mosi")
    assert args["d_model"] == 32 and args["learning_rate"] == 0.0005
    assert args["n_layers"] == default["n_layers"] and args["featurePath"] == default["featurePath"]
    assert host.load_config("lf_dnn", "mosi", path)["hidden_dims"] == host.load_config("lf_dnn", "mosi")["hidden_dims"]


def test_a_copy_of_the_shipped_plugin_config_works_as_the_readme_says(tmp_path):
    mine = tmp_path / "alignmamba.json"
    shutil.copy(REPO / "configs" / "alignmamba.json", mine)
    assert host.load_config("alignmamba", "mosi", mine) == host.load_config("alignmamba", "mosi")


@pytest.mark.parametrize("content, expected", [
    (None, "config file {path} not found"),
    ('{"alignmamba": {"commonParams": {"d_model": 64,}}}', "config file {path} is not valid JSON"),
    ({"alignmamba": {"commonParams": {"d_model": "64"}}},
     "config file {path}: alignmamba.commonParams.d_model must be a number (like the default 64), got \"64\""),
    ({"alignmamba": {"commonParams": {"d_modle": 32}}},
     "config file {path}: unknown key alignmamba.commonParams.d_modle; did you mean 'd_model'?"),
    ({"alignmamba": {"comonParams": {}}}, "unknown key alignmamba.comonParams; did you mean 'commonParams'?"),
    ({"alignmamba": {"datasetParams": {"mosi": {"learnig_rate": 0.1}}}},
     "unknown key alignmamba.datasetParams.mosi.learnig_rate; did you mean 'learning_rate'?"),
    ("[1, 2]", "config file {path} must hold a JSON object"),
    ({"alignmamba": {"commonParams": {"mmd_sigmas": {"s": 1}}}},
     "alignmamba.commonParams.mmd_sigmas must be a list or a number or a string (like the default"),
])
def test_config_errors_are_one_line_naming_file_and_key(tmp_path, short_pkl, capsys, content, expected):
    path = tmp_path / "missing.json" if content is None else _write(tmp_path, content)
    out = tmp_path / "out"
    rc, _, err = _main(["-m", "alignmamba", "-d", "mosi", "--feature-path", short_pkl, "-s", "1", "-c", path,
                        "--res-save-dir", out / "r", "--model-save-dir", out / "m", "--log-dir", out / "l"], capsys)
    assert rc == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and expected.format(path=path) in lines[0], err
    assert not out.exists()


def test_a_key_the_model_reads_but_the_json_does_not_list_is_accepted(tmp_path):
    path = _write(tmp_path, {"alignmamba": {"commonParams": {"ot_position_prior": 0.5}}})
    assert host.load_config("alignmamba", "mosi", path)["ot_position_prior"] == 0.5


@pytest.mark.parametrize("sigmas, expected", [("median", "median"), (1.5, (1.5,)), ([0.5, 2], (0.5, 2.0))])
def test_a_key_may_take_every_kind_its_model_reads(tmp_path, sigmas, expected):
    """mmd_sigmas is a list of bandwidths by default, and may also be one bandwidth or "median"."""
    path = _write(tmp_path, {"alignmamba": {"commonParams": {"mmd_sigmas": sigmas}}})
    args = host.load_config("alignmamba", "mosi", path)
    assert AlignMambaConfig.from_mmsa_args(args).mmd_sigmas == expected


@pytest.mark.parametrize("params, expected", [
    ({"datasetParams": {"mosi": {"dropout": 1.5}}}, "config of alignmamba: AlignMambaConfig: dropout must be in [0, 1)"),
    ({"commonParams": {"mmd_sigmas": "mean"}}, "mmd_sigmas must be 'median' or positive bandwidths"),
])
def test_a_bad_value_is_one_line_before_anything_is_written(tmp_path, short_pkl, capsys, params, expected):
    path = _write(tmp_path, {"alignmamba": params})
    out = tmp_path / "out"
    rc, _, err = _main(["-m", "alignmamba", "-d", "mosi", "--feature-path", short_pkl, "-s", "1", "-c", path,
                        "--res-save-dir", out / "r", "--model-save-dir", out / "m", "--log-dir", out / "l"], capsys)
    assert rc == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_the_config_files_handed_to_mmsa_are_removed_when_the_process_exits():
    import subprocess
    import sys
    code = ("from mmsa_alignmamba import host; import os; "
            "p = host.config_file_for('alignmamba', None, 'regression'); "
            "assert os.path.isfile(p); print(p)")
    path = Path(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip())
    assert path.name.startswith("config-") and not path.parent.exists()
