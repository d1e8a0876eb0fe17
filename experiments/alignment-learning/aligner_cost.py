"""What the learned aligner costs at inference: AlignMamba's forward time with the default
`ot_cost: "monotone"` against the paper's `"cosine"`, side by side in one run (RANDOM inputs).

    python experiments/alignment-learning/aligner_cost.py [--threads 2] [--batch 8]

Shapes: MOSI's real ones (T_l, T_a, T_v = 50, 375, 500; widths 768 / 5 / 20) and equal lengths
L = 400 and 1600. Eval mode, no_grad, one warm-up pass, median of 5 passes. Time one job at a time
on a quiet machine.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from mmsa_alignmamba.datasets import MOSI_FEATURE_DIMS
from mmsa_alignmamba.model import AlignMamba, AlignMambaConfig

SHAPES = {"MOSI (50, 375, 500)": (50, 375, 500), "L = 400": (400, 400, 400), "L = 1600": (1600, 1600, 1600)}


def forward_seconds(model, lengths, batch: int, repeats: int = 5) -> float:
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(batch, t, d, generator=g) for t, d in zip(lengths, MOSI_FEATURE_DIMS)]
    extras = {"audio_lengths": torch.full((batch,), lengths[1]), "vision_lengths": torch.full((batch,), lengths[2])}
    with torch.no_grad():
        model(*x, **extras)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(*x, **extras)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {cost: AlignMamba(AlignMambaConfig(ot_cost=cost)).eval() for cost in ("monotone", "cosine")}
    print(f"RANDOM inputs, batch {args.batch}, {args.threads} threads; forward seconds (median of 5)\n")
    print("| shape | monotone (default) | cosine (paper) | ratio |\n|---|---|---|---|")
    for name, lengths in SHAPES.items():
        t = {cost: forward_seconds(m, lengths, args.batch) for cost, m in models.items()}
        print(f"| {name} | {t['monotone']:.4f} | {t['cosine']:.4f} | {t['monotone'] / t['cosine']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
