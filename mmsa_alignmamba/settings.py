"""What a run runs with and where it writes: the run settings, MMSA's output-folder policy and
checkpoint naming, in one place for our runner and for the MMSA_run fixes (host). A leaf module."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


def output_root() -> Path:
    """~/MMSA (of the HOME at call time): MMSA's documented default for every output."""
    return Path.home() / "MMSA"


def resolve_output_dirs(model_save_dir=None, res_save_dir=None, log_dir=None) -> dict[str, Path]:
    """'' or None means MMSA's documented default under ~/MMSA/, never the working directory."""
    chosen = {"model_save_dir": model_save_dir, "res_save_dir": res_save_dir, "log_dir": log_dir}
    defaults = {"model_save_dir": "saved_models", "res_save_dir": "results", "log_dir": "logs"}
    return {k: Path(v) if v not in (None, "") else output_root() / defaults[k] for k, v in chosen.items()}


def checkpoint_path(model_save_dir, model_name: str, dataset_name: str, seed: int) -> Path:
    """MMSA_run's checkpoints: one per (model, dataset, seed) instead of one file every seed overwrites."""
    return Path(model_save_dir) / f"{model_name}-{dataset_name}-seed{seed}.pth"


@dataclass
class RunSettings:
    """Everything about a run that is not the cell itself."""
    config_file: str | None = None
    feature_path: str | None = None      # the dataset pickle (real, custom or synthetic)
    feature_T: str = ""
    feature_A: str = ""
    feature_V: str = ""
    aligned: bool = False
    device: str = "cpu"
    num_workers: int = 0
    epochs: int | None = None
    early_stop: int | None = None
    pretrained: str | None = None
    train_missing: bool = False
    true_alignment: bool = False         # the data carries true frame->word maps: measure plan accuracy
    oracle: dict | None = None           # the synthetic generator's oracle ladder for this data, if any
    overrides: dict = field(default_factory=dict)
    model_save_dir: Path = field(default_factory=lambda: resolve_output_dirs()["model_save_dir"])
    res_save_dir: Path = field(default_factory=lambda: resolve_output_dirs()["res_save_dir"])
    log_dir: Path = field(default_factory=lambda: resolve_output_dirs()["log_dir"])

    def checkpoint_path(self, cell) -> Path:
        """Our runner's checkpoints: one per cell, named by the cell's slug."""
        return Path(self.model_save_dir) / f"{cell.slug}.pth"
