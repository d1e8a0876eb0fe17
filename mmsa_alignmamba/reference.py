"""Published numbers of other people's runs, for reference rows in reports: ``mmsa`` is MMSA's own
result table (results/result-stat.md of MMSA v_2.2.1, regression), kept in
``assets/mmsa-reported.json`` with its source and scale.

They are never measured here: reports show them in their own section, each row marked "reported
by MMSA", and never average, rank or test them with measured rows (as the paper's rows, paper.py).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from .errors import InputError

__all__ = ["REFERENCES", "reference_rows"]

REFERENCES = {"mmsa": "mmsa-reported.json"}


@lru_cache(maxsize=None)
def _load(name: str) -> dict:
    if name not in REFERENCES:
        raise InputError(f"unknown reference {name!r}; choose from {', '.join(REFERENCES)}")
    return json.loads((Path(__file__).parent / "assets" / REFERENCES[name]).read_text())


def reference_rows(name: str, dataset: str) -> tuple[list[dict], str, str]:
    """-> (the published rows for ``dataset``, each {'model', 'data_setting', metric: value}, their
    source, their note on scale and metric definitions); no rows for a dataset it does not cover."""
    doc = _load(name)
    return [r for r in doc["rows"] if r["dataset"] == dataset], doc["source"], doc["note"]
