"""`mmsa tune`: hyper-parameter search on Ray Tune with ASHA early stopping (also `mmsa -t`)."""
from __future__ import annotations

import logging
from pathlib import Path

from .. import host
from ..errors import check_at_least
from .options import ArgumentParser, add_data_options, add_log_file, add_run_options, check_options, setup_logging
from .sweep import make_output_dirs, prepare_data, settings_from

__all__ = ["main", "tune_on_ray"]

logger = logging.getLogger("mmsa_alignmamba")


def tune_on_ray(model, dataset, settings, *, trials, max_epochs, scheduler, cpus_per_run, ray_address,
                 seed: int = 0, grace_period: int | None = None, reduction_factor: int | None = None) -> int:
    from ..tuning import REDUCTION_FACTOR, run_tune
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


def main(argv) -> int:
    from ..tuning import REDUCTION_FACTOR
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
    add_data_options(p)
    add_run_options(p)
    args = p.parse_args(argv)
    model = host.check_model_name(args.model)
    setup_logging(args.verbose)
    check_options(args)
    check_at_least(("--trials", args.trials, 1), ("--max-epochs", args.max_epochs, 1),
                   ("--grace-period", args.grace_period, 1), ("--reduction-factor", args.reduction_factor, 2))
    from ..executors import import_ray
    import_ray("mmsa tune")
    choice = prepare_data(args, model)
    settings = settings_from(args, choice)
    make_output_dirs(settings)
    add_log_file(settings.log_dir, f"tune-{model}-{args.dataset}")
    return tune_on_ray(model, args.dataset, settings, trials=args.trials, max_epochs=args.max_epochs,
                        scheduler=args.scheduler, cpus_per_run=args.cpus_per_run or 1, ray_address=args.ray_address,
                        seed=args.search_seed, grace_period=args.grace_period,
                        reduction_factor=args.reduction_factor)
