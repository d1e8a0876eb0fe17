"""`mmsa ablate`: AlignMamba and its ablation variants, same seeds, one table."""
from __future__ import annotations

import argparse
import json
import logging

from .. import host
from .options import ArgumentParser, add_data_options, add_log_file, add_run_options, check_options, setup_logging
from .sweep import build_cells, make_output_dirs, prepare_data, run_sweep, settings_from

__all__ = ["main", "distinct_variants"]

logger = logging.getLogger("mmsa_alignmamba")


def distinct_variants(names: list[str], config) -> list[str]:
    """``names`` without the variants that would train the same model as one before them under
    ``config`` (e.g. ``wo_global_mmd`` once the configured global alignment is already none): each
    is one line in the log instead of a full training and a duplicate row."""
    from ..model import ABLATIONS
    kept: dict[str, str] = {}
    for name in names:
        same = json.dumps({**config, **ABLATIONS[name]}, sort_keys=True, default=str)
        if same in kept:
            logger.info("variant %s trains the same model as %s with this config (%s): not trained again", name,
                        kept[same], ", ".join(f"{k}={v!r}" for k, v in ABLATIONS[name].items()) or "no change")
            continue
        kept[same] = name
    return list(kept.values())


def main(argv) -> int:
    from ..model import ABLATIONS
    p = ArgumentParser(prog="mmsa ablate", formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="AlignMamba and every ablation variant (paper Table 3, plus ours), same seeds, "
                                   "one table.\n\nvariants:\n" + "\n".join(
                                       f"  {name:17s} {entry.meta['meaning']}" for name, entry in ABLATIONS.entries().items()))
    add_data_options(p)
    add_run_options(p)
    p.add_argument("--variants", nargs="+", choices=list(ABLATIONS), default=list(ABLATIONS))
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    check_options(args)
    choice = prepare_data(args, "alignmamba")
    settings = settings_from(args, choice)
    variants = distinct_variants(args.variants, host.load_config("alignmamba", args.dataset, args.config or None))
    cells = build_cells("alignmamba", args.dataset, choice.data, args.seeds, args.missing_protocol, args.missing_rates,
                        variants=[v if v != "alignmamba" else "" for v in variants])
    from ..runner import check_cells
    check_cells(cells, settings)
    make_output_dirs(settings)
    add_log_file(settings.log_dir, f"ablate-{args.dataset}")
    logger.info("ablation on %s (%s data; text padding: %s): %d run(s)", args.dataset, choice.data,
                choice.text_padding, len(cells))
    return run_sweep(cells, settings, args)
