"""`mmsa` (no sub-command): MMSA's `python -m MMSA` flags for every registered model.

    mmsa -m alignmamba -d mosi --synthetic -s 1111          train + test, results under ~/MMSA/
    mmsa -m mult -d mosi --missing-protocol sample --missing-rates 0.1 0.4 0.7
"""
from __future__ import annotations

import argparse
import logging

from .. import host
from .commands import COMMANDS
from .options import ArgumentParser, add_data_options, add_run_options, check_options, setup_logging, add_log_file
from .sweep import build_cells, make_output_dirs, prepare_data, run_sweep, settings_from
from .tune import tune_on_ray

__all__ = ["run_parser", "main"]

logger = logging.getLogger("mmsa_alignmamba")


def run_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="mmsa", description="Train and test MMSA models (built-in and plugins) on CMU-MOSI/MOSEI/SIMS. "
        f"Other commands: {', '.join(COMMANDS.names())} (mmsa <command> -h).")
    p.add_argument("-m", "--model", type=str.lower, default="alignmamba", help="model name (see `mmsa models`)")
    p.add_argument("-t", "--tune", action="store_true", help="random hyper-parameter search (MMSA's tune mode)")
    p.add_argument("-tt", "--tune-times", type=int, default=50, help="number of tuning trials")
    add_data_options(p)
    add_run_options(p)
    return p


# ---------------------------------------------------------------------------------------


def main(argv) -> int:
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
    from ..runner import check_cells
    check_cells(cells, settings)
    make_output_dirs(settings)
    add_log_file(settings.log_dir, f"{model}-{args.dataset}")
    logger.info("%s on %s (%s data; text padding: %s): %d run(s)", model, args.dataset, choice.data,
                choice.text_padding, len(cells))
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
    return tune_on_ray(model, args.dataset, settings, trials=args.tune_times, max_epochs=args.epochs or 20,
                        scheduler="asha", cpus_per_run=args.cpus_per_run or 1, ray_address=args.ray_address)
