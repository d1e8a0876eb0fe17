"""Given the TRUE word alignment, how well does each fusion learn the label? (SYNTHETIC data only)

Each word's audio and vision frames are averaged with the data's true frame->word map, so the
plan is perfect and only the fusion is tested. Trains on the train split, picks the epoch with the
lowest validation MAE, reports the test split:

    python experiments/alignment-learning/probe_fusion.py --data PKL FUSION [--epochs N] [--seed S]

Fusions:
  mamba          AlignMamba's: interleave [a_j, v_j, l_j], residual Mamba blocks, a LayerNorm on every
                 step (the first release's final_norm), mean pool, MLP head.
  mamba_nonorm   the same without the per-step LayerNorm (final_norm=False).
  mlp            per word, an MLP on [l_j, a_j, v_j]; mean pool; MLP head (no sequence model).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from mmsa_alignmamba.model import AlignMambaConfig, MambaStack, masked_mean
from mmsa_alignmamba.safeio import safe_pickle_load
from mmsa_alignmamba.synthetic.oracle import _word_means

FUSIONS = ("mamba", "mamba_nonorm", "mlp")


def load(path):
    """-> {split: (text, audio per word, vision per word, token mask, labels)}, standardised per feature."""
    data = safe_pickle_load(path)
    out = {}
    for split in ("train", "valid", "test"):
        part = data[split]
        text = torch.as_tensor(part["text"])
        words = [torch.as_tensor(_word_means(part, m)[0], dtype=torch.float32) for m in ("audio", "vision")]
        out[split] = [text, *words, text.abs().sum(-1) > 0, torch.as_tensor(part["regression_labels"])]
    mask = out["train"][3]
    for i in (1, 2):
        mean, std = out["train"][i][mask].mean(0), out["train"][i][mask].std(0) + 1e-6
        for split in out:
            out[split][i] = (out[split][i] - mean) / std * out[split][3][..., None]
    return out


class Fusion(nn.Module):
    def __init__(self, kind: str, d: int = 64, dropout: float = 0.1):
        super().__init__()
        self.kind = kind
        self.drop = nn.Dropout(dropout)
        self.encode = nn.ModuleDict({"t": nn.Linear(768, d, bias=False), "a": nn.Linear(5, d, bias=False),
                                     "v": nn.Linear(20, d, bias=False)})
        if kind == "mlp":
            self.fuse = nn.Sequential(nn.Linear(3 * d, d), nn.GELU(), nn.Linear(d, d))
        else:
            self.fuse = MambaStack(AlignMambaConfig(d_model=d, dropout=dropout, final_norm=kind == "mamba"))
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Dropout(dropout), nn.Linear(d, 1))

    def forward(self, text, audio, vision, mask):
        t, a, v = (self.encode[k](self.drop(x)) for k, x in (("t", text), ("a", audio), ("v", vision)))
        if self.kind == "mlp":
            return self.head(masked_mean(self.fuse(torch.cat([t, a, v], -1)), mask))
        sequence = torch.stack([a, v, t], 2).flatten(1, 2)                        # (B, 3·T_l, d)
        return self.head(masked_mean(self.fuse(sequence), mask.repeat_interleave(3, 1)))


def scores(model, split):
    model.eval()
    with torch.no_grad():
        *inputs, y = split
        pred = model(*inputs).squeeze(-1)
    return (float(((pred >= 0) == (y >= 0)).float().mean()), float(np.corrcoef(pred, y)[0, 1]),
            float((pred - y).abs().mean()))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("fusion", choices=FUSIONS)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    data = load(args.data)
    model = Fusion(args.fusion)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    train, n = data["train"], len(data["train"][0])
    best = (float("inf"), 0, None)
    for epoch in range(1, args.epochs + 1):
        started = time.time()
        model.train()
        order = torch.randperm(n)
        for start in range(0, n, 32):
            rows = order[start:start + 32]
            *inputs, y = (x[rows] for x in train)
            loss = (model(*inputs).squeeze(-1) - y).abs().mean()
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        valid, test = scores(model, data["valid"]), scores(model, data["test"])
        if valid[2] < best[0]:
            best = (valid[2], epoch, test)
        print(f"epoch {epoch}: train acc/corr {scores(model, train)[:2]}, valid {valid[:2]}, test {test[:2]} "
              f"({time.time() - started:.0f}s)", flush=True)
    print(f"SYNTHETIC data, {args.fusion}: best validation MAE at epoch {best[1]}; "
          f"test Has0 acc-2 {100 * best[2][0]:.1f}, corr {best[2][1]:.3f}")


if __name__ == "__main__":
    main()
