"""A run's data and settings from its options, its cells, and the sweep that trains and tests them
(shared by `mmsa`, `mmsa ablate` and the commands that run many models)."""
from __future__ import annotations

import hashlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import host, text_padding
from ..errors import InputError
from ..settings import RunSettings, output_root, resolve_output_dirs
from .options import resolve_device

__all__ = ["DataChoice", "resolve_data", "prepare_data", "settings_from", "make_output_dirs", "build_cells",
           "run_sweep", "run_batches"]

logger = logging.getLogger("mmsa_alignmamba")


@dataclass(frozen=True)
class DataChoice:
    """The validated dataset of a run."""
    path: str              # the pickle to train on (a cleaned copy with --fix-nonfinite)
    data: str              # the results' Data tag: 'real' or 'synthetic-…'
    aligned: bool
    true_alignment: bool   # it carries the true frame->word maps: plans get measured
    oracle: dict | None    # the synthetic generator's oracle ladder, if it has one
    text_padding: str      # which text slots the model counts as words (text_padding.CONVENTIONS)


def resolve_data(args, aligned: bool) -> tuple[str, str]:
    """-> (path of the dataset pickle to use, data tag 'real' or 'synthetic-<size>')."""
    if args.synthetic:
        from ..synthetic import data_tag, ensure_synthetic, read_metadata
        cache = Path(args.data_dir) if args.data_dir else output_root()
        path = ensure_synthetic(cache, args.dataset, aligned=aligned, size=args.synthetic_size, seed=0,
                                task=args.synthetic_task, padding=args.synthetic_padding)
        logger.info("using SYNTHETIC %s-format data (not real data): %s", args.dataset.upper(), path)
        return str(path), data_tag(read_metadata(path))
    if args.feature_path:
        path = Path(args.feature_path)
    else:
        relative = host.dataset_relative_path(args.dataset, aligned)
        root = Path(args.data_dir) if args.data_dir else host.mmsa_dataset_root()
        path = root / relative
    if path.is_dir():
        raise InputError(f"{path} is a directory; --feature-path wants one MMSA-format .pkl file "
                         "(a folder of MMSA's datasets goes to --data-dir)")
    if not path.is_file():
        raise InputError(
            f"dataset file not found: {path}. Download MMSA's processed {args.dataset.upper()} features "
            f"(see https://github.com/thuiar/MMSA, 'Datasets') and pass --data-dir ROOT (or set MMSA_DATA_DIR) so that "
            f"ROOT/{host.dataset_relative_path(args.dataset, aligned)} exists, or pass --feature-path FILE, "
            "or add --synthetic to run on generated MMSA-format data")
    from ..synthetic import data_tag, read_metadata
    meta = read_metadata(path) or {}
    if meta.get("synthetic"):  # a generated file passed by path is still synthetic data
        logger.info("%s is SYNTHETIC data (not real data), per its sidecar %s.json", path, path.name)
        return str(path), data_tag(meta)
    return str(path), "real"


def prepare_data(args, model: str):
    """Find and validate the data before anything is written: -> DataChoice."""
    from ..validate import validate_dataset, validate_modality_file
    config = host.load_config(model, args.dataset, args.config or None)
    aligned = args.aligned or (bool(config.get("need_data_aligned")) and args.dataset != "sims")
    if args.aligned and args.dataset == "sims":
        raise InputError("MMSA has no word-aligned features for SIMS; drop --aligned")
    feature_path, data = resolve_data(args, aligned)
    # MOSI and MOSEI both ship Processed/unaligned_50.pkl: the cleaned copy's name carries the source path
    source = hashlib.sha1(str(Path(feature_path).resolve()).encode()).hexdigest()[:8]
    cleaned = output_root() / "cleaned" / f"{Path(feature_path).stem}-{source}-finite.pkl"
    report = validate_dataset(feature_path, args.dataset, use_bert=bool(config.get("use_bert")), aligned=aligned,
                              fix_nonfinite=args.fix_nonfinite, fixed_copy=cleaned)
    for flag, key, path in (("-Ft", "text", args.feature_T), ("-Fa", "audio", args.feature_A),
                            ("-Fv", "vision", args.feature_V)):
        if path:
            validate_modality_file(path, flag, key, report.samples, use_bert=bool(config.get("use_bert")),
                                   aligned=aligned)
    from ..synthetic import read_metadata
    oracle = (read_metadata(feature_path) or {}).get("oracle") if data != "real" else None
    padding = "BERT token ids (use_bert)" if config.get("use_bert") else text_padding.CONVENTIONS[report.text_padding]
    return DataChoice(str(report.path), data, aligned, report.true_alignment, oracle, padding)


def settings_from(args, choice: "DataChoice"):
    dirs = resolve_output_dirs(args.model_save_dir, args.res_save_dir, args.log_dir)
    return RunSettings(
        config_file=args.config or None, feature_path=choice.path, feature_T=args.feature_T,
        feature_A=args.feature_A, feature_V=args.feature_V, aligned=choice.aligned, device=resolve_device(args),
        num_workers=args.num_workers, epochs=args.epochs, early_stop=args.early_stop, pretrained=args.pretrained,
        train_missing=args.train_missing, true_alignment=choice.true_alignment, oracle=choice.oracle, **dirs)


def make_output_dirs(settings) -> None:
    """Create the output folders, once every check has passed (check_options made sure they can be)."""
    for name in ("model_save_dir", "res_save_dir", "log_dir"):
        d = Path(getattr(settings, name))
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create the output directory {d} ({name}): {e.strerror}") from None


def build_cells(model: str, dataset: str, data: str, seeds: list[int], protocol: str | None,
                rates: list[float] | None, variants=("",)) -> list:
    from ..results import COMPLETE, Cell
    seeds = seeds or [1111, 1112, 1113, 1114, 1115]
    settings = [(COMPLETE, 0.0)]
    if protocol is not None:
        rates = rates if rates is not None else [round(0.1 * i, 1) for i in range(1, 8)]
        settings = [(COMPLETE, 0.0) if r == 0 else (protocol, r) for r in rates]
    return [Cell(model, dataset, data, seed, p, r, v) for v in variants for seed in seeds for p, r in settings]


def run_sweep(cells, settings, args=None, reference: str | None = None) -> int:
    """Run the cells on the executor ``args`` name, rebuild the summary, print it. -> exit status
    (1 when some training failed; the others are kept and the summary says which are missing)."""
    return run_batches([(cells, settings)], args, reference)


def run_batches(batches, args=None, reference: str | None = None) -> int:
    """:func:`run_sweep` for several (cells, settings) batches that share the output folders (a
    leaderboard: the models that need word-aligned data train on it, the others on the unaligned
    file), on one executor, then one summary of them all (with ``reference``'s published rows)."""
    from tqdm import tqdm

    from ..executors import make_executor
    from ..report import write_summary
    from ..runner import run_cells
    executor = make_executor(getattr(args, "executor", "local"), getattr(args, "ray_address", None),
                             getattr(args, "cpus_per_run", None), getattr(args, "gpus_per_run", 0))
    res_dir = batches[0][1].res_save_dir
    bars, results = [], []

    def progress(cells):
        def start(total: int, finished: int):
            # smoothing=0: the ETA is this run's average pace, not the last training's
            bars.append(tqdm(total=total, initial=finished, desc=f"trainings ({len(cells)} cells)", unit="training",
                             smoothing=0, disable=total < 2))
            return bars[-1]
        return start

    try:
        for cells, settings in batches:
            results += run_cells(cells, settings, progress=progress(cells), executor=executor)
    except KeyboardInterrupt:  # the finished cells still make a summary; a rerun resumes the rest
        write_summary(res_dir, reference=reference)
        logger.info("interrupted: summary of the finished runs written to %s", res_dir)
        raise
    finally:
        for bar in bars:
            bar.close()
        executor.close()
    paths = write_summary(res_dir, reference=reference)
    print(Path(paths["md"]).read_text())
    for kind, path in paths.items():
        logger.info("wrote %s: %s", kind, path)
    missing = [cell.slug for cell, metrics in results if metrics is None]
    if missing:
        print(f"mmsa: {len(missing)} run(s) did not finish (see the log): {', '.join(missing)}; "
              "run the same command again to retry them", file=sys.stderr)
        return 1
    return 0
