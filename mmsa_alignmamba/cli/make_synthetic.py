"""`mmsa make-synthetic`: write an MMSA-format SYNTHETIC dataset pickle (not real data)."""
from __future__ import annotations

from .options import SYNTHETIC_PADDINGS, SYNTHETIC_SIZES, SYNTHETIC_TASKS, ArgumentParser

__all__ = ["main"]


def main(argv) -> int:
    from ..synthetic import PRESETS, resolve_sizes, write_synthetic
    p = ArgumentParser(prog="mmsa make-synthetic",
                                description="Write an MMSA-format SYNTHETIC dataset pickle (not real data).")
    p.add_argument("--like", required=True, type=str.lower, choices=sorted(PRESETS))
    p.add_argument("--aligned", action="store_true")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="full", choices=SYNTHETIC_SIZES)
    p.add_argument("--task", default="pooled", choices=SYNTHETIC_TASKS,
                   help="signal model: pooled (utterance-level cues) or wordlevel (word-level co-occurrence)")
    p.add_argument("--padding", default="bert", choices=SYNTHETIC_PADDINGS,
                   help="[PAD] rows of text: bert (default; not zero, marked by text_bert's attention mask) or zero")
    for split in ("train", "valid", "test"):
        p.add_argument(f"--n-{split}", type=int, help=f"number of {split} samples (overrides --size)")
    args = p.parse_args(argv)
    counts = {s: getattr(args, f"n_{s}") for s in ("train", "valid", "test") if getattr(args, f"n_{s}") is not None}
    size = {**resolve_sizes(args.like, args.size), **counts} if counts else args.size
    path = write_synthetic(args.out, like=args.like, aligned=args.aligned, size=size, seed=args.seed, task=args.task,
                           padding=args.padding)
    print(f"wrote SYNTHETIC {args.like.upper()}-format data ({args.task} family, {args.padding} pads): {path}")
    return 0
