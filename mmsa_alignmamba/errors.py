"""The errors a user's input can cause, and the small checks that raise them.

A leaf module (no torch, no MMSA): every layer of the package, from the synthetic generators to
the command line, reports bad input the same way, and the `mmsa` command turns an
:class:`InputError` into one line ``mmsa: error: …`` and exit status 2.
"""
from __future__ import annotations

import numbers
from typing import Any

__all__ = ["InputError", "DataFileError", "check_at_least", "check_seed"]


class InputError(ValueError):
    """A problem with what the user gave us (file, option, data): reported in one line, exit status 2."""


class DataFileError(InputError):
    """A data file is missing, unreadable or malformed; the message names the file and the problem."""


def check_at_least(*bounds) -> None:
    """Each (flag, value, least): one error line unless the value is unset (None) or >= least."""
    for flag, value, least in bounds:
        if value is not None and value < least:
            raise InputError(f"{flag} must be >= {least}, got {value}")


def check_seed(seed: Any) -> int:
    """A seed as an int; one error unless it is a non-negative integer (bools are not)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or int(seed) < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)
