"""`mmsa report`: rebuild the summary of every finished run and its publication forms."""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..settings import resolve_output_dirs
from .options import ArgumentParser

__all__ = ["main"]


def main(argv) -> int:
    from ..publish import write_report
    from ..report import METRIC_NAMES
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
    p.add_argument("--reference", choices=("mmsa",),
                   help="mmsa: add MMSA's published rows for the datasets present (its results/result-stat.md, "
                        "v_2.2.1, real data) in their own section of every form, marked 'reported by MMSA'")
    args = p.parse_args(argv)
    res_dir = resolve_output_dirs(res_save_dir=args.results_dir)["res_save_dir"]
    if not (res_dir / "cells").is_dir():
        raise InputError(f"no finished runs under {res_dir} (expected {res_dir / 'cells'})")
    paths = write_report(res_dir, metric=args.metric, formats=args.format, paper_rows=args.paper_rows,
                         reference=args.reference)
    notes = paths.pop("notes")
    print(Path(paths["md"]).read_text())
    for kind, path in paths.items():
        print(f"wrote {kind}: {path}")
    for note in notes:
        print(f"note: {note}")
    return 0
