"""How often the banded lattice can hold a frame's true word, by utterance length (SYNTHETIC timing).

No training: the wordlevel family's timing model (syllable and pause durations, speaking rate,
edge silence; ``mmsa_alignmamba.synthetic.wordlevel``) draws utterances of n words, a frame rate
of 20 frames per second samples them, and ``alignment.band.band_starts`` gives each frame's band
of W tokens ([CLS] words [SEP]) around its time-proportional token. A spoken frame is *covered*
when its true token is in its band: where it is not, the band forces the frame onto another word.
Usage: python experiments/aligner-band-coverage/coverage.py [--out DIR]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from mmsa_alignmamba.alignment.band import band_starts
from mmsa_alignmamba.synthetic import wordlevel
from mmsa_alignmamba.synthetic.common import preset

WORDS = (14, 48, 200, 400, 800, 1600)     # 14: the family's median utterance; 48: MOSI's longest
WIDTHS = (8, 16, 32, 64, 128)
FRAME_RATE = 20.0                          # frames per second (the family's MOSI audio: ~22)
SAMPLES = 64


def frame_tokens(onset: np.ndarray, end: np.ndarray, total: float) -> np.ndarray:
    """One utterance: each frame's true token (word k -> token k + 1), -1 where no word is spoken."""
    t = (np.arange(int(np.ceil(total * FRAME_RATE))) + 0.5) / FRAME_RATE
    k = np.searchsorted(onset, t, side="right") - 1
    speaking = (k >= 0) & (t < end[k.clip(0)])
    return np.where(speaking, k + 1, -1)


def coverage(n_words: int, rng: np.random.Generator, st: dict) -> dict[int, float]:
    """Share of spoken frames whose true token lies in their band, per band width."""
    freq = (np.arange(len(st["syllables"])) + wordlevel._ZIPF_Q) ** -wordlevel._ZIPF_S
    ids = rng.choice(len(freq), (SAMPLES, n_words), p=freq / freq.sum())
    onset, end, total = wordlevel._timeline(rng, st, ids, np.ones_like(ids, dtype=bool))
    hit = {w: 0 for w in WIDTHS}
    spoken = 0
    for b in range(SAMPLES):
        tokens = torch.from_numpy(frame_tokens(onset[b], end[b], total[b]))
        grid = torch.ones(1, len(tokens), dtype=torch.bool)
        words = torch.ones(1, n_words + 2, dtype=torch.bool)
        on = tokens >= 0
        spoken += int(on.sum())
        for w in WIDTHS:
            starts = band_starts(grid, words, w)
            if starts is None:                      # the band covers the lattice
                hit[w] += int(on.sum())
                continue
            inside = (tokens >= starts[0]) & (tokens < starts[0] + w)
            hit[w] += int((inside & on).sum())
    return {w: 100.0 * hit[w] / spoken for w in WIDTHS}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = p.parse_args()
    rng = np.random.default_rng(20661)
    st = wordlevel.structure(rng, preset("mosi"))
    rows = {n: coverage(n, rng, st) for n in WORDS}
    lines = ["# Banded lattice: spoken frames whose true word is inside the band (%), SYNTHETIC timing", "",
             f"The wordlevel family's timing model, {SAMPLES} utterances per length, {FRAME_RATE:g} frames/s, "
             "band of W tokens around the time-proportional token (alignment/band.py). "
             "100 where W covers the utterance's tokens (the full lattice).", "",
             "| words | " + " | ".join(f"W = {w}" for w in WIDTHS) + " |",
             "|---|" + "---|" * len(WIDTHS)]
    lines += [f"| {n} | " + " | ".join(f"{rows[n][w]:.2f}" for w in WIDTHS) + " |" for n in WORDS]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "coverage.md").write_text("\n".join(lines) + "\n")
    (args.out / "coverage.json").write_text(json.dumps(
        {"data": "SYNTHETIC timing (wordlevel family)", "frame_rate": FRAME_RATE, "samples": SAMPLES,
         "coverage_percent": {str(n): {str(w): v for w, v in r.items()} for n, r in rows.items()}}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
