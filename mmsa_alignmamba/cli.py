"""The `mmsa` command: MMSA's `python -m MMSA` flags for every registered model, plus our own.

    mmsa -m alignmamba -d mosi --synthetic -s 1111          train + test, results under ~/MMSA/
    mmsa -m mult -d mosi --missing-protocol sample --missing-rates 0.1 0.4 0.7
    mmsa models | make-synthetic | ablate | report | bench   (see `mmsa <command> -h`)

Every failure caused by the user's input (unknown model, missing data file, bad option) prints
one line `mmsa: error: …` and exits with status 2.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from . import host
from .errors import InputError, check_at_least
from .settings import RunSettings, output_root, resolve_output_dirs

logger = logging.getLogger("mmsa_alignmamba")

SUBCOMMANDS = ("models", "components", "make-synthetic", "ablate", "tune", "report", "predict", "export", "bench")
SYNTHETIC_SIZES = ("small", "full")
from .synthetic import TASKS as _TASKS
SYNTHETIC_TASKS = tuple(_TASKS)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, except that a bad option prints the one-line `mmsa: error: ...` (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"mmsa: error: {message} (see `{self.prog} -h`)\n")


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"missing rate {text} is outside [0, 1)")
    return value


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""


def _add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("-d", "--dataset", type=str.lower, default="mosi", choices=host.DATASETS, help="dataset (default mosi)")
    g.add_argument("--data-dir", default=os.environ.get("MMSA_DATA_DIR"),
                   help="root holding MOSI/Processed/unaligned_50.pkl etc. (env MMSA_DATA_DIR; default: MMSA's dataset_root_dir)")
    g.add_argument("--feature-path", help="one MMSA-format pickle with all modalities (overrides --data-dir)")
    g.add_argument("-Ft", "--feature-T", default="", help="custom text feature pickle")
    g.add_argument("-Fa", "--feature-A", default="", help="custom audio feature pickle")
    g.add_argument("-Fv", "--feature-V", default="", help="custom vision feature pickle")
    g.add_argument("--aligned", action="store_true", help="use the word-aligned features (MOSI/MOSEI only)")
    g.add_argument("--synthetic", action="store_true",
                   help="generate, cache and use an MMSA-format SYNTHETIC copy of the dataset (no real data needed)")
    g.add_argument("--synthetic-size", default="small", choices=SYNTHETIC_SIZES,
                   help="small (default: about 2 minutes per AlignMamba run on 2 idle CPU cores) or full (the real dataset's sizes, about 7 minutes)")
    g.add_argument("--synthetic-task", default="pooled", choices=SYNTHETIC_TASKS,
                   help="pooled (default): the label rests on utterance-level cues; wordlevel: it rests on which "
                        "audio/vision frames co-occur with which words, and frames carry a weak signature of their word "
                        "(keeps the true frame-to-word map, so plan accuracy is measured)")
    g.add_argument("--fix-nonfinite", action="store_true",
                   help="set NaN/inf feature values to 0 (in a cleaned copy) instead of refusing the data")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", default="", help="MMSA-format config JSON (default: MMSA's + the plugins')")
    p.add_argument("-s", "--seeds", action="append", type=int, default=[], help="seed; repeat for several (default 1111..1115)")
    p.add_argument("-n", "--num-workers", type=int, default=0, help="DataLoader workers (default 0)")
    p.add_argument("-v", "--verbose", type=int, default=1, choices=(0, 1, 2), help="0 errors, 1 info, 2 debug")
    p.add_argument("-g", "--gpu-ids", action="append", default=[], help="GPU id (implies --device cuda)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available and -g given, else cpu")
    p.add_argument("--model-save-dir", default="", help='default "~/MMSA/saved_models"')
    p.add_argument("--res-save-dir", default="", help='default "~/MMSA/results"')
    p.add_argument("--log-dir", default="", help='default "~/MMSA/logs"')
    p.add_argument("--epochs", type=int, help="at most this many training epochs (any model)")
    p.add_argument("--early-stop", type=int, help="epochs without validation improvement before stopping")
    p.add_argument("--pretrained", help="local BERT folder for BERT-based models (no hub downloads here)")
    x = p.add_argument_group("where trainings run")
    x.add_argument("--executor", default="local", choices=("local", "ray"),
                   help="local (default): one after another in this process; ray: each training a task on a Ray "
                        "cluster (pip install -e \".[ray]\")")
    x.add_argument("--ray-address", help="Ray cluster to use (default: env RAY_ADDRESS, else a Ray started for this run)")
    x.add_argument("--cpus-per-run", type=int, help="CPU threads per training (Ray: its num_cpus; default 1 on Ray, "
                                                    "torch's default locally)")
    x.add_argument("--gpus-per-run", type=float, default=0, help="GPUs per training on Ray (default 0)")
    m = p.add_argument_group("missing modalities")
    from . import components
    protocols = components.MISSING_PROTOCOLS.entries()
    meanings = "; ".join(f"{name}: {_first_line(c.obj.__doc__).split(': ', 1)[-1].rstrip('.')}"
                         for name, c in protocols.items())
    m.add_argument("--missing-protocol", choices=list(protocols),
                   help=f"run a missing-rate sweep with this protocol ({meanings})")
    m.add_argument("--missing-rates", nargs="+", type=_rate, default=None,
                   help="missing rates in [0, 1); 0 = complete data (default 0.1 0.2 … 0.7 with --missing-protocol)")
    m.add_argument("--train-missing", action="store_true", help="train with the same protocol too (as IMDer does)")


def run_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="mmsa", description="Train and test MMSA models (built-in and plugins) on CMU-MOSI/MOSEI/SIMS. "
        f"Other commands: {', '.join(SUBCOMMANDS)} (mmsa <command> -h).")
    p.add_argument("-m", "--model", type=str.lower, default="alignmamba", help="model name (see `mmsa models`)")
    p.add_argument("-t", "--tune", action="store_true", help="random hyper-parameter search (MMSA's tune mode)")
    p.add_argument("-tt", "--tune-times", type=int, default=50, help="number of tuning trials")
    _add_data_options(p)
    _add_run_options(p)
    return p


# ---------------------------------------------------------------------------------------
def setup_logging(verbose: int) -> None:
    """Console logging for MMSA's logger and ours (one handler each, however often called)."""
    handler = logging.StreamHandler()
    handler.setLevel({0: logging.ERROR, 1: logging.INFO, 2: logging.DEBUG}[verbose])
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", "%H:%M:%S"))
    for lg in (logging.getLogger("MMSA"), logger):
        for h in list(lg.handlers):
            lg.removeHandler(h)
            h.close()
        lg.setLevel(logging.DEBUG)
        lg.propagate = False
        lg.addHandler(handler)


def add_log_file(log_dir: Path, name: str) -> Path:
    """Also log everything (debug level) to <log_dir>/<name>.log, once the inputs are validated."""
    path = Path(log_dir) / f"{name}.log"
    handler = logging.FileHandler(path)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s [%(levelname)s] %(message)s"))
    for lg in (logging.getLogger("MMSA"), logger):
        lg.addHandler(handler)
    return path


@dataclass(frozen=True)
class DataChoice:
    """The validated dataset of a run."""
    path: str              # the pickle to train on (a cleaned copy with --fix-nonfinite)
    data: str              # the results' Data tag: 'real' or 'synthetic-…'
    aligned: bool
    true_alignment: bool   # it carries the true frame->word maps: plans get measured
    oracle: dict | None    # the synthetic generator's oracle ladder, if it has one


def resolve_data(args, aligned: bool) -> tuple[str, str]:
    """-> (path of the dataset pickle to use, data tag 'real' or 'synthetic-<size>')."""
    if args.synthetic:
        from .synthetic import data_tag, ensure_synthetic, read_metadata
        cache = Path(args.data_dir) if args.data_dir else output_root()
        path = ensure_synthetic(cache, args.dataset, aligned=aligned, size=args.synthetic_size, seed=0,
                                task=args.synthetic_task)
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
    from .synthetic import data_tag, read_metadata
    meta = read_metadata(path) or {}
    if meta.get("synthetic"):  # a generated file passed by path is still synthetic data
        logger.info("%s is SYNTHETIC data (not real data), per its sidecar %s.json", path, path.name)
        return str(path), data_tag(meta)
    return str(path), "real"


def prepare_data(args, model: str):
    """Find and validate the data before anything is written: -> DataChoice."""
    from .validate import validate_dataset, validate_modality_file
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
    from .synthetic import read_metadata
    oracle = (read_metadata(feature_path) or {}).get("oracle") if data != "real" else None
    return DataChoice(str(report.path), data, aligned, report.true_alignment, oracle)


def resolve_device(args) -> str:
    import torch
    device = args.device or ("cuda" if args.gpu_ids and torch.cuda.is_available() else "cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise InputError("--device cuda was asked for, but torch sees no CUDA device")
        if args.gpu_ids:
            device = f"cuda:{int(args.gpu_ids[0])}"
    return device


def check_options(args) -> None:
    """Option checks that need no data, done before anything is read or written: bad values, and
    output directories that could not be created (a file in the way) or written."""
    check_at_least(("--epochs", args.epochs, 1), ("--early-stop", args.early_stop, 1), ("-n", args.num_workers, 0))
    if args.missing_protocol is None and args.missing_rates:
        raise InputError("--missing-rates needs --missing-protocol")
    check_at_least(("--cpus-per-run", args.cpus_per_run, 1), ("--gpus-per-run", args.gpus_per_run, 0))
    if args.executor == "ray":
        from .executors import import_ray
        import_ray("--executor ray")
    elif args.ray_address or args.gpus_per_run:
        raise InputError("--ray-address and --gpus-per-run need --executor ray")
    resolve_device(args)
    for name, d in resolve_output_dirs(args.model_save_dir, args.res_save_dir, args.log_dir).items():
        existing = d
        while not existing.exists() and existing != existing.parent:  # nearest existing ancestor
            existing = existing.parent
        if not existing.is_dir():
            raise InputError(f"cannot create the output directory {d} ({name}): {existing} is not a directory")
        if not os.access(existing, os.W_OK):
            raise InputError(f"output directory {d} ({name}) is not writable")


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
    from .results import COMPLETE, Cell
    seeds = seeds or [1111, 1112, 1113, 1114, 1115]
    settings = [(COMPLETE, 0.0)]
    if protocol is not None:
        rates = rates if rates is not None else [round(0.1 * i, 1) for i in range(1, 8)]
        settings = [(COMPLETE, 0.0) if r == 0 else (protocol, r) for r in rates]
    return [Cell(model, dataset, data, seed, p, r, v) for v in variants for seed in seeds for p, r in settings]


def run_sweep(cells, settings, args=None) -> int:
    """Run the cells on the executor ``args`` name, rebuild the summary, print it. -> exit status
    (1 when some training failed; the others are kept and the summary says which are missing)."""
    from tqdm import tqdm

    from .executors import make_executor
    from .report import write_summary
    from .runner import run_cells
    executor = make_executor(getattr(args, "executor", "local"), getattr(args, "ray_address", None),
                             getattr(args, "cpus_per_run", None), getattr(args, "gpus_per_run", 0))
    bars = []

    def progress(total: int, finished: int):
        # smoothing=0: the ETA is this run's average pace, not the last training's
        bars.append(tqdm(total=total, initial=finished, desc=f"trainings ({len(cells)} cells)", unit="training",
                         smoothing=0, disable=total < 2))
        return bars[-1]

    try:
        results = run_cells(cells, settings, progress=progress, executor=executor)
    except KeyboardInterrupt:  # the finished cells still make a summary; a rerun resumes the rest
        write_summary(settings.res_save_dir)
        logger.info("interrupted: summary of the finished runs written to %s", settings.res_save_dir)
        raise
    finally:
        for bar in bars:
            bar.close()
        executor.close()
    paths = write_summary(settings.res_save_dir)
    print(Path(paths["md"]).read_text())
    for kind, path in paths.items():
        logger.info("wrote %s: %s", kind, path)
    missing = [cell.slug for cell, metrics in results if metrics is None]
    if missing:
        print(f"mmsa: {len(missing)} run(s) did not finish (see the log): {', '.join(missing)}; "
              "run the same command again to retry them", file=sys.stderr)
        return 1
    return 0


def cmd_run(argv) -> int:
    args = run_parser().parse_args(argv)
    model = host.check_model_name(args.model)
    setup_logging(args.verbose)
    check_options(args)
    choice = prepare_data(args, model)
    settings = settings_from(args, choice)
    if args.tune:
        make_output_dirs(settings)
        add_log_file(settings.log_dir, f"{model}-{args.dataset}")
        return cmd_tune(args, model, settings)
    cells = build_cells(model, args.dataset, choice.data, args.seeds, args.missing_protocol, args.missing_rates)
    from .runner import check_cells
    check_cells(cells, settings)
    make_output_dirs(settings)
    add_log_file(settings.log_dir, f"{model}-{args.dataset}")
    logger.info("%s on %s (%s data): %d run(s)", model, args.dataset, choice.data, len(cells))
    return run_sweep(cells, settings, args)


def cmd_tune(args, model: str, settings) -> int:
    """`mmsa -t`: Ray Tune with ASHA when Ray is installed (`mmsa tune`), else MMSA's own
    sequential random search."""
    try:
        import ray  # noqa: F401
    except ImportError:
        logger.info("Ray is not installed: MMSA's own sequential random search (pip install -e \".[ray]\" for "
                    "`mmsa tune` with early stopping)")
        import MMSA
        import torch
        overrides = {"featurePath": settings.feature_path, "device": torch.device(settings.device)}
        MMSA.MMSA_run(model, args.dataset, config_file=args.config, config=overrides, seeds=args.seeds,
                      is_tune=True, tune_times=args.tune_times, feature_T=args.feature_T, feature_A=args.feature_A,
                      feature_V=args.feature_V, num_workers=args.num_workers, verbose_level=args.verbose,
                      model_save_dir=str(settings.model_save_dir), res_save_dir=str(settings.res_save_dir),
                      log_dir=args.log_dir)
        return 0
    return _tune_on_ray(model, args.dataset, settings, trials=args.tune_times, max_epochs=args.epochs or 20,
                        scheduler="asha", cpus_per_run=args.cpus_per_run or 1, ray_address=args.ray_address)


def _tune_on_ray(model, dataset, settings, *, trials, max_epochs, scheduler, cpus_per_run, ray_address,
                 seed: int = 0, grace_period: int | None = None, reduction_factor: int | None = None) -> int:
    from .tuning import REDUCTION_FACTOR, run_tune
    out = Path(settings.res_save_dir) / "tune" / f"{model}-{dataset}-{scheduler}"
    logger.info("tuning %s on %s with Ray Tune: %d trials of at most %d epochs, %s", model, dataset, trials,
                max_epochs, "ASHA early stopping" if scheduler == "asha" else "no early stopping")
    result = run_tune(model, dataset, settings.feature_path, out, trials=trials, max_epochs=max_epochs,
                      scheduler=scheduler, cpus_per_run=cpus_per_run, ray_address=ray_address,
                      config_file=settings.config_file, seed=seed, grace_period=grace_period,
                      reduction_factor=reduction_factor or REDUCTION_FACTOR)
    print(Path(result["paths"]["trials_md"]).read_text())
    print(f"best validation {result['key']}: {result['best_valid']:.4f} ({result['epochs']} epochs over "
          f"{result['trials']} trials)")
    for kind, path in result["paths"].items():
        print(f"wrote {kind}: {path}")
    print(f"use it: mmsa -m {model} -d {dataset} -c {result['paths']['best']}")
    return 0


def cmd_tune_command(argv) -> int:
    from .tuning import REDUCTION_FACTOR
    p = ArgumentParser(prog="mmsa tune", description="Hyper-parameter search on Ray Tune over the model config's "
                       "debugParams (the space MMSA's -t draws from), with ASHA early stopping on the validation "
                       "KeyEval and checkpointed trials. Writes the best trial's values as an MMSA-format config for "
                       "`mmsa -c`, and a table of every trial, under <res-save-dir>/tune/.")
    p.add_argument("-m", "--model", type=str.lower, default="alignmamba", help="model name (default alignmamba)")
    p.add_argument("--trials", type=int, default=16, help="configurations to try (default 16)")
    p.add_argument("--max-epochs", type=int, default=20, help="epochs per trial at most (default 20)")
    p.add_argument("--scheduler", default="asha", choices=("asha", "none"),
                   help="asha (default): stop poor trials early; none: every trial runs its epochs (random search)")
    p.add_argument("--grace-period", type=int,
                   help="epochs every trial runs before ASHA may stop it (default: max-epochs / reduction-factor², "
                        "at least 1, so that there are three rungs)")
    p.add_argument("--reduction-factor", type=int,
                   help=f"ASHA keeps 1 in this many trials at each rung (default {REDUCTION_FACTOR})")
    p.add_argument("--search-seed", type=int, default=0, help="seed of the random draws of configurations (default 0)")
    _add_data_options(p)
    _add_run_options(p)
    args = p.parse_args(argv)
    model = host.check_model_name(args.model)
    setup_logging(args.verbose)
    check_options(args)
    check_at_least(("--trials", args.trials, 1), ("--max-epochs", args.max_epochs, 1),
                   ("--grace-period", args.grace_period, 1), ("--reduction-factor", args.reduction_factor, 2))
    from .executors import import_ray
    import_ray("mmsa tune")
    choice = prepare_data(args, model)
    settings = settings_from(args, choice)
    make_output_dirs(settings)
    add_log_file(settings.log_dir, f"tune-{model}-{args.dataset}")
    return _tune_on_ray(model, args.dataset, settings, trials=args.trials, max_epochs=args.max_epochs,
                        scheduler=args.scheduler, cpus_per_run=args.cpus_per_run or 1, ray_address=args.ray_address,
                        seed=args.search_seed, grace_period=args.grace_period,
                        reduction_factor=args.reduction_factor)


def cmd_models(argv) -> int:
    ArgumentParser(prog="mmsa models", description="List every registered model.").parse_args(argv)
    for name, source in host.registered_models().items():
        print(f"{name:12s} {source}")
    return 0


def cmd_components(argv) -> int:
    from . import components
    ArgumentParser(prog="mmsa components",
                   description="List every registered component (local and global alignments, missing-modality "
                               "protocols) with the distribution that provides it.").parse_args(argv)
    for kind, registry in components.KINDS.items():
        for name, component in registry.entries().items():
            print(f"{kind:17s} {name:12s} {component.distribution}")
    return 0


def cmd_make_synthetic(argv) -> int:
    from .synthetic import PRESETS, resolve_sizes, write_synthetic
    p = ArgumentParser(prog="mmsa make-synthetic",
                                description="Write an MMSA-format SYNTHETIC dataset pickle (not real data).")
    p.add_argument("--like", required=True, type=str.lower, choices=sorted(PRESETS))
    p.add_argument("--aligned", action="store_true")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="full", choices=SYNTHETIC_SIZES)
    p.add_argument("--task", default="pooled", choices=SYNTHETIC_TASKS,
                   help="signal model: pooled (utterance-level cues) or wordlevel (word-level co-occurrence)")
    for split in ("train", "valid", "test"):
        p.add_argument(f"--n-{split}", type=int, help=f"number of {split} samples (overrides --size)")
    args = p.parse_args(argv)
    counts = {s: getattr(args, f"n_{s}") for s in ("train", "valid", "test") if getattr(args, f"n_{s}") is not None}
    size = {**resolve_sizes(args.like, args.size), **counts} if counts else args.size
    path = write_synthetic(args.out, like=args.like, aligned=args.aligned, size=size, seed=args.seed, task=args.task)
    print(f"wrote SYNTHETIC {args.like.upper()}-format data ({args.task} family): {path}")
    return 0


def cmd_ablate(argv) -> int:
    from .model import ABLATIONS
    from .model import ABLATION_MEANINGS
    p = ArgumentParser(prog="mmsa ablate", formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="AlignMamba and every ablation variant (paper Table 3, plus ours), same seeds, "
                                   "one table.\n\nvariants:\n" + "\n".join(
                                       f"  {name:17s} {meaning}" for name, meaning in ABLATION_MEANINGS.items()))
    _add_data_options(p)
    _add_run_options(p)
    p.add_argument("--variants", nargs="+", choices=list(ABLATIONS), default=list(ABLATIONS))
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    check_options(args)
    choice = prepare_data(args, "alignmamba")
    settings = settings_from(args, choice)
    cells = build_cells("alignmamba", args.dataset, choice.data, args.seeds, args.missing_protocol, args.missing_rates,
                        variants=[v if v != "alignmamba" else "" for v in args.variants])
    from .runner import check_cells
    check_cells(cells, settings)
    make_output_dirs(settings)
    add_log_file(settings.log_dir, f"ablate-{args.dataset}")
    return run_sweep(cells, settings, args)


def cmd_report(argv) -> int:
    from .publish import write_report
    from .report import METRIC_NAMES
    p = ArgumentParser(prog="mmsa report", description="Rebuild the summary of every finished run in a results "
                       "directory and its publication forms. Writes there: summary.csv (mean ± std over seeds per "
                       "model and setting, oracle rows of synthetic data, plan accuracies where the true alignment is "
                       "known, and for --metric the best other model and Welch's t-test p-value), summary.md (the same, "
                       "plus the side-by-side table of --metric per missing rate), summary-robustness.csv (average and "
                       "Δ over missing rates, when there are any), figures/*.pdf|svg|png (--metric against the missing "
                       "rate actually applied), and summary.tex (--format latex: booktabs, best in bold) and "
                       "summary.html (--format html: one self-contained page).")
    p.add_argument("--results-dir", default="", help='default "~/MMSA/results"')
    p.add_argument("--metric", default="Has0_acc_2", choices=list(METRIC_NAMES),
                   help="the metric of the side-by-side tables, the significance tests and the figures (default "
                        "Has0_acc_2; an accuracy brings its F1 along)")
    p.add_argument("--format", nargs="+", default=["md", "html"], choices=("md", "latex", "html"),
                   help="forms to write besides summary.csv (default: md html)")
    p.add_argument("--paper-rows", action="store_true",
                   help="add the paper's published AlignMamba numbers (MOSI/MOSEI) in their own section, marked "
                        "'reported in the paper'")
    args = p.parse_args(argv)
    res_dir = resolve_output_dirs(res_save_dir=args.results_dir)["res_save_dir"]
    if not (res_dir / "cells").is_dir():
        raise InputError(f"no finished runs under {res_dir} (expected {res_dir / 'cells'})")
    paths = write_report(res_dir, metric=args.metric, formats=args.format, paper_rows=args.paper_rows)
    notes = paths.pop("notes")
    print(Path(paths["md"]).read_text())
    for kind, path in paths.items():
        print(f"wrote {kind}: {path}")
    for note in notes:
        print(f"note: {note}")
    return 0


def cmd_predict(argv) -> int:
    from .datasets import MODALITIES
    from .predict import SPLIT_CHOICES, load_model, predict_file
    from .results import metrics_line
    from .safeio import atomic_write_text
    p = ArgumentParser(prog="mmsa predict", description="Predict with a trained model (any registered model) on an "
                       "MMSA-format pickle whose labels are optional. Writes one CSV row per sample: id, split, score, "
                       "the class under MMSA's thresholds for the dataset, and the label where the data has one; "
                       "with labels, MMSA's metrics are printed too.")
    p.add_argument("--checkpoint", required=True, help="a .pth written by `mmsa` (or, with -m and -d, a bare state dict)")
    p.add_argument("--feature-path", required=True, help="MMSA-format pickle with the split(s) to predict")
    p.add_argument("--split", default="test", choices=SPLIT_CHOICES, help="split to predict (default test; all = every split)")
    p.add_argument("--absent", nargs="+", default=[], choices=MODALITIES,
                   help="treat these modalities as missing (the missing-modality protocols' modality mask)")
    p.add_argument("--out", default="predictions.csv", help="CSV to write (default predictions.csv)")
    p.add_argument("-m", "--model", type=str.lower, help="the model the checkpoint must be of (needed for a bare state dict)")
    p.add_argument("-d", "--dataset", type=str.lower, choices=host.DATASETS,
                   help="dataset whose thresholds classify the scores (default: the checkpoint's)")
    p.add_argument("-b", "--batch-size", type=int, help="default: the model's training batch size")
    p.add_argument("-v", "--verbose", type=int, default=1, choices=(0, 1, 2), help="0 errors, 1 info, 2 debug")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    check_at_least(("--batch-size", args.batch_size, 1))
    out = Path(args.out)
    if out.is_dir():
        raise InputError(f"--out {out} is a directory; give a file name")
    feature_path = Path(args.feature_path)
    if not feature_path.is_file():
        raise InputError(f"data file not found: {feature_path}")
    from . import checkpoints
    checkpoint = checkpoints.load(args.checkpoint)
    feature_dims = None
    if checkpoint.meta is None and args.model and args.dataset:   # a bare state dict: widths from the data
        from .predict import data_feature_dims
        feature_dims = data_feature_dims(feature_path, args.model, args.dataset)
    loaded = load_model(checkpoint, model=args.model, dataset=args.dataset, feature_dims=feature_dims)
    text, metrics = predict_file(loaded, feature_path, [args.split], args.absent, args.batch_size)
    atomic_write_text(out, text)
    rows = text.count("\n") - 1
    for split, values in metrics.items():
        if values is not None:
            print(f"{split}: {metrics_line(values)}")
    print(f"wrote {rows} prediction(s) of {loaded.info.model} to {out}")
    return 0


def cmd_export(argv) -> int:
    p = ArgumentParser(prog="mmsa export", description="Export a trained AlignMamba to ONNX: inputs text, audio, vision "
                       "(batch, steps, width) and audio_lengths, vision_lengths (batch,); output score (batch,). Batch "
                       "and sequence lengths are dynamic; all modalities are present. Checked in ONNX Runtime against "
                       "PyTorch on random inputs before it is kept.")
    p.add_argument("--checkpoint", required=True, help="an AlignMamba .pth written by `mmsa`")
    p.add_argument("--format", default="onnx", choices=("onnx",), help="export format (default onnx)")
    p.add_argument("--out", help="file to write (default: the checkpoint's name with .onnx)")
    args = p.parse_args(argv)
    try:
        import onnx  # noqa: F401  (torch's exporter writes through it)
    except ImportError:
        raise InputError('ONNX export needs the onnx extra: pip install -e ".[onnx]"') from None
    from .export import export_onnx
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".onnx")
    if out.is_dir():
        raise InputError(f"--out {out} is a directory; give a file name")
    path, gap = export_onnx(args.checkpoint, out)
    if gap is None:
        print(f"wrote {path} (onnxruntime is not installed: not checked)")
    else:
        print(f"wrote {path}; ONNX Runtime agrees with PyTorch within {gap:.1e} (relative, random inputs, 3 shapes)")
    return 0


def cmd_bench(argv) -> int:
    from .bench import main as bench_main
    return bench_main(argv)


COMMANDS = {"models": cmd_models, "components": cmd_components, "make-synthetic": cmd_make_synthetic,
            "ablate": cmd_ablate, "report": cmd_report, "predict": cmd_predict, "export": cmd_export, "tune": cmd_tune_command,
            "bench": cmd_bench}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = COMMANDS.get(argv[0], cmd_run) if argv else cmd_run
    if command is not cmd_run:
        argv = argv[1:]
    try:
        return command(argv)
    except (InputError, host.UnknownModelError) as e:
        print(f"mmsa: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmsa: interrupted; finished runs are kept and will be skipped when you run the same command again",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
