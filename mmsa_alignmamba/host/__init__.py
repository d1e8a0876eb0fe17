"""The MMSA adapter: the only package that touches MMSA 2.2.1's internals, one job per module.

==============  ================================================================================
module          job
==============  ================================================================================
``plugins``     which models exist: MMSA's built-ins and the plugin models of the ``mmsa.models``
                / ``mmsa.trainers`` / ``mmsa.configs`` entry points
``configs``     MMSA's configs with the plugins' sections, user configs checked and merged, the
                dataset locations and the run arguments MMSA_run would fill in
``fixes``       the compat fixes, one named function per MMSA bug (README, "MMSA fixes")
``install``     registration with MMSA's model, trainer and config maps, and ``install()``
``runtime``     building models, trainers, loaders, metrics and prediction datasets through MMSA
``originals``   MMSA's own functions, kept before they are patched
==============  ================================================================================

``import mmsa_alignmamba`` calls :func:`install_when_mmsa_imports`: MMSA is patched as soon as it
is imported (README, "MMSA fixes"), so that importing the pure-PyTorch model stays cheap. The
names below are the adapter's interface for the rest of the package.
"""
from .configs import (
    DATASETS,
    NoDatasetConfig,
    aligned_dataset_params,
    check_model_args,
    config_file_for,
    dataset_relative_path,
    default_configs_text,
    load_config,
    mmsa_dataset_root,
    mmsa_default_config,
    mmsa_run_args,
    restore_config,
)
from .fixes import COMPAT_FIXES, MMAP_THRESHOLD_BYTES, build_dataloaders
from .install import install, install_when_mmsa_imports
from .plugins import (
    ENTRY_POINT_GROUPS,
    Plugin,
    UnknownModelError,
    builtin_models,
    check_model_name,
    plugins,
    refresh_plugins,
    registered_models,
)
from .runtime import build_model, build_trainer, metrics_for, predict_scores, prediction_dataset, setup_seed

__all__ = [
    # discovery and registration
    "ENTRY_POINT_GROUPS", "Plugin", "plugins", "refresh_plugins", "builtin_models", "registered_models",
    "check_model_name", "UnknownModelError", "install", "install_when_mmsa_imports", "COMPAT_FIXES",
    # configs and data locations
    "DATASETS", "NoDatasetConfig", "mmsa_default_config", "default_configs_text", "config_file_for", "load_config",
    "mmsa_dataset_root", "dataset_relative_path", "aligned_dataset_params", "mmsa_run_args",
    # MMSA's building blocks for our runner
    "check_model_args", "build_model", "build_trainer", "build_dataloaders", "setup_seed", "metrics_for",
    "MMAP_THRESHOLD_BYTES",
    # prediction with a trained model
    "restore_config", "prediction_dataset", "predict_scores",
]
