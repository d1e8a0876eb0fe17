"""Which models exist: MMSA's built-ins, and every plugin model an installed distribution declares
under the three entry-point groups (read with importlib.metadata):

  mmsa.models    name -> callable(args) returning an nn.Module (MMSA's model contract)
  mmsa.trainers  name -> callable(args) returning an object with do_train / do_test
  mmsa.configs   name -> a path (str / Path) to an MMSA-format JSON holding a section `name`
                 with commonParams / datasetParams (and debugParams for tuning), or a
                 callable returning that path.

A name is a plugin model when all three groups declare it.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..registry import Registry
from .originals import ORIGINALS

__all__ = ["ENTRY_POINT_GROUPS", "MODELS", "TRAINERS", "CONFIGS", "Plugin", "plugins", "refresh_plugins",
           "builtin_models", "registered_models", "check_model_name", "UnknownModelError"]

logger = logging.getLogger("mmsa_alignmamba")

MODELS = Registry("plugin model", "mmsa.models")
TRAINERS = Registry("plugin trainer", "mmsa.trainers")
CONFIGS = Registry("plugin config", "mmsa.configs")
ENTRY_POINT_GROUPS = (MODELS.group, TRAINERS.group, CONFIGS.group)


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return self.args[0]


@dataclass(frozen=True)
class Plugin:
    name: str
    model: Callable[[dict], torch.nn.Module]
    trainer: Callable[[dict], Any]
    config_path: Path
    distribution: str


@functools.lru_cache(maxsize=1)
def plugins() -> dict[str, Plugin]:
    """Every model declared by an installed distribution in all three entry-point groups."""
    models, trainers, configs = MODELS.entries(), TRAINERS.entries(), CONFIGS.entries()
    found = {}
    for name, model in sorted(models.items()):
        missing = [r.group for r, entries in ((TRAINERS, trainers), (CONFIGS, configs)) if name not in entries]
        if missing:
            logger.warning("plugin model %r is not usable: no entry point in %s", name, ", ".join(missing))
            continue
        try:
            config = configs[name].obj
            config_path = Path(config() if callable(config) else config)
        except Exception as e:  # a broken third-party plugin must not break every other model
            logger.warning("plugin model %r could not be loaded and is skipped: %s: %s", name, type(e).__name__, e)
            continue
        found[name] = Plugin(name, model.obj, trainers[name].obj, config_path, model.distribution)
    return found


def refresh_plugins() -> None:
    """Forget cached discovery (after installing a distribution at run time, e.g. in tests)."""
    for registry in (MODELS, TRAINERS, CONFIGS):
        registry.refresh()
    plugins.cache_clear()


def builtin_models() -> list[str]:
    from MMSA.trains import ATIO
    return sorted(ORIGINALS.get("TRAIN_MAP_KEYS") or ATIO().TRAIN_MAP)


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
