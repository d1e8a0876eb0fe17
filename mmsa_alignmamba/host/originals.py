"""MMSA's own functions and classes, kept before the adapter replaces them: every patch calls
through to the original, and a second install() finds them here instead of patching a patch."""
from __future__ import annotations

from typing import Any

ORIGINALS: dict[str, Any] = {}


def keep(name: str, value: Any) -> Any:
    """The original kept under ``name``, keeping ``value`` if none is yet."""
    return ORIGINALS.setdefault(name, value)
