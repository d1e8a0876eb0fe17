"""What every `mmsa` command shares: the one-line error parser, the data, run and missing-modality
options, logging, the device, and the option checks done before anything is read or written."""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from .. import components, host
from ..errors import InputError, check_at_least
from ..settings import resolve_output_dirs
from ..synthetic import FAMILIES, PADDINGS

__all__ = ["ArgumentParser", "SYNTHETIC_PADDINGS", "SYNTHETIC_SIZES", "SYNTHETIC_TASKS", "add_data_options", "add_run_options",
           "setup_logging", "add_log_file", "resolve_device", "check_options", "first_line"]

logger = logging.getLogger("mmsa_alignmamba")

SYNTHETIC_SIZES = ("small", "full")
SYNTHETIC_TASKS = FAMILIES.names()
SYNTHETIC_PADDINGS = PADDINGS


class ArgumentParser(argparse.ArgumentParser):
    """argparse, except that a bad option prints the one-line `mmsa: error: ...` (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"mmsa: error: {message} (see `{self.prog} -h`)\n")


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"missing rate {text} is outside [0, 1)")
    return value


def first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""


def add_data_options(p: argparse.ArgumentParser) -> None:
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
                   help="small (default: 600/150/300 samples, about a minute per 8-epoch AlignMamba run on 2 idle CPU "
                        "cores) or full (the real dataset's sizes, about 3 minutes)")
    g.add_argument("--synthetic-task", default="pooled", choices=SYNTHETIC_TASKS,
                   help="pooled (default): the label rests on utterance-level cues; wordlevel: it rests on which "
                        "audio/vision frames co-occur with which words, and frames carry a weak signature of their word "
                        "(keeps the true frame-to-word map, so plan accuracy is measured)")
    g.add_argument("--synthetic-padding", default="bert", choices=SYNTHETIC_PADDINGS,
                   help="how the synthetic text's [PAD] rows are written: bert (default; as BERT's last layer gives "
                        "them, not zero, so only the attention mask in text_bert marks them, as in MMSA's processed "
                        "pickles) or zero (exactly zero, as MMSA-FET's feature files)")
    g.add_argument("--fix-nonfinite", action="store_true",
                   help="set NaN/inf feature values to 0 (in a cleaned copy) instead of refusing the data")


def add_run_options(p: argparse.ArgumentParser) -> None:
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
    protocols = components.MISSING_PROTOCOLS.entries()
    meanings = "; ".join(f"{name}: {first_line(c.obj.__doc__).split(': ', 1)[-1].rstrip('.')}"
                         for name, c in protocols.items())
    m.add_argument("--missing-protocol", choices=list(protocols),
                   help=f"run a missing-rate sweep with this protocol ({meanings})")
    m.add_argument("--missing-rates", nargs="+", type=_rate, default=None,
                   help="missing rates in [0, 1); 0 = complete data (default 0.1 0.2 … 0.7 with --missing-protocol)")
    m.add_argument("--train-missing", action="store_true", help="train with the same protocol too (as IMDer does)")


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
        from ..executors import import_ray
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
