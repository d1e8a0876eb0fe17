"""Finished runs on disk: what a run is (a cell), how it is named, and where it is kept.

The training driver (runner) writes cells through :class:`ResultStore`; the reports read them
back through the same class, so the layout and the labels are defined here once.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from .safeio import atomic_write_text

logger = logging.getLogger("mmsa_alignmamba")

COMPLETE = "complete"

#: MMSA's metrics where a smaller value is better (every other one: larger is better)
LOWER_IS_BETTER = frozenset({"MAE", "Loss"})


def lower_is_better(metric: str) -> bool:
    """Whether a smaller ``metric`` is better: the one rule for early stopping, tuning and reports."""
    return metric in LOWER_IS_BETTER


@dataclass(frozen=True)
class Cell:
    """One train/test run. `variant` names an AlignMamba ablation ('' for the model as configured)."""
    model: str
    dataset: str
    data: str          # 'real' or 'synthetic-<size>': results on different data never mix
    seed: int
    protocol: str = COMPLETE
    rate: float = 0.0
    variant: str = ""

    @property
    def slug(self) -> str:
        """A file-name-safe identity: model[+variant]-dataset-data-protocol[rate]-seedS."""
        model = f"{self.model}+{self.variant}" if self.variant else self.model
        rate = "" if self.protocol == COMPLETE else f"{self.rate:.2f}"
        return f"{model}-{self.dataset}-{self.data}-{self.protocol}{rate}-seed{self.seed}"

    def path(self, res_dir: Path) -> Path:
        return Path(res_dir) / "cells" / self.dataset / self.data / f"{self.slug}.json"


BUILTIN_PLANS = ("ot", "soft_ot", "none")   # shown in this order; a third party's plans follow by name


def plan_kinds(metric_names) -> list[str]:
    """The plans measured in metrics named ``Plan_<plan>_<modality>`` (a summary's ``…_std``
    columns skipped), the built-in ones first."""
    found = {name.split("_", 1)[1].rsplit("_", 1)[0] for name in metric_names
             if name.startswith("Plan_") and not name.endswith("_std")}
    return [k for k in BUILTIN_PLANS if k in found] + sorted(found - set(BUILTIN_PLANS))


# How log lines name MMSA's metrics: short enough that a line of them fits a terminal.
_SHORT = {"Has0_acc_2": "Has0 Acc-2", "Has0_F1_score": "F1", "Non0_acc_2": "Non0 Acc-2", "Non0_F1_score": "F1",
          "Mult_acc_2": "Acc-2", "Mult_acc_3": "Acc-3", "Mult_acc_5": "Acc-5", "Mult_acc_7": "Acc-7",
          "F1_score": "F1"}


def metrics_line(results: dict) -> str:
    """MMSA's metrics in one short line: accuracies and F1 in percent, the rest as they are
    ('Has0 Acc-2 63.47 F1 63.48 | Non0 Acc-2 … | MAE 1.0772 | Corr 0.3669'); plan accuracies,
    losses and the learning rate are left to the caller."""
    parts = []
    for key, value in results.items():
        if not isinstance(value, (int, float)) or key.startswith("Plan") or key in ("Loss", "TaskLoss", "AlignLoss",
                                                                                   "PlanLoss", "LR"):
            continue
        if key in _SHORT:
            text = f"{_SHORT[key]} {100 * value:.2f}"
            if _SHORT[key] == "F1" and parts:   # an F1 goes with the accuracy before it
                parts[-1] += " " + text
                continue
            parts.append(text)
        else:
            parts.append(f"{key} {value:.4f}")
    return " | ".join(parts)


def model_label(model: str, variant: str = "") -> str:
    """How tables name a model: 'alignmamba', or 'alignmamba[wo_local_ot]' for an ablation variant."""
    return f"{model}[{variant}]" if variant else model


class ResultStore:
    """Finished cells as JSON files under `<res_dir>/cells/`.

    A record remembers the fingerprint of the settings it ran with; asked with other settings
    (another config, --epochs, data file …) it counts as not finished, so it is run again rather
    than silently reused."""

    def __init__(self, res_dir, fingerprint: str | None = None):
        self.res_dir = Path(res_dir)
        self.fingerprint = fingerprint

    def _read(self, path: Path, what: str) -> dict | None:
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        if self.fingerprint is not None and record.get("settings") != self.fingerprint:
            logger.warning("%s %s was made with other settings; running it again", what, path.name)
            return None
        return record

    def load(self, cell: Cell) -> dict | None:
        record = self._read(cell.path(self.res_dir), "result")
        return None if record is None else record["metrics"]

    def save(self, cell: Cell, metrics: dict, extra: dict) -> None:
        record = {"cell": asdict(cell), "metrics": metrics, "synthetic": cell.data != "real",
                  "settings": self.fingerprint, **extra}
        atomic_write_text(cell.path(self.res_dir), json.dumps(record, indent=1, sort_keys=True))
        self.clear_failure(cell)

    def training_record(self, cell: Cell) -> dict | None:
        return self._read(cell.path(self.res_dir).with_suffix(".trained"), "training")

    def save_training_record(self, cell: Cell, record: dict) -> None:
        atomic_write_text(cell.path(self.res_dir).with_suffix(".trained"),
                          json.dumps({**record, "settings": self.fingerprint}))

    def records(self) -> list[dict]:
        root = self.res_dir / "cells"
        return [json.loads(p.read_text()) for p in sorted(root.rglob("*.json"))] if root.is_dir() else []

    def _failure_path(self, cell: Cell) -> Path:
        return self.res_dir / "failed" / cell.dataset / cell.data / f"{cell.slug}.json"

    def save_failure(self, cell: Cell, error: str, cause: str) -> None:
        """Record that ``cell`` did not finish and why (the summary lists it until it does)."""
        record = {"cell": asdict(cell), "error": error, "likely_cause": cause, "settings": self.fingerprint}
        atomic_write_text(self._failure_path(cell), json.dumps(record, indent=1, sort_keys=True))

    def clear_failure(self, cell: Cell) -> None:
        self._failure_path(cell).unlink(missing_ok=True)

    def failures(self) -> list[dict]:
        """Failure records of cells that have not finished since."""
        root = self.res_dir / "failed"
        records = [json.loads(p.read_text()) for p in sorted(root.rglob("*.json"))] if root.is_dir() else []
        return [r for r in records if not Cell(**r["cell"]).path(self.res_dir).is_file()]

    def save_oracle(self, dataset: str, data: str, ladder: dict) -> None:
        """Keep the oracle ladder of synthetic data beside the results made on it."""
        record = {"dataset": dataset, "data": data, "synthetic": data != "real", "ladder": ladder}
        atomic_write_text(self.res_dir / "oracles" / f"{dataset}-{data}.json", json.dumps(record, indent=1, sort_keys=True))

    def oracles(self) -> list[dict]:
        root = self.res_dir / "oracles"
        return [json.loads(p.read_text()) for p in sorted(root.glob("*.json"))] if root.is_dir() else []
