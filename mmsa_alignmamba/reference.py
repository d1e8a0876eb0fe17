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

__all__ = ["REFERENCES", "reference_tables"]

REFERENCES = {"mmsa": "mmsa-reported.json"}


@lru_cache(maxsize=None)
def _load(name: str) -> dict:
    if name not in REFERENCES:
        raise InputError(f"unknown reference {name!r}; choose from {', '.join(REFERENCES)}")
    return json.loads((Path(__file__).parent / "assets" / REFERENCES[name]).read_text())


def reference_tables(name: str, datasets) -> tuple[list[tuple[str, list[dict], list[str]]], str, str]:
    """-> ([(dataset, its published rows, their metric columns)] for each of ``datasets`` that
    ``name`` covers, sorted; the rows' source; its note on scale and metric definitions): what every
    report form lays out as tables of their own. Each row is {'model', 'data_setting', metric: value}."""
    doc = _load(name)
    tables = []
    for dataset in sorted(set(datasets)):
        rows = [r for r in doc["rows"] if r["dataset"] == dataset]
        if rows:
            tables.append((dataset, rows, [k for k in rows[0] if k not in ("dataset", "model", "data_setting")]))
    return tables, doc["source"], doc["note"]
