"""Registration with MMSA, and ``install()``.

MMSA has no plugin mechanism: `AMIO.__init__` builds its model map inside the constructor,
`ATIO.getTrain` indexes a fixed trainer map, and `get_config_regression` / `get_config_tune`
index MMSA's own JSON by model name (and `MMSA.run` imported those functions by name, so they
are patched where they are used). ``install()`` teaches all of them about every plugin model
(:mod:`.plugins`) and applies the compat fixes (:mod:`.fixes`). It is idempotent.
"""
from __future__ import annotations

import logging
import sys

from .configs import config_file_for
from .fixes import COMPAT_FIXES
from .originals import keep
from .plugins import plugins

__all__ = ["install", "install_when_mmsa_imports"]

logger = logging.getLogger("mmsa_alignmamba")


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
    original = keep("ATIO.getTrain", ATIO.getTrain)
    keep("TRAIN_MAP_KEYS", tuple(ATIO().TRAIN_MAP))

    def getTrain(self, args):
        plugin = plugins().get(str(args["model_name"]).lower())
        return plugin.trainer(args) if plugin else original(self, args)

    ATIO.getTrain = getTrain


def _register_configs() -> None:
    import MMSA
    import MMSA.config
    import MMSA.run
    originals = {kind: keep(f"config.{kind}", getattr(MMSA.config, f"get_config_{kind}"))
                 for kind in ("regression", "tune")}

    def get_config_regression(model_name, dataset_name, config_file=""):
        model_name = model_name.lower()
        return originals["regression"](model_name, dataset_name,
                                       config_file_for(model_name, config_file, "regression"))

    def get_config_tune(model_name, dataset_name, config_file="", random_choice=True):
        model_name = model_name.lower()
        return originals["tune"](model_name, dataset_name,
                                 config_file_for(model_name, config_file, "tune"), random_choice)

    for module in (MMSA, MMSA.config, MMSA.run):
        module.get_config_regression = get_config_regression
        module.get_config_tune = get_config_tune


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
