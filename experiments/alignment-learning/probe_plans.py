"""Which objective teaches a plan to align frames with words? (SYNTHETIC data only)

Trains only the alignment path of AlignMamba (the text encoder plus what the objective needs) on a
`wordlevel` pickle, without the task, and reports after each epoch how often the plan sends a
validation frame to its true word (exact), for audio and vision:

    python experiments/alignment-learning/probe_plans.py --data PKL OBJECTIVE [--epochs N]

Objectives:
  reconstruct  learned projections compared by cosine; a soft plan over them rebuilds each frame
               from the words (softmax over words of cos/τ, then a linear read-out of the words).
  reconstruct_prior  the same with a learned position prior in the soft plan.
  contrastive  learned projections; each frame must pick out its own utterance's words among the
               batch's utterances (MIL-NCE: log-sum-exp over each utterance's words).
  mixture      alignment.WordAligner(structure="mixture"): each frame's likelihood under a mixture of
               the words with a position prior.
  monotone_separate  a left-to-right chain over the words, for audio and vision apart.
  monotone     alignment.WordAligner(structure="monotone"): one left-to-right chain over the words
               for audio and vision together, on one clock (the default cost).
  supervised   NOT unsupervised: projections trained with the true word of each frame, an upper
               bound for a per-frame content plan.
"""
from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from mmsa_alignmamba.alignment import WordAligner, plan_hits, position_gap, relaxed_ot_from_scores, time_proportional
from mmsa_alignmamba.model import SequenceEncoder, lengths_to_mask
from mmsa_alignmamba.safeio import safe_pickle_load

SOURCES = ("audio", "vision")
OBJECTIVES = ("reconstruct", "reconstruct_prior", "contrastive", "mixture", "monotone_separate", "monotone",
              "supervised")


class Probe(nn.Module):
    def __init__(self, objective: str, dims: dict[str, int], d: int = 64, width: int = 32):
        super().__init__()
        self.objective = objective
        self.encoders = nn.ModuleDict({m: SequenceEncoder(dims[m], d, 1 if m == "text" else 3, 0.1) for m in dims})
        if objective == "monotone_separate":
            self.aligners = nn.ModuleList(WordAligner(d, {m: dims[m]}, "monotone") for m in SOURCES)
        elif objective in ("mixture", "monotone"):
            self.aligners = nn.ModuleList([WordAligner(d, {m: dims[m] for m in SOURCES}, objective)])
        else:
            self.project = nn.ModuleDict({m: nn.Linear(d, width) for m in dims})
            self.rebuild = nn.ModuleDict({m: nn.Linear(d, dims[m]) for m in SOURCES})
            self.log_beta = nn.Parameter(torch.tensor(math.log(0.05)), requires_grad=objective == "reconstruct_prior")

    def forward(self, batch, truth=None):
        """-> (loss, {modality: hard plan})."""
        text, tmask = batch["text"], batch["text"].abs().sum(-1) > 0
        words = self.encoders["text"](text)
        loss, plans = 0.0, {}
        frames = {m: self.encoders[m](batch[m].masked_fill(~batch[f"{m}_mask"][..., None], 0.0)) for m in SOURCES}
        if hasattr(self, "aligners"):
            for aligner in self.aligners:
                raw = {m: (batch[m], batch[f"{m}_mask"]) for m in aligner.emissions}
                log_lik, posts = aligner(raw, words, tmask)
                loss = loss + aligner.nll(log_lik, raw)
                for m, post in posts.items():
                    plans[m] = relaxed_ot_from_scores(aligner.scores(post), frames[m], batch[f"{m}_mask"], tmask)
            return loss, plans
        for m in SOURCES:
            x, mask = batch[m], batch[f"{m}_mask"]
            q = F.normalize(self.project[m](frames[m]), dim=-1)
            k = F.normalize(self.project["text"](words), dim=-1)
            logits = (q @ k.transpose(1, 2)) / 0.1                                      # (B, T_m, T_l)
            if self.objective == "reconstruct_prior":
                logits = logits - self.log_beta.exp() * position_gap(mask, tmask).square() / 0.1
            logits = logits.masked_fill(~tmask[:, None, :], float("-inf"))
            plans[m] = relaxed_ot_from_scores(lambda s, r, blocked: logits[:, s:s + r].detach() + blocked, frames[m], mask, tmask)
            if self.objective.startswith("reconstruct"):
                guess = torch.softmax(logits, -1) @ self.rebuild[m](words)             # (B, T_m, d_in)
                w = mask[..., None].float()
                centre = lambda y: (y - (y * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1)) * w
                target = centre(x)
                scale = target.square().sum((0, 1)).div(w.sum()).sqrt().clamp_min(1e-6)
                loss = loss + ((centre(guess) - target) / scale).square().sum() / (w.sum() * x.shape[-1])
            elif self.objective == "contrastive":
                picked = torch.rand(mask.shape).masked_fill(~mask, -1).topk(min(32, mask.shape[1]), 1).indices
                qk = q.gather(1, picked[..., None].expand(-1, -1, q.shape[-1]))          # (B, K, w)
                sims = torch.einsum("bkw,clw->bkcl", qk, k) / 0.1
                per_utterance = sims.masked_fill(~tmask[None, None], float("-inf")).logsumexp(-1)   # (B, K, C)
                target = torch.arange(len(q))[:, None].expand_as(picked)
                loss = loss + F.cross_entropy(per_utterance.flatten(0, 1), target.flatten())
            else:  # supervised
                true = truth[m]
                counted = (true >= 0) & mask
                loss = loss + F.cross_entropy(logits[counted], true[counted])
        return loss, plans


def load(path):
    data = safe_pickle_load(path)
    out = {}
    for split in ("train", "valid"):
        part = data[split]
        batch = {"text": torch.as_tensor(part["text"])}
        truth = {}
        for m in SOURCES:
            x = torch.as_tensor(part[m])
            batch[m] = x
            batch[f"{m}_mask"] = lengths_to_mask(torch.as_tensor(part[f"{m}_lengths"]), x.shape[1], len(x), "cpu")
            truth[m] = torch.as_tensor(part[f"{m}_token"]).long()
        out[split] = (batch, truth)
    return out


def accuracy(probe, batch, truth):
    probe.eval()
    hits = {m: torch.zeros(3) for m in SOURCES}
    time_hits = {m: torch.zeros(3) for m in SOURCES}
    with torch.no_grad():
        for start in range(0, len(batch["text"]), 64):
            part = {k: v[start:start + 64] for k, v in batch.items()}
            _, plans = probe(part, {m: t[start:start + 64] for m, t in truth.items()})
            for m in SOURCES:
                hits[m] += plan_hits(plans[m], truth[m][start:start + 64])
                uniform = time_proportional(part[m], part[f"{m}_mask"], part["text"].abs().sum(-1) > 0)
                time_hits[m] += plan_hits(uniform, truth[m][start:start + 64])
    return ({m: round(float(h[0] / h[2]), 3) for m, h in hits.items()},
            {m: round(float(h[0] / h[2]), 3) for m, h in time_hits.items()})


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("objective", choices=OBJECTIVES)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    data = load(args.data)
    train, truth = data["train"]
    dims = {m: train[m].shape[-1] for m in ("text", *SOURCES)}
    probe = Probe(args.objective, dims)
    optimizer = torch.optim.Adam(probe.parameters(), lr=3e-3)
    plan, time_plan = accuracy(probe, *data["valid"])
    print(f"SYNTHETIC data. time-proportional plan: {time_plan}; untrained {args.objective} plan: {plan}", flush=True)
    n = len(train["text"])
    for epoch in range(1, args.epochs + 1):
        started, total = time.time(), 0.0
        probe.train()
        order = torch.randperm(n)
        for start in range(0, n, 32):
            rows = order[start:start + 32]
            loss, _ = probe({k: v[rows] for k, v in train.items()}, {m: t[rows] for m, t in truth.items()})
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        plan, _ = accuracy(probe, *data["valid"])
        print(f"epoch {epoch}: loss {total / math.ceil(n / 32):.4f}, plan {plan} ({time.time() - started:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
