"""The MMSA adapter: the only module that touches MMSA 2.2.1's internals.

MMSA has no plugin mechanism: `AMIO.__init__` builds its model map inside the constructor,
`ATIO.getTrain` indexes a fixed trainer map, and `get_config_regression` / `get_config_tune`
index MMSA's own JSON by model name (and `MMSA.run` imported those functions by name, so they
are patched where they are used). `install()` teaches all of them about every model declared
under the entry-point groups below, by any installed distribution, and applies a set of small,
named fixes to MMSA bugs that bite every model (README, "MMSA fixes"). It is idempotent.

Entry-point groups (read with importlib.metadata):
  mmsa.models    name -> callable(args) returning an nn.Module (MMSA's model contract)
  mmsa.trainers  name -> callable(args) returning an object with do_train / do_test
  mmsa.configs   name -> a path (str / Path) to an MMSA-format JSON holding a section `name`
                 with commonParams / datasetParams (and debugParams for tuning), or a
                 callable returning that path.
"""
from __future__ import annotations

import atexit
import builtins
import contextlib
import difflib
import functools
import hashlib
import inspect
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import InputError
from .safeio import safe_pickle_loads
from .settings import checkpoint_path, resolve_output_dirs

__all__ = [
    # discovery and registration
    "ENTRY_POINT_GROUPS", "Plugin", "plugins", "refresh_plugins", "builtin_models", "registered_models",
    "check_model_name", "UnknownModelError", "install", "install_when_mmsa_imports", "COMPAT_FIXES",
    # configs and data locations
    "DATASETS", "mmsa_default_config", "default_configs_text", "load_config", "mmsa_dataset_root",
    "dataset_relative_path",
    "aligned_dataset_params",
    # MMSA's building blocks for our runner
    "check_model_args", "build_model", "build_trainer", "build_dataloaders", "setup_seed",
    "metrics_for",
    # prediction with a trained model
    "restore_config", "prediction_dataset", "predict_scores",
]

logger = logging.getLogger("mmsa_alignmamba")

ENTRY_POINT_GROUPS = ("mmsa.models", "mmsa.trainers", "mmsa.configs")
DATASETS = ("mosi", "mosei", "sims")


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return self.args[0]


# --------------------------------------------------------------------------------------
# Plugin discovery
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plugin:
    name: str
    model: Callable[[dict], torch.nn.Module]
    trainer: Callable[[dict], Any]
    config_path: Path
    distribution: str


def _entry_points(group: str) -> dict[str, metadata.EntryPoint]:
    return {ep.name.lower(): ep for ep in metadata.entry_points(group=group)}


@functools.lru_cache(maxsize=1)
def plugins() -> dict[str, Plugin]:
    """Every model declared by an installed distribution in all three entry-point groups."""
    models, trainers, configs = (_entry_points(g) for g in ENTRY_POINT_GROUPS)
    found = {}
    for name, model_ep in sorted(models.items()):
        missing = [g for g, eps in zip(ENTRY_POINT_GROUPS[1:], (trainers, configs)) if name not in eps]
        if missing:
            logger.warning("plugin model %r is not usable: no entry point in %s", name, ", ".join(missing))
            continue
        try:
            config = configs[name].load()
            config_path = Path(config() if callable(config) else config)
            model, trainer = model_ep.load(), trainers[name].load()
        except Exception as e:  # a broken third-party plugin must not break every other model
            logger.warning("plugin model %r could not be loaded and is skipped: %s: %s", name, type(e).__name__, e)
            continue
        dist = getattr(model_ep, "dist", None)
        found[name] = Plugin(name, model, trainer, config_path, dist.name if dist is not None else "?")
    return found


def refresh_plugins() -> None:
    """Forget cached discovery (after installing a distribution at run time, e.g. in tests)."""
    plugins.cache_clear()
    _written_config.cache_clear()


def builtin_models() -> list[str]:
    from MMSA.trains import ATIO
    return sorted(_ORIGINAL.get("TRAIN_MAP_KEYS") or ATIO().TRAIN_MAP)


def registered_models() -> dict[str, str]:
    """name -> where it comes from ('MMSA' or the plugin's distribution)."""
    names = {name: "MMSA" for name in builtin_models()}
    names.update({name: p.distribution for name, p in plugins().items()})
    return dict(sorted(names.items()))


def check_model_name(name: str) -> str:
    name = name.lower()
    if name not in registered_models():
        raise UnknownModelError(
            f"unknown model {name!r}; registered models: {', '.join(registered_models())}")
    return name


# --------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------
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


def _config_file_for(model_name: str, config_file, kind: str) -> str:
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


# --------------------------------------------------------------------------------------
# Registration: AMIO, ATIO, config loaders
# --------------------------------------------------------------------------------------
_ORIGINAL: dict[str, Any] = {}


class _ModelMapWithPlugins:
    """Stands in for ``AMIO.MODEL_MAP``. MMSA's ``AMIO.__init__`` builds its model map as an instance
    attribute (``self.MODEL_MAP = {...}``) and then looks the model up in it. As a data descriptor
    on the class, this intercepts that assignment and adds every plugin model, so MMSA's own
    constructor runs unchanged (word-alignment subnet included) for plugins too."""

    def __set__(self, amio, builtin_map: dict) -> None:
        amio.__dict__["MODEL_MAP"] = {**builtin_map, **{name: p.model for name, p in plugins().items()}}

    def __get__(self, amio, owner=None):
        return self if amio is None else amio.__dict__["MODEL_MAP"]


def _register_models() -> None:
    from MMSA.models import AMIO
    AMIO.MODEL_MAP = _ModelMapWithPlugins()


def _register_trainers() -> None:
    from MMSA.trains import ATIO
    original = _ORIGINAL.setdefault("ATIO.getTrain", ATIO.getTrain)
    _ORIGINAL.setdefault("TRAIN_MAP_KEYS", tuple(ATIO().TRAIN_MAP))

    def getTrain(self, args):
        plugin = plugins().get(str(args["model_name"]).lower())
        return plugin.trainer(args) if plugin else original(self, args)

    ATIO.getTrain = getTrain


def _register_configs() -> None:
    import MMSA
    import MMSA.config
    import MMSA.run
    originals = {kind: _ORIGINAL.setdefault(f"config.{kind}", getattr(MMSA.config, f"get_config_{kind}"))
                 for kind in ("regression", "tune")}

    def get_config_regression(model_name, dataset_name, config_file=""):
        model_name = model_name.lower()
        return originals["regression"](model_name, dataset_name,
                                       _config_file_for(model_name, config_file, "regression"))

    def get_config_tune(model_name, dataset_name, config_file="", random_choice=True):
        model_name = model_name.lower()
        return originals["tune"](model_name, dataset_name,
                                 _config_file_for(model_name, config_file, "tune"), random_choice)

    for module in (MMSA, MMSA.config, MMSA.run):
        module.get_config_regression = get_config_regression
        module.get_config_tune = get_config_tune


# --------------------------------------------------------------------------------------
# Compat fixes, one per MMSA bug (README, "MMSA fixes"). Each is named and tested on its own.
# --------------------------------------------------------------------------------------
class _SafeCuda:
    """torch.cuda, except that set_device ignores non-CUDA devices."""

    def __getattr__(self, name):
        return getattr(torch.cuda, name)

    @staticmethod
    def set_device(device):
        if torch.device(device).type == "cuda":
            torch.cuda.set_device(device)


class _MMSARunTorch:
    """Stands in for `torch` inside MMSA.run only: CPU-safe set_device, weights-only loads."""
    cuda = _SafeCuda()

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        kwargs.setdefault("map_location", "cpu")
        return torch.load(f, *args, **kwargs)


def fix_cpu_set_device() -> None:
    """MMSA_run calls torch.cuda.set_device(args['device']) even for a CPU device and crashes
    without CUDA; checkpoints are also loaded there with plain torch.load (weights_only=True here)."""
    import MMSA.run
    MMSA.run.torch = _MMSARunTorch()


def _reduce_lr_accepts_verbose() -> bool:
    return "verbose" in inspect.signature(torch.optim.lr_scheduler.ReduceLROnPlateau.__init__).parameters


class ReduceLROnPlateauCompat(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """ReduceLROnPlateau that drops the `verbose=` argument current torch no longer accepts."""

    def __init__(self, *args, verbose=None, **kwargs):
        super().__init__(*args, **kwargs)


def fix_reduce_lr_verbose() -> None:
    """MulT / MMIM / TFR_Net trainers pass verbose= to ReduceLROnPlateau: a TypeError on torch >= 2.7."""
    if _reduce_lr_accepts_verbose():
        return
    import importlib
    import pkgutil

    import MMSA.trains
    for info in pkgutil.walk_packages(MMSA.trains.__path__, "MMSA.trains."):
        module = importlib.import_module(info.name)
        if getattr(module, "ReduceLROnPlateau", None) is torch.optim.lr_scheduler.ReduceLROnPlateau:
            module.ReduceLROnPlateau = ReduceLROnPlateauCompat


def _plain_round(number, ndigits=None):
    """round() that returns a Python float, so CSVs show 85.2 rather than np.float64(85.2)."""
    value = builtins.round(number, ndigits)
    return float(value) if ndigits is not None else int(value)


def fix_numpy_text_in_csv() -> None:
    """Under numpy 2, MMSA_run writes cells like '(np.float64(85.2), np.float64(0.3))'."""
    import MMSA.run
    MMSA.run.round = _plain_round


def fix_duplicate_log_handlers() -> None:
    """MMSA's _set_logger adds a file and a stream handler on every call: lines repeat N times."""
    import MMSA.run
    original = _ORIGINAL.setdefault("run._set_logger", MMSA.run._set_logger)

    def _set_logger(log_dir, model_name, dataset_name, verbose_level):
        mmsa_logger = logging.getLogger("MMSA")
        for handler in list(mmsa_logger.handlers):
            mmsa_logger.removeHandler(handler)
            handler.close()
        return original(log_dir, model_name, dataset_name, verbose_level)

    MMSA.run._set_logger = _set_logger


def fix_empty_paths() -> None:
    """`python -m MMSA` passes '' for -c and the output dirs: '' becomes Path('.'), so -c fails
    with FileNotFoundError('.') and results, models and logs land in the working directory."""
    import MMSA
    import MMSA.run
    original = _ORIGINAL.setdefault("run.MMSA_run", MMSA.run.MMSA_run)

    signature = inspect.signature(original)

    @functools.wraps(original)
    def MMSA_run(*args, **kwargs):
        call = signature.bind(*args, **kwargs)  # positional or keyword, as MMSA allows
        call.apply_defaults()
        given = call.arguments
        given["model_name"] = check_model_name(given["model_name"])
        dirs = resolve_output_dirs(given["model_save_dir"], given["res_save_dir"], given["log_dir"])
        given.update({k: str(v) for k, v in dirs.items()})
        given["config_file"] = _config_file_for(given["model_name"], given["config_file"],
                                                "tune" if given["is_tune"] else "regression")
        return original(*call.args, **call.kwargs)

    MMSA.MMSA_run = MMSA.run.MMSA_run = MMSA_run


def fix_checkpoint_per_seed() -> None:
    """MMSA_run saves every seed to the same '<model>-<dataset>.pth', so only the last survives."""
    import MMSA.run
    original_seed = _ORIGINAL.setdefault("run.setup_seed", MMSA.run.setup_seed)
    original_run = _ORIGINAL.setdefault("run._run", MMSA.run._run)
    current = {}

    def setup_seed(seed):
        current["seed"] = seed
        return original_seed(seed)

    def _run(args, *rest, **kwargs):
        base = Path(args.setdefault("checkpoint_base", args["model_save_path"]))
        if "seed" in current:
            args["model_save_path"] = checkpoint_path(base.parent, args["model_name"], args["dataset_name"],
                                                      current["seed"])
        return original_run(args, *rest, **kwargs)

    MMSA.run.setup_seed = setup_seed
    MMSA.run._run = _run


def build_dataloaders(args, num_workers: int = 0):
    """MMSA's MMDataLoader, except that valid and test keep their order (MMSA shuffles every split)."""
    from MMSA.data_loader import MMDataLoader
    from torch.utils.data import DataLoader
    loaders = _ORIGINAL.get("MMDataLoader", MMDataLoader)(args, num_workers)
    for split in ("valid", "test"):
        loaders[split] = DataLoader(loaders[split].dataset, batch_size=args["batch_size"],
                                    num_workers=num_workers, shuffle=False)
    return loaders


def fix_eval_shuffle() -> None:
    """Every MMSA DataLoader shuffles, valid and test included; evaluation order should be fixed."""
    import MMSA.run
    _ORIGINAL.setdefault("MMDataLoader", MMSA.run.MMDataLoader)
    MMSA.run.MMDataLoader = build_dataloaders


class _RestrictedPickleModule:
    """Stands in for `pickle` inside MMSA's data loader and MMSA_test: allow-list loading only."""

    @staticmethod
    def load(f):
        return safe_pickle_loads(f.read(), getattr(f, "name", "<file>"))

    def __getattr__(self, name):
        import pickle
        return getattr(pickle, name)


def fix_unsafe_pickle_load() -> None:
    """MMSA unpickles dataset / feature files with pickle.load, which runs any code they carry."""
    import MMSA.data_loader
    import MMSA.run
    MMSA.data_loader.pickle = MMSA.run.pickle = _RestrictedPickleModule()


MMAP_THRESHOLD_BYTES = 128 * 1024


def fix_glibc_heap_growth() -> None:
    """Training MMSA's MulT at MOSI's shapes on CPU, the process's memory grew from epoch to epoch
    until the kernel killed it. Not a leak: glibc raises its mmap threshold every time a large
    block is freed (up to 32 MB), so later tensors below that size come from the heap, where a
    small block still in use pins everything freed beneath it, and freed memory stays resident.
    A fixed threshold (which also turns the raising off) puts every block over 128 KiB in its own
    mapping, handed back to the system when freed. Any model with large, changing activations
    gains; glibc only (elsewhere nothing to do)."""
    import ctypes
    import ctypes.util
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    M_MMAP_THRESHOLD = -3
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


COMPAT_FIXES = (
    fix_cpu_set_device,
    fix_reduce_lr_verbose,
    fix_numpy_text_in_csv,
    fix_duplicate_log_handlers,
    fix_empty_paths,
    fix_checkpoint_per_seed,
    fix_eval_shuffle,
    fix_unsafe_pickle_load,
    fix_glibc_heap_growth,
)

_installed = False


def install() -> None:
    """Register every plugin with MMSA and apply the compat fixes (idempotent)."""
    global _installed
    if _installed:
        return
    _register_models()
    _register_trainers()
    _register_configs()
    for fix in COMPAT_FIXES:
        fix()
    _installed = True
    logger.debug("MMSA host adapter installed; plugins: %s", ", ".join(plugins()) or "none")


def install_when_mmsa_imports() -> None:
    """Install now if MMSA is already imported, otherwise right after `import MMSA` completes,
    so that importing the pure-PyTorch model does not pay for importing MMSA (and transformers)."""
    if "MMSA.run" in sys.modules:
        install()
        return
    import importlib.abc
    import importlib.util

    class _InstallAfterMMSA(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            if fullname != "MMSA":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(fullname)
            if spec is None or spec.loader is None:
                return spec
            exec_module = spec.loader.exec_module

            def exec_then_install(module):
                exec_module(module)
                install()

            spec.loader.exec_module = exec_then_install
            return spec

    if not any(type(f).__name__ == "_InstallAfterMMSA" for f in sys.meta_path):
        sys.meta_path.insert(0, _InstallAfterMMSA())


# --------------------------------------------------------------------------------------
# Building blocks for our own experiment driver (runner.py), all through MMSA's code paths
# --------------------------------------------------------------------------------------
def load_config(model_name: str, dataset_name: str, config_file=None, tune: bool = False, random_choice: bool = True):
    """MMSA's config for (model, dataset); ``tune``: its tune config, with one random draw of the
    debugParams, or with their candidate lists (``random_choice=False``)."""
    import MMSA.config
    install()
    if tune:
        return MMSA.config.get_config_tune(check_model_name(model_name), dataset_name.lower(), config_file or "",
                                           random_choice)
    return MMSA.config.get_config_regression(check_model_name(model_name), dataset_name.lower(), config_file or "")


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


def build_model(args) -> torch.nn.Module:
    from MMSA.models import AMIO
    install()
    return AMIO(args)


def build_trainer(args):
    from MMSA.trains import ATIO
    install()
    return ATIO().getTrain(args)


def setup_seed(seed: int) -> None:
    from MMSA.utils import setup_seed as mmsa_setup_seed
    mmsa_setup_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def metrics_for(dataset_name: str):
    """MMSA's regression metrics for a dataset: callable(pred (N,1), true (N,1)) -> dict."""
    from MMSA.utils import MetricsTop
    return MetricsTop("regression").getMetics(dataset_name)


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


# --------------------------------------------------------------------------------------
# Prediction with a trained model (predict.py), through the same loader and trainer as training
# --------------------------------------------------------------------------------------
def restore_config(model_name: str, dataset_name: str, stored: dict | None = None, config_file=None):
    """MMSA's config object for a trained model: today's defaults for (model, dataset), overlaid
    with the config the checkpoint recorded (keys added since then keep their defaults); CPU."""
    args = load_config(model_name, dataset_name, config_file)
    args.update(stored or {})
    args.update(model_name=check_model_name(model_name), dataset_name=dataset_name.lower(), train_mode="regression",
                device=torch.device("cpu"), custom_feature=None, feature_T="", feature_A="", feature_V="",
                featurePath="", model_save_path="")
    return args


def prediction_dataset(args, split: dict):
    """MMSA's own MMDataset over one split held in memory (MMSA's dict of arrays, labels filled
    in), so that prediction sees exactly the preprocessing training saw: the -inf audio fix,
    the time averaging of models with need_normalized, the truncation of models with seq_lens.
    MMDataset only reads a file, so the split passes through a temporary one."""
    import pickle

    from MMSA.data_loader import MMDataset
    install()
    with tempfile.TemporaryDirectory(prefix="mmsa-predict-") as tmp:
        path = Path(tmp) / "split.pkl"
        with open(path, "wb") as f:
            pickle.dump({"test": split}, f, protocol=4)
        config = type(args)(dict(args, featurePath=str(path), feature_dims=list(args["feature_dims"])))
        with _mmsa_log_quiet():   # "test samples: (N,)" would mislead here
            return MMDataset(config, mode="test")


@contextlib.contextmanager
def _mmsa_log_quiet():
    """MMSA's logger at WARNING for the duration: its INFO lines describe training, not prediction."""
    mmsa_logger = logging.getLogger("MMSA")
    previous = mmsa_logger.level
    mmsa_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        mmsa_logger.setLevel(previous)


def predict_scores(model: torch.nn.Module, args, loader):
    """Run the model's own trainer's ``do_test`` over ``loader`` (so every model, built-in or
    plugin, is called in its own convention) and collect the regression output ``M`` of every
    batch in order. -> (scores (N,) numpy, the trainer's metric dict). The trainer's log line is
    hidden: its metrics are meaningless where the labels are placeholders."""
    import warnings

    import numpy as np
    trainer = build_trainer(args)
    scores = []
    hook = model.register_forward_hook(lambda _m, _i, out: scores.append(out["M"].detach().reshape(-1).cpu()))
    try:
        with _mmsa_log_quiet(), warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")    # one sample: numpy's "degrees of freedom" warnings
            metrics = trainer.do_test(model, loader, mode="PREDICT")
    finally:
        hook.remove()
    return torch.cat(scores).numpy() if scores else np.zeros(0, dtype=np.float32), metrics
