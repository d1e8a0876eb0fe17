"""`mmsa inspect FILE.pkl`: what an MMSA-format pickle holds, one table per split, from the file alone."""
from __future__ import annotations

from .options import ArgumentParser

__all__ = ["main"]


def main(argv) -> int:
    from ..inspection import format_summary, inspect_file
    from ..synthetic import read_metadata
    p = ArgumentParser(prog="mmsa inspect",
                       description="Summarise an MMSA-format pickle: samples, labels, valid text tokens (attention "
                                   "mask vs non-zero rows), audio/vision lengths, feature statistics, and the text "
                                   "padding convention the model will use.")
    p.add_argument("file", help="an MMSA-format .pkl (e.g. MOSI/Processed/unaligned_50.pkl)")
    args = p.parse_args(argv)
    summaries = inspect_file(args.file)
    meta = read_metadata(args.file) or {}
    kind = ("SYNTHETIC data (not real data), per its sidecar: " + meta.get("note", "") if meta.get("synthetic")
            else "no synthetic-data sidecar")
    print(f"{args.file}: {kind}")
    print("\n".join(format_summary(s) for s in summaries))
    return 0
