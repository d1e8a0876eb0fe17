"""`mmsa leaderboard`: every registered model (or a list) on one dataset, with the same seeds,
missing-modality protocol and epoch cap, in one table; optionally beside MMSA's published rows.

AlignMamba's ablation variants enter as ``alignmamba+VARIANT`` (the default list has
``alignmamba+paper``, AlignMamba as published, beside ``alignmamba``, this package's defaults).
The models that MMSA runs on word-aligned data (its config's ``need_data_aligned``) train on the
aligned file, the others on the unaligned one, as MMSA does; a model MMSA has no config for on the
dataset (MCTN off MOSI, the multi-task models off SIMS) is left out with a log line saying so.
"""
from __future__ import annotations

import logging

from .. import host
from ..errors import InputError
from .options import ArgumentParser, add_data_options, add_log_file, add_run_options, check_options, setup_logging
from .sweep import build_cells, make_output_dirs, prepare_data, run_batches, settings_from

__all__ = ["main", "leaderboard_models"]

logger = logging.getLogger("mmsa_alignmamba")

DEFAULT_VARIANTS = ("paper",)   # AlignMamba's variants that "all" adds beside AlignMamba itself


def _split(name: str) -> tuple[str, str]:
    """'alignmamba+paper' -> ('alignmamba', 'paper'); 'tfn' -> ('tfn', '')."""
    model, _, variant = name.partition("+")
    return model, variant


def leaderboard_models(names: list[str], dataset: str) -> list[tuple[str, str]]:
    """The (model, variant) pairs of ``--models``: 'all' is every registered model that has a config
    for ``dataset`` plus alignmamba's DEFAULT_VARIANTS; a named model without one is an error."""
    from ..model import ABLATIONS
    if names == ["all"]:
        chosen = [(m, "") for m in host.registered_models()] + [("alignmamba", v) for v in DEFAULT_VARIANTS]
    elif "all" in names:
        raise InputError("--models all stands alone; or give model names (see `mmsa models`)")
    else:
        chosen = [_split(n) for n in dict.fromkeys(names)]
    kept = []
    for model, variant in chosen:
        host.check_model_name(model)
        if variant and (model != "alignmamba" or variant not in ABLATIONS):
            raise InputError(f"unknown variant {model}+{variant}: only alignmamba has variants "
                             f"({', '.join(v for v in ABLATIONS if v != 'alignmamba')})")
        try:
            host.load_config(model, dataset, None)
        except host.NoDatasetConfig:
            if names != ["all"]:
                raise
            logger.info("left out of the leaderboard: %s (MMSA has no %s config for it)", model, dataset)
            continue
        kept.append((model, variant))
    return kept


def main(argv) -> int:
    p = ArgumentParser(prog="mmsa leaderboard",
                       description="Train and test every registered model (or --models) on one dataset with the same "
                                   "seeds, missing-modality protocol and epoch cap, and write one summary. "
                                   "--reference mmsa adds MMSA's own published results (real data, its default "
                                   "configs) in their own section, marked 'reported by MMSA'.")
    p.add_argument("--models", nargs="+", type=str.lower, default=["all"],
                   help="all (default: every registered model, plus alignmamba+paper, AlignMamba as published) or "
                        "names; alignmamba+VARIANT for an ablation variant of `mmsa ablate`")
    p.add_argument("--reference", choices=("mmsa",),
                   help="mmsa: add MMSA's published rows (its results/result-stat.md, v_2.2.1), never mixed with "
                        "the measured ones")
    add_data_options(p)
    add_run_options(p)
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    check_options(args)
    models = leaderboard_models(args.models, args.dataset)
    if not models:
        raise InputError(f"no model to run on {args.dataset}")
    batches, choices = {}, {}
    for model, variant in models:
        config = host.load_config(model, args.dataset, args.config or None)
        need = (bool(config.get("need_data_aligned")) and args.dataset != "sims", bool(config.get("use_bert")))
        if need not in choices:          # the data is checked once per kind (aligned or not, BERT ids or not)
            choices[need] = prepare_data(args, model)
        choice = choices[need]
        key = (choice.path, choice.data, choice.aligned)
        cells, settings = batches.get(key, ([], settings_from(args, choice)))
        cells += build_cells(model, args.dataset, choice.data, args.seeds, args.missing_protocol, args.missing_rates,
                             variants=[variant])
        batches[key] = (cells, settings)
    from ..runner import check_cells
    for cells, settings in batches.values():
        check_cells(cells, settings)
    first = next(iter(batches.values()))[1]
    make_output_dirs(first)
    add_log_file(first.log_dir, f"leaderboard-{args.dataset}")
    logger.info("leaderboard on %s: %s", args.dataset,
                ", ".join(m + (f"+{v}" if v else "") for m, v in models))
    return run_batches(list(batches.values()), args, reference=args.reference)
