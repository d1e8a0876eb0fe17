"""One registry style for every named, pluggable thing, in timm's manner: register by name, get
or create by name, list what exists.

Every table in this package is a :class:`Registry`: the MMSA models of plugins, the alignment
components, the missing-modality protocols, the synthetic families, AlignMamba's ablation
variants, the baselines of `mmsa bench` and the sub-commands of `mmsa`. An entry is the object
itself, or a ``"module:attribute"`` string (``"module"`` for a module) loaded on first use, so a
table can name what lives above it without importing it. A registry with an entry-point
``group`` also holds every entry that an installed distribution declares there (read with
``importlib.metadata``), so a third party adds one without editing this package; its entries come
after the built-in ones and may not replace them.

A leaf module: it imports nothing of this package but its errors.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Iterator, Mapping

from .errors import InputError

__all__ = ["Registry", "Entry", "UnknownNameError", "THIS_DISTRIBUTION"]

logger = logging.getLogger("mmsa_alignmamba")

THIS_DISTRIBUTION = "mmsa-alignmamba"


class UnknownNameError(InputError):
    """A name no registry entry has; the message lists the registered ones."""


@dataclass(frozen=True)
class Entry:
    """One registered thing: ``obj`` (loaded), the distribution it comes from, and free metadata."""
    name: str
    obj: Any
    distribution: str = THIS_DISTRIBUTION
    meta: Mapping[str, Any] = field(default_factory=dict)


def load_target(target: Any) -> Any:
    """A ``"module:attribute"`` (or ``"module"``) string as the object it names; anything else as it is."""
    if not isinstance(target, str):
        return target
    module, _, attribute = target.partition(":")
    obj = importlib.import_module(module)
    for part in filter(None, attribute.split(".")):
        obj = getattr(obj, part)
    return obj


class Registry:
    """Named entries of one ``kind`` (e.g. "local_alignment"), optionally fed by an entry-point ``group``.

    ``builtins``: name -> object or import string, this package's own entries, in their listing
    order. Names are case-insensitive (stored lower-case). Read like a dict of name -> object
    (``reg[name]``, ``list(reg)``, ``reg.items()``); ``reg[name] = obj`` registers.
    """

    def __init__(self, kind: str, group: str | None = None, builtins: Mapping[str, Any] | None = None):
        self.kind, self.group = kind, group
        self._targets: dict[str, tuple[Any, str, dict]] = {}
        self._loaded: dict[str, Entry] | None = None
        for name, target in (builtins or {}).items():
            self.register(name, target)

    # ---- adding ------------------------------------------------------------------------
    def register(self, name: str, obj: Any = None, *, distribution: str = THIS_DISTRIBUTION, **meta):
        """Add ``obj`` under ``name`` (replacing an earlier entry of that name); without ``obj``, a
        decorator that registers what it decorates. Returns ``obj``."""
        if obj is None:
            return lambda target: self.register(name, target, distribution=distribution, **meta)
        self._targets[name.lower()] = (obj, distribution, meta)
        self._loaded = None
        return obj

    def unregister(self, name: str) -> None:
        """Remove the entry ``name`` added with :meth:`register` (tests, and plugins that withdraw one)."""
        del self._targets[name.lower()]
        self._loaded = None

    __setitem__ = register

    def __delitem__(self, name: str) -> None:
        self.unregister(name)

    def refresh(self) -> None:
        """Forget what was loaded (after installing a distribution at run time, e.g. in tests)."""
        self._loaded = None

    # ---- reading -----------------------------------------------------------------------
    def entries(self) -> dict[str, Entry]:
        """Every entry, loaded: the registered ones in order, then the entry points' by name. An
        entry point that fails to load is skipped with a warning: one broken plugin must not break
        every other name."""
        if self._loaded is None:
            loaded = {name: Entry(name, load_target(target), dist, meta)
                      for name, (target, dist, meta) in self._targets.items()}
            for name, ep in self._entry_points():
                if name in loaded:
                    continue
                try:
                    obj = ep.load()
                except Exception as e:  # noqa: BLE001 - third-party code: anything can go wrong
                    logger.warning("%s %r could not be loaded and is skipped: %s: %s", self.kind, name,
                                   type(e).__name__, e)
                    continue
                dist = getattr(ep, "dist", None)
                loaded[name] = Entry(name, obj, dist.name if dist is not None else "?")
            self._loaded = loaded
        return self._loaded

    def _entry_points(self) -> list[tuple[str, metadata.EntryPoint]]:
        if self.group is None:
            return []
        return sorted((ep.name.lower(), ep) for ep in metadata.entry_points(group=self.group))

    def names(self) -> tuple[str, ...]:
        return tuple(self.entries())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.strip().lower() in self.entries()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def entry(self, name: str) -> Entry:
        """The entry ``name``; an unknown name is one error listing every registered one."""
        key = name.strip().lower() if isinstance(name, str) else name
        entries = self.entries()
        if key not in entries:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; registered: {', '.join(entries) or 'none'}")
        return entries[key]

    def get(self, name: str, *default) -> Any:
        """The object ``name``; unknown: ``default`` if one is given (as dict.get), else one error."""
        if default and name not in self:
            return default[0]
        return self.entry(name).obj

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def __len__(self) -> int:
        return len(self.entries())

    def items(self) -> list[tuple[str, Any]]:
        """(name, object) of every entry, in listing order."""
        return [(name, entry.obj) for name, entry in self.entries().items()]

    def create(self, name: str, *args, **kwargs) -> Any:
        """``get(name)(*args, **kwargs)``: build the named thing."""
        factory: Callable = self.get(name)
        return factory(*args, **kwargs)
