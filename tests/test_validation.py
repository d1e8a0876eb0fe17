"""Input validation of the `mmsa` command (issue acceptance).

Every bad input must end the run with exit status 2, a one-line `mmsa: error: ...` naming the
problem, and no file written anywhere (output dirs, ~/MMSA, the input folder). Malicious
pickles are refused by the allow-list unpickler before their payload can run, through our own
validation, `safeio.safe_pickle_load`, MMSA's own `MMDataLoader` (patched on import) and
checkpoint loading (torch.load(weights_only=True)).

The command is driven in-process (`cli.main([...])`); HOME (so the output root ~/MMSA)
points into the test's tmp dir, and every output dir is passed explicitly.
"""
from __future__ import annotations

import builtins
import copy
import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from mmsa_alignmamba import checkpoints, cli, errors, host, safeio
from mmsa_alignmamba.cli import run as cli_run, sweep as cli_sweep
from mmsa_alignmamba.synthetic import make_synthetic

SMALL = {"train": 4, "valid": 3, "test": 3}     # validation-only cases: never trained on
RUN = {"train": 24, "valid": 8, "test": 8}      # the two cases that really run lf_dnn


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def small_data():
    return make_synthetic("mosi", size=SMALL, seed=0)


@pytest.fixture(scope="module")
def run_data():
    return make_synthetic("mosi", size=RUN, seed=0)


class Env:
    """tmp layout: in/ (inputs), out/{res,models,logs} (output dirs, not created), home/ (HOME)."""

    def __init__(self, root: Path):
        self.root = root
        self.inputs = root / "in"
        self.inputs.mkdir()
        self.home = root / "env-home"
        self.home.mkdir()
        self.out = root / "out"
        self.res, self.models, self.logs = self.out / "res", self.out / "models", self.out / "logs"
        self.marker = root / "MARKER"

    def dirs_argv(self) -> list[str]:
        return ["--res-save-dir", str(self.res), "--model-save-dir", str(self.models), "--log-dir", str(self.logs)]

    def write_pickle(self, obj, name: str = "data.pkl") -> Path:
        path = self.inputs / name
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=4)
        return path

    def write_bytes(self, data: bytes, name: str = "data.pkl") -> Path:
        path = self.inputs / name
        path.write_bytes(data)
        return path

    def snapshot(self) -> tuple[set[Path], set[Path]]:
        files, dirs = set(), set()
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirs.update(Path(dirpath) / d for d in dirnames)
            files.update(Path(dirpath) / f for f in filenames)
        return files, dirs


@pytest.fixture
def env(tmp_path, monkeypatch):
    e = Env(tmp_path)
    monkeypatch.setenv("HOME", str(e.home))
    monkeypatch.delenv("MMSA_DATA_DIR", raising=False)
    monkeypatch.chdir(e.inputs)  # anything written to the working directory would show up too
    yield e
    _drop_file_handlers()


def _drop_file_handlers():
    """cli.main adds a FileHandler per run to the package loggers; close them between tests."""
    for name in ("MMSA", "mmsa_alignmamba"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if isinstance(h, logging.FileHandler):
                lg.removeHandler(h)
                h.close()


def run_main(argv: list[str]) -> int:
    """cli.main in-process; argparse errors raise SystemExit, which we turn back into a code."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code
    finally:
        _drop_file_handlers()


def _mutated(fn):
    """A case builder: deep-copy the small dataset, apply fn(data) (may return a replacement), write it."""
    def build(env: Env, data):
        d = copy.deepcopy(data)
        result = fn(d)
        path = env.write_pickle(d if result is None else result)
        return ["--feature-path", str(path)]
    return build


def _good(env: Env, data) -> list[str]:
    return ["--feature-path", str(env.write_pickle(data))]


class _SystemPayload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _ExecPayload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').close()",))


class _OpenPayload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


PAYLOADS = {"os.system": _SystemPayload, "builtins.exec": _ExecPayload, "builtins.open": _OpenPayload}


def _set(split, key, fn):
    def mutate(d):
        d[split][key] = fn(d[split][key])
    return mutate


def _with_value(split, key, index, value):
    def mutate(d):
        arr = np.array(d[split][key], copy=True)
        arr[index] = value
        d[split][key] = arr
    return mutate


def _truncated(env, data):
    raw = pickle.dumps(data, protocol=4)
    return ["--feature-path", str(env.write_bytes(raw[: len(raw) // 2]))]


def _empty_split(d):
    d["test"] = {k: v[:0] for k, v in d["test"].items()}


def _drop(split, key):
    def mutate(d):
        del d[split][key]
    return mutate


def _wider_vision(d):
    v = d["valid"]["vision"]
    d["valid"]["vision"] = np.concatenate([v, np.zeros(v.shape[:2] + (1,), v.dtype)], axis=2)


def _audio_file_wrong_count(env, data):
    main_path = env.write_pickle(data)
    audio = {s: {"audio": data[s]["audio"][:-1], "audio_lengths": data[s]["audio_lengths"][:-1]} for s in data}
    fa = env.write_pickle(audio, "audio.pkl")
    return ["--feature-path", str(main_path), "-Fa", str(fa)]


def _file_in_place_of(which):
    def build(env, data):
        args = _good(env, data)
        blocker = env.inputs / "not-a-dir"
        blocker.write_text("a regular file where a directory is expected\n")
        argv = args + env.dirs_argv()
        flag = {"res": "--res-save-dir", "log_under": "--log-dir"}[which]
        target = blocker if which == "res" else blocker / "logs"
        argv[argv.index(flag) + 1] = str(target)
        return argv, False  # False: the output dirs are already in argv
    return build


def _malicious(kind, nested):
    def build(env, data):
        payload = PAYLOADS[kind](env.marker)
        if nested:  # a valid-looking dataset with the payload hidden inside one split
            d = copy.deepcopy(data)
            d["train"]["id"] = payload
            obj = d
        else:
            obj = payload
        return ["--feature-path", str(env.write_pickle(obj))]
    return build


def _true_map(split, fn):
    """A case on the optional true frame->word maps (the small set is given valid ones first)."""
    def mutate(d):
        for part in d.values():
            for m in ("audio", "vision"):
                part[f"{m}_token"] = np.full(part[m].shape[:2], -1, np.int16)
        fn(d[split])
    return mutate


# (id, builder(env, data) -> argv [or (argv, add_dirs)], extra argv, substring the error must contain)
CASES = [
    ("true-map-wrong-shape", _mutated(_true_map("valid", lambda p: p.update(audio_token=p["audio_token"][:, :7]))), [],
     "valid['audio_token'] must be (samples, audio steps) = (3, 375)"),
    ("true-map-floats", _mutated(_true_map("train", lambda p: p.update(vision_token=p["vision_token"] * 0.5))), [],
     "train['vision_token'] must hold integer token indices"),
    ("true-map-beyond-text", _mutated(_true_map("test", lambda p: p["audio_token"].__setitem__((0, 0), 50))), [],
     "test['audio_token'] must hold text token indices in [-1, 50)"),
    ("missing-file", lambda env, d: ["--feature-path", str(env.inputs / "nope.pkl")], [], "dataset file not found"),
    ("truncated-pickle", _truncated, [], "truncated or corrupt pickle"),
    ("corrupt-bytes", lambda env, d: ["--feature-path", str(env.write_bytes(b"not a pickle \x00\xff" * 9))], [],
     "truncated or corrupt pickle"),
    ("empty-file", lambda env, d: ["--feature-path", str(env.write_bytes(b""))], [], "truncated or corrupt pickle"),
    ("top-level-not-dict", _mutated(lambda d: [d["train"], d["valid"], d["test"]]), [], "top level must be a dict"),
    ("missing-split", _mutated(lambda d: d.pop("valid") and None), [], "missing split(s) ['valid']"),
    ("empty-split", _mutated(_empty_split), [], "split 'test' is empty"),
    ("one-sample-split", _mutated(lambda d: d.update(train={k: v[:1] for k, v in d["train"].items()})), [],
     "split 'train' has 1 sample; every split needs at least 2"),
    ("feature-path-is-a-directory", lambda env, d: ["--feature-path", str(env.inputs)], [],
     "is a directory; --feature-path wants one MMSA-format .pkl file"),
    ("missing-audio_lengths", _mutated(_drop("valid", "audio_lengths")), [], "lacks key(s) ['audio_lengths']"),
    ("missing-regression_labels", _mutated(_drop("train", "regression_labels")), [],
     "lacks key(s) ['regression_labels']"),
    ("audio-2d", _mutated(_set("train", "audio", lambda a: a[:, :, 0])), [], "['audio'] must have 3 dimensions"),
    ("dims-differ-across-splits", _mutated(_wider_vision), [], "differ across splits"),
    ("sample-count-mismatch", _mutated(_set("train", "vision", lambda a: a[:-1])), [],
     "train['vision'] has 3 samples but train['regression_labels'] has 4"),
    ("lengths-count-mismatch", _mutated(_set("test", "audio_lengths", lambda a: a[:-1])), [],
     "test['audio_lengths'] has 2 entries for 3 samples"),
    ("length-beyond-padding", _mutated(_with_value("train", "audio_lengths", 0, 10_000)), [], "(the padded length)"),
    ("length-below-1", _mutated(_with_value("valid", "vision_lengths", 1, 0)), [], "valid['vision_lengths'] must lie in [1,"),
    ("label-out-of-range", _mutated(_with_value("train", "regression_labels", 0, 3.5)), [],
     "must lie in [-3, 3] for MOSI"),
    ("label-nan", _mutated(_with_value("test", "regression_labels", 0, np.nan)), [],
     "test['regression_labels'] contains NaN"),
    ("vision-nan", _mutated(_with_value("train", "vision", (0, 0, 0), np.nan)), [],
     "train['vision'] contains 1 NaN/inf value(s)"),
    ("text-posinf", _mutated(_with_value("valid", "text", (1, 2, 3), np.inf)), [],
     "valid['text'] contains 1 NaN/inf value(s)"),
    ("audio-posinf", _mutated(_with_value("test", "audio", (0, 0, 0), np.inf)), [],
     "test['audio'] contains 1 NaN/inf value(s)"),
    ("audio-nan", _mutated(_with_value("test", "audio", (0, 0, 0), np.nan)), [],
     "test['audio'] contains 1 NaN/inf value(s)"),
    ("unknown-model", _good, ["-m", "nosuch"], "unknown model 'nosuch'"),
    ("unknown-dataset", _good, ["-d", "nosuch"], "invalid choice: 'nosuch'"),
    ("unknown-protocol", _good, ["--missing-protocol", "nosuch"], "--missing-protocol: invalid choice: 'nosuch'"),
    ("rate-1.0", _good, ["--missing-protocol", "sample", "--missing-rates", "1.0"], "missing rate 1.0 is outside [0, 1)"),
    ("rate-negative", _good, ["--missing-protocol", "sample", "--missing-rates", "-0.1"],
     "missing rate -0.1 is outside [0, 1)"),
    ("rate-not-a-number", _good, ["--missing-protocol", "sample", "--missing-rates", "lots"], "--missing-rates"),
    ("seed-not-int", _good, ["-s", "abc"], "invalid int value: 'abc'"),
    ("seed-float", _good, ["-s", "1.5"], "invalid int value: '1.5'"),
    ("output-dir-is-a-file", _file_in_place_of("res"), [], "cannot create the output directory"),
    ("output-dir-under-a-file", _file_in_place_of("log_under"), [], "cannot create the output directory"),
    ("epochs-0", _good, ["--epochs", "0"], "--epochs must be >= 1, got 0"),
    ("early-stop-0", _good, ["--early-stop", "0"], "--early-stop must be >= 1, got 0"),
    ("num-workers-negative", _good, ["-n", "-1"], "-n must be >= 0, got -1"),
    ("rates-without-protocol", _good, ["--missing-rates", "0.2"], "--missing-rates needs --missing-protocol"),
    ("Fa-wrong-sample-count", _audio_file_wrong_count, [], "-Fa file has 3 train samples, the dataset has 4"),
    ("Fa-missing-file", lambda env, d: _good(env, d) + ["-Fa", str(env.inputs / "nope-audio.pkl")], [],
     "data file not found"),
    ("sims-aligned", _good, ["-d", "sims", "--aligned"], "no word-aligned features for SIMS"),
    ("labels-not-numbers", _mutated(_set("train", "regression_labels", lambda a: np.array(["pos"] * len(a)))), [],
     "regression_labels"),
    ("lengths-not-numbers", _mutated(_set("train", "audio_lengths", lambda a: np.array(["x"] * len(a)))), [],
     "audio_lengths"),
    ("malicious-os.system", _malicious("os.system", False), [], "refused"),
    ("malicious-exec", _malicious("builtins.exec", False), [], "refused"),
    ("malicious-open", _malicious("builtins.open", False), [], "refused"),
    ("malicious-nested-in-dataset", _malicious("os.system", True), [], "refused"),
]


@pytest.mark.parametrize("case_id,build,extra,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_and_writes_nothing(env, small_data, capsys, case_id, build, extra, needle):
    built = build(env, small_data)
    argv, add_dirs = built if isinstance(built, tuple) else (built, True)
    argv = ["-m", "lf_dnn", "-d", "mosi", "-s", "1", "--epochs", "1", *argv, *extra]
    if add_dirs:
        argv += env.dirs_argv()
    files_before, dirs_before = env.snapshot()

    code = run_main(argv)

    err = capsys.readouterr().err
    assert code == 2, f"{case_id}: exit {code}, stderr:\n{err}"
    assert err.startswith("mmsa: error: ") and err.count("\n") == 1, f"{case_id}: not one line:\n{err}"
    assert needle in err, f"{case_id}: expected {needle!r} in {err!r}"
    assert not env.marker.exists(), "the pickle's payload ran"
    files_after, dirs_after = env.snapshot()
    assert files_after - files_before == set(), f"{case_id} wrote files"
    assert dirs_after - dirs_before == set(), f"{case_id} created directories before failing"


def test_table_is_big_enough():
    assert len(CASES) >= 15


def test_error_names_the_file(env, small_data, capsys):
    path = env.write_pickle({"train": {}, "valid": {}})
    code = run_main(["-m", "lf_dnn", "--feature-path", str(path), *env.dirs_argv()])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("mmsa: error: invalid dataset "), err
    assert str(path) in err  # the message names the file


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_exits_2_before_writing(env, small_data, capsys):
    files_before, dirs_before = env.snapshot()
    code = run_main(["-m", "lf_dnn", "--device", "cuda", *_good(env, small_data), *env.dirs_argv()])
    err = capsys.readouterr().err
    assert code == 2 and err == "mmsa: error: --device cuda was asked for, but torch sees no CUDA device\n"
    files_after, dirs_after = env.snapshot()
    assert files_after - files_before == {env.inputs / "data.pkl"} and dirs_after == dirs_before


# ----------------------------------------------------------------------------- accepted data
def _cell_metrics(res_dir: Path) -> dict:
    cells = sorted((res_dir / "cells").rglob("*.json"))
    assert len(cells) == 1, cells
    return json.loads(cells[0].read_text())["metrics"]


def test_audio_neg_inf_is_accepted_and_counted(env, run_data, capsys):
    d = copy.deepcopy(run_data)
    d["train"]["audio"][0, 0, :] = -np.inf
    d["test"]["audio"][1, 2, 0] = -np.inf
    count = d["train"]["audio"].shape[2] + 1
    path = env.write_pickle(d)
    code = run_main(["-m", "lf_dnn", "-d", "mosi", "-s", "1", "--epochs", "1", "--feature-path", str(path),
                     *env.dirs_argv()])
    err = capsys.readouterr().err
    assert code == 0, err
    # validation runs before the log file exists, so its lines go to the console (stderr) only
    assert f"{path}: {count} audio value(s) are -inf; MMSA's loader sets them to 0" in err
    metrics = _cell_metrics(env.res)
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    assert not (env.home / "MMSA" / "cleaned").exists()  # nothing to clean: -inf audio is MMSA's convention


def test_fix_nonfinite_runs_on_a_cleaned_copy(env, run_data, capsys):
    d = copy.deepcopy(run_data)
    d["train"]["vision"][:, :3, :] = np.nan   # every train sample: without cleaning lf_dnn's loss is NaN
    d["valid"]["text"][0, 1, 2] = np.inf
    d["test"]["audio"][0, 0, 0] = np.nan
    path = env.write_pickle(d, "dirty.pkl")
    original = path.read_bytes()
    code = run_main(["-m", "lf_dnn", "-d", "mosi", "-s", "1", "--epochs", "1", "--feature-path", str(path),
                     "--fix-nonfinite", *env.dirs_argv()])
    err = capsys.readouterr().err
    assert code == 0, err
    assert path.read_bytes() == original  # the user's file is never modified
    cleaned = list((env.home / "MMSA" / "cleaned").glob("*.pkl"))
    assert len(cleaned) == 1, cleaned
    log = err  # validation runs before the log file exists: its warning is on the console (stderr)
    assert "WARNING" in log and "set non-finite feature values to 0" in log
    assert f"using the cleaned copy {cleaned[0]}" in log
    n_vision = 3 * d["train"]["vision"].shape[0] * d["train"]["vision"].shape[2]
    assert f"train.vision: {n_vision}" in log and "valid.text: 1" in log and "test.audio: 1" in log
    fixed = safeio.safe_pickle_load(cleaned[0])
    for split in ("train", "valid", "test"):
        for key in ("text", "audio", "vision"):
            assert np.all(np.isfinite(fixed[split][key])), (split, key)
    metrics = _cell_metrics(env.res)
    assert all(np.isfinite(v) for v in metrics.values()), metrics  # trained on the cleaned copy
    assert not list(env.root.rglob(".*.tmp"))


def test_fix_nonfinite_copies_of_same_named_files_do_not_collide(env, small_data, monkeypatch):
    """MOSI and MOSEI both ship `Processed/unaligned_50.pkl`: cleaned copies must not share a path."""
    paths = []
    for i, sub in enumerate(("MOSI", "MOSEI")):
        d = copy.deepcopy(small_data)
        d["train"]["vision"][0, 0, 0] = np.nan
        d["train"]["regression_labels"][0] = i  # tell the two apart
        folder = env.inputs / sub / "Processed"
        folder.mkdir(parents=True)
        path = folder / "unaligned_50.pkl"
        with open(path, "wb") as f:
            pickle.dump(d, f, protocol=4)
        args = cli_run.run_parser().parse_args(["-m", "lf_dnn", "--feature-path", str(path), "--fix-nonfinite"])
        used = cli_sweep.prepare_data(args, "lf_dnn").path
        paths.append(Path(used))
    assert paths[0] != paths[1]
    assert [safeio.safe_pickle_load(p)["train"]["regression_labels"][0] for p in paths] == [0, 1]


# ----------------------------------------------------------------------------- malicious pickles, other paths
@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_safe_pickle_load_refuses_payloads(tmp_path, kind):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"train": [PAYLOADS[kind](marker)]}, protocol=2))
    with pytest.raises(safeio.UnsafePickleError, match="refused"):
        safeio.safe_pickle_load(path)
    with pytest.raises(safeio.UnsafePickleError, match="refused"):
        safeio.safe_pickle_loads(path.read_bytes())
    assert not marker.exists()
    # the error is an InputError, so the CLI reports it as a one-line exit-2 error
    assert issubclass(safeio.UnsafePickleError, errors.InputError)


def test_safe_pickle_load_still_reads_mmsa_data(tmp_path, small_data):
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(small_data, protocol=4))
    back = safeio.safe_pickle_load(path)
    np.testing.assert_array_equal(back["train"]["audio"], small_data["train"]["audio"])
    assert list(back["test"]["id"]) == list(small_data["test"]["id"])


def test_mmsa_data_loader_uses_restricted_unpickler(tmp_path):
    import mmsa_alignmamba  # noqa: F401  (patches MMSA when it is imported)
    import MMSA.data_loader
    host.install()
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"train": {"text": _SystemPayload(marker)}}))
    args = host.load_config("lf_dnn", "mosi")
    args.update(featurePath=str(evil), custom_feature=None, feature_T="", feature_A="", feature_V="")
    with pytest.raises(safeio.UnsafePickleError, match="refused"):
        MMSA.data_loader.MMDataLoader(args, 0)
    assert not marker.exists()


def test_checkpoint_with_payload_is_refused(tmp_path):
    import torch
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pth"
    model = torch.nn.Linear(2, 1)
    state = dict(model.state_dict())
    state["bias_extra"] = _SystemPayload(marker)
    torch.save(state, path)
    assert not marker.exists()
    with pytest.raises(errors.DataFileError, match="refused to load checkpoint .*evil.pth: it holds more than weights"):
        checkpoints.load_weights_into(model, path)
    assert not marker.exists()


def test_checkpoint_roundtrip_still_loads(tmp_path):
    import torch
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    checkpoints.save(tmp_path / "ok.pth", a.state_dict(), None)
    checkpoints.load_weights_into(b, tmp_path / "ok.pth")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
