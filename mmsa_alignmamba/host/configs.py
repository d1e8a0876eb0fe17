"""MMSA's configs for every registered model: MMSA's own JSON with each plugin's section added,
a user's partial config merged over it after checking its keys and value kinds, and the dataset
locations and run arguments MMSA's own `MMSA_run` would fill in."""
from __future__ import annotations

import atexit
import difflib
import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import InputError
from .originals import ORIGINALS
from .plugins import check_model_name, plugins

__all__ = ["DATASETS", "mmsa_default_config", "default_configs_text", "config_file_for", "load_config",
           "check_model_args", "mmsa_run_args", "restore_config", "mmsa_dataset_root", "dataset_relative_path",
           "aligned_dataset_params"]

DATASETS = ("mosi", "mosei", "sims")


def mmsa_default_config(kind: str = "regression") -> Path:
    import MMSA
    return Path(MMSA.__file__).parent / "config" / f"config_{kind}.json"


def default_configs_text() -> str:
    """The texts of every config a run without -c reads (MMSA's and each plugin's), in a fixed order."""
    paths = [mmsa_default_config()] + [plugins()[name].config_path for name in sorted(plugins())]
    return "\n".join(f"{path.name}\n{path.read_text()}" for path in paths)


def _default_config(kind: str, model_name: str) -> dict:
    """MMSA's default config JSON, with the plugin's section added when `model_name` is a plugin's."""
    config = json.loads(mmsa_default_config(kind).read_text())
    if model_name in plugins() and model_name not in config:
        config[model_name] = json.loads(plugins()[model_name].config_path.read_text())[model_name]
    return config


def _read_user_config(path) -> dict:
    path = Path(path)
    if path.is_dir() or not path.is_file():
        raise InputError(f"config file {path} not found")
    try:
        config = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise InputError(f"config file {path} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise InputError(f"config file {path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    if not isinstance(config, dict):
        raise InputError(f"config file {path} must hold a JSON object, got {type(config).__name__}")
    return config


def _json_kind(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {str: "a string", list: "a list", dict: "an object", type(None): "null"}[type(value)]


def _unknown_key(path, where: str, key: str, choices) -> InputError:
    close = difflib.get_close_matches(key, sorted(choices), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return InputError(f"config file {path}: unknown key {where}.{key}{hint}")


def _check_section(user: dict, default: dict, where: str, path, known: set[str],
                   kinds: dict[str, tuple[str, ...]] | None = None) -> None:
    """Every key of ``user`` must exist in ``default`` (or ``known``) with a value of the same JSON
    kind, or of one of the kinds ``kinds`` allows for that key (a value that may be a list or a name)."""
    kinds = kinds or {}
    for key, value in user.items():
        if key not in default and key not in known:
            raise _unknown_key(path, where, key, set(default) | known)
        if key not in default:
            continue
        expected = default[key]
        allowed = kinds.get(key, (_json_kind(expected),))
        if isinstance(expected, dict) and isinstance(value, dict):
            _check_section(value, expected, f"{where}.{key}", path, set())
        elif expected is not None and value is not None and _json_kind(value) not in allowed:
            raise InputError(f"config file {path}: {where}.{key} must be {' or '.join(allowed)} "
                             f"(like the default {json.dumps(expected)}), got {json.dumps(value)}")


def _merge(default: dict, user: dict) -> dict:
    """``user`` over ``default``, recursively for objects."""
    out = dict(default)
    for key, value in user.items():
        out[key] = _merge(default[key], value) if isinstance(value, dict) and isinstance(default.get(key), dict) \
            else value
    return out


def _check_user_config(user: dict, default: dict, path) -> None:
    """Keys and value kinds of a user config against the defaults. A model section may hold any key
    its model declares (``config_keys`` on a plugin's model entry point) besides the default ones,
    and a key may take any JSON kind its model lists for it (``config_kinds``, e.g. a list or a name)."""
    for name, section in user.items():
        if name not in default:
            continue  # a section for a model that has no defaults here: MMSA reads it as it is
        if not isinstance(section, dict):
            raise InputError(f"config file {path}: {name} must be an object, got {json.dumps(section)}")
        plugin = plugins().get(name)
        known = set(getattr(plugin.model, "config_keys", ())) if plugin else set()
        kinds = dict(getattr(plugin.model, "config_kinds", {})) if plugin else {}
        if name == "datasetCommonParams":
            _check_section(section, default[name], name, path, set())
            continue
        for part, params in section.items():
            if part not in default[name]:
                raise _unknown_key(path, name, part, default[name])
            if part == "datasetParams":
                for dataset, values in params.items():
                    defaults = default[name][part].get(dataset, {})
                    _check_section(values, defaults, f"{name}.{part}.{dataset}", path,
                                   known | set(default[name].get("commonParams", {})), kinds)
            else:
                _check_section(params, default[name][part], f"{name}.{part}", path,
                               known | {k for d in default[name].get("datasetParams", {}).values() for k in d},
                               kinds if part == "commonParams" else None)


@functools.lru_cache(maxsize=None)
def _config_dir() -> Path:
    """One temporary folder per process for the configs handed to MMSA, removed when the process
    that made it exits (not by a forked child, which shares the path)."""
    path = Path(tempfile.mkdtemp(prefix="mmsa_alignmamba_cfg_"))
    owner = os.getpid()
    atexit.register(lambda: os.getpid() == owner and shutil.rmtree(path, ignore_errors=True))
    return path


@functools.lru_cache(maxsize=None)
def _written_config(text: str) -> str:
    """A config's text as a file MMSA can read (one per distinct content, per process)."""
    digest = hashlib.sha1(text.encode()).hexdigest()[:12]
    tmp = _config_dir() / f"config-{digest}.json"
    tmp.write_text(text)
    return str(tmp)


def config_file_for(model_name: str, config_file, kind: str) -> str:
    """MMSA reads one JSON per call and needs every section: hand it the defaults (with the
    plugin's section) and, when a config is given, that config merged over them, after checking
    its keys and value kinds; a config may hold only the keys it changes."""
    default = _default_config(kind, model_name)
    if config_file in (None, ""):
        if model_name in plugins():
            return _written_config(json.dumps(default))
        return str(mmsa_default_config(kind))
    user = _read_user_config(config_file)
    _check_user_config(user, default, config_file)
    return _written_config(json.dumps(_merge(default, user)))


def load_config(model_name: str, dataset_name: str, config_file=None, tune: bool = False, random_choice: bool = True):
    """MMSA's config for (model, dataset); ``tune``: its tune config, with one random draw of the
    debugParams, or with their candidate lists (``random_choice=False``). MMSA's own loaders read
    the defaults with the plugins' sections, and ``config_file`` merged over them."""
    import MMSA.config
    name, dataset = check_model_name(model_name), dataset_name.lower()
    if tune:
        get_tune = ORIGINALS.get("config.tune", MMSA.config.get_config_tune)
        return get_tune(name, dataset, config_file_for(name, config_file, "tune"), random_choice)
    get_regression = ORIGINALS.get("config.regression", MMSA.config.get_config_regression)
    try:
        return get_regression(name, dataset, config_file_for(name, config_file, "regression"))
    except KeyError as e:   # MMSA indexes datasetParams[dataset]: MCTN has MOSI only, MLF-DNN/MTFN/MLMF SIMS only
        if e.args != (dataset,):
            raise
        raise NoDatasetConfig(f"MMSA has no {dataset} config for {name} (see its datasetParams)") from None


class NoDatasetConfig(InputError):
    """The model has no config for the dataset (MMSA's ``datasetParams`` lack it)."""


def check_model_args(args) -> None:
    """A plugin model may check its config before anything runs: its entry point's ``check_args(args)``
    raises ValueError / TypeError on a bad value; that becomes one InputError naming the model."""
    plugin = plugins().get(str(args["model_name"]).lower())
    check = getattr(plugin.model, "check_args", None) if plugin else None
    if check is not None:
        try:
            check(args)
        except InputError:
            raise
        except (ValueError, TypeError) as e:
            raise InputError(f"config of {plugin.name}: {e}") from None


def mmsa_run_args(feature_path="", device="cpu", model_save_path="", feature_T="", feature_A="", feature_V="") -> dict:
    """The arguments MMSA's `MMSA_run` adds to a model's config before it trains: the data file,
    custom feature files, device, train mode and checkpoint path (MMSA's argument group, one place)."""
    return {"featurePath": feature_path, "custom_feature": None, "feature_T": feature_T, "feature_A": feature_A,
            "feature_V": feature_V, "device": torch.device(device), "train_mode": "regression",
            "model_save_path": model_save_path}


def restore_config(model_name: str, dataset_name: str, stored: dict | None = None, config_file=None):
    """MMSA's config object for a trained model: today's defaults for (model, dataset), overlaid
    with the config the checkpoint recorded (keys added since then keep their defaults); CPU."""
    args = load_config(model_name, dataset_name, config_file)
    args.update(stored or {})
    args.update(model_name=check_model_name(model_name), dataset_name=dataset_name.lower(), **mmsa_run_args())
    return args


def _dataset_common_params(dataset_name: str) -> dict:
    with open(mmsa_default_config("regression")) as f:
        return json.load(f)["datasetCommonParams"][dataset_name.lower()]


def mmsa_dataset_root() -> Path:
    with open(mmsa_default_config("regression")) as f:
        return Path(json.load(f)["datasetCommonParams"]["dataset_root_dir"])


def dataset_relative_path(dataset_name: str, aligned: bool = False) -> str:
    """Where MMSA expects the processed features under its dataset root, e.g. MOSI/Processed/unaligned_50.pkl."""
    return aligned_dataset_params(dataset_name)["featurePath"] if aligned else \
        _dataset_common_params(dataset_name)["unaligned"]["featurePath"]


def aligned_dataset_params(dataset_name: str) -> dict:
    """MMSA's dataset params for the word-aligned features, with need_data_aligned switched on."""
    params = _dataset_common_params(dataset_name)
    if "aligned" not in params:
        raise InputError(f"MMSA has no word-aligned features for {dataset_name.upper()}; drop --aligned")
    return {**params["aligned"], "need_data_aligned": True}
