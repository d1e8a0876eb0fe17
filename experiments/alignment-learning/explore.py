"""Screening runs behind experiments/alignment-learning/README.md (SYNTHETIC data only).

Each named setting is AlignMamba with config overrides, trained through the package's own runner
(MMSA's loaders, our trainer, per-epoch validation with plan-accuracy diagnostics) on the
MOSI-sized synthetic `wordlevel` set, one results folder per setting:

    python experiments/alignment-learning/explore.py --data PKL --out DIR SETTING [SETTING ...] [-s SEED ...]

The training log of each run (every epoch's validation metrics and plan accuracies) is kept in
DIR/<setting>/logs/.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mmsa_alignmamba.cli import add_log_file, setup_logging
from mmsa_alignmamba.report import write_summary
from mmsa_alignmamba.results import Cell
from mmsa_alignmamba.runner import run_cells
from mmsa_alignmamba.settings import RunSettings
from mmsa_alignmamba.synthetic import data_tag, read_metadata

# Each setting spells out every key it depends on, so it means the same whatever the defaults.
PAPER = {"ot_cost": "cosine", "ot_reduce": "sum", "final_norm": True, "plan_weight": 0.0,
         "global_alignment": "mmd", "mmd_sigmas": [0.5, 1.0, 2.0], "align_weight": 0.1}
FUSION = {"final_norm": False}                       # without the per-step LayerNorm before pooling
MEAN = {"ot_reduce": "mean"}
SETTINGS: dict[str, dict] = {
    "paper": PAPER,
    "time_prop": {**PAPER, "local_alignment": "none"},
    "mixture": {**PAPER, **MEAN, "ot_cost": "mixture", "plan_weight": 1.0},
    "mixture_nonorm": {**PAPER, **MEAN, **FUSION, "ot_cost": "mixture", "plan_weight": 1.0},
    "monotone_nonorm": {**PAPER, **MEAN, **FUSION, "ot_cost": "monotone", "plan_weight": 1.0},
    # after the change that aligns audio and vision jointly on one clock
    "joint_monotone": {**PAPER, **MEAN, **FUSION, "ot_cost": "monotone", "plan_weight": 1.0},
    "time_prop_nonorm": {**PAPER, **MEAN, **FUSION, "local_alignment": "none"},
    "paper_nonorm": {**PAPER, **FUSION},
    "monotone_patience": {**PAPER, **MEAN, **FUSION, "ot_cost": "monotone", "plan_weight": 1.0,
                          "early_stop": 10, "max_epochs": 50},
    "monotone_cosine": {**PAPER, **MEAN, **FUSION, "ot_cost": "monotone", "plan_weight": 1.0,
                        "early_stop": 10, "max_epochs": 40, "lr_schedule": "cosine"},
    "monotone_ema": {**PAPER, **MEAN, **FUSION, "ot_cost": "monotone", "plan_weight": 1.0,
                     "early_stop": 10, "max_epochs": 50, "ema_decay": 0.99},
    # the plan replaced by the TRUE frame->word map (an experiment-only patch, see use_true_plan)
    "true_plan": {**PAPER, **MEAN},
    "true_plan_nonorm": {**PAPER, **MEAN, **FUSION},
    # the MMD term (§5 of the README): the defaults of the learned-cost model, MMD off, or MMD with
    # the bandwidth at each sample's median distance (λ 0.1 and 0.5)
    "joint_monotone_no_mmd": {**PAPER, **MEAN, **FUSION, "ot_cost": "monotone", "plan_weight": 1.0,
                              "global_alignment": "none"},
    "joint_monotone_mmd_median": {**PAPER, **MEAN, **FUSION, "ot_cost": "monotone", "plan_weight": 1.0,
                                  "mmd_sigmas": "median"},
    "joint_monotone_mmd_median_w05": {**PAPER, **MEAN, **FUSION, "ot_cost": "monotone", "plan_weight": 1.0,
                                      "mmd_sigmas": "median", "align_weight": 0.5},
}
TRUE_PLAN = {"true_plan", "true_plan_nonorm"}


def use_true_plan() -> None:
    """Experiment-only patch: feed the data's true frame->word map to the model as its OT plan, to
    measure what the fusion can do with a perfect alignment. Not part of the package. (The logged
    plan accuracies are those of the unpatched cost's plans; the fused plan is the true one.)"""
    import torch
    from MMSA.data_loader import MMDataset

    from mmsa_alignmamba import model as model_module
    from mmsa_alignmamba import trainer as trainer_module
    from mmsa_alignmamba.alignment.ot import _hard_transport, time_proportional

    get_item = MMDataset.__getitem__

    def __getitem__(self, index):
        sample = get_item(self, index)
        for m, tokens in getattr(self, "true_tokens", {}).items():
            sample[f"true_{m}"] = tokens[index]
        return sample

    MMDataset.__getitem__ = __getitem__
    batch_inputs = trainer_module.batch_inputs

    def with_truth(batch, device):
        inputs, extras = batch_inputs(batch, device)
        extras.update({k: batch[k].to(device) for k in ("true_audio", "true_vision") if k in batch})
        return inputs, extras

    trainer_module.batch_inputs = with_truth
    forward = model_module.AlignMamba.forward

    def forward_with_truth(self, *args, true_audio=None, true_vision=None, **kwargs):
        self._truth = {"audio": true_audio, "vision": true_vision}
        return forward(self, *args, **kwargs)

    align = model_module.AlignMamba._align

    def true_align(self, m, source, source_mask, anchor, anchor_mask, anchor_present, log_post=None):
        truth = getattr(self, "_truth", {}).get(m)
        if truth is None or not anchor_present.all():
            return align(self, m, source, source_mask, anchor, anchor_mask, anchor_present, log_post)
        # frames in pauses (no true word) go where the time-proportional plan puts them
        fallback = time_proportional(source, source_mask, anchor_mask).assignment
        assignment = torch.where(truth >= 0, truth.long(), fallback).masked_fill(~source_mask, -1)
        return _hard_transport(source, assignment, source_mask, anchor_mask, self.cfg.ot_rescale,
                               self.cfg.ot_reduce).aligned

    model_module.AlignMamba.forward = forward_with_truth
    model_module.AlignMamba._align = true_align


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="MMSA-format pickle with true frame->word maps")
    p.add_argument("--out", required=True)
    p.add_argument("-s", "--seeds", type=int, action="append", default=[])
    p.add_argument("--set", action="append", default=[], help="extra override KEY=JSON for every setting")
    p.add_argument("settings", nargs="+", choices=sorted(SETTINGS))
    args = p.parse_args()
    import json
    extra = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    setup_logging(1)
    data = data_tag(read_metadata(args.data) or {"task": "custom", "size": "real"})
    if TRUE_PLAN & set(args.settings):
        if set(args.settings) - TRUE_PLAN:
            p.error("run true_plan on its own: it patches the model for the whole process")
        use_true_plan()
    for name in args.settings:
        out = Path(args.out) / name
        for sub in ("models", "logs"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        handler_path = add_log_file(out / "logs", name)
        settings = RunSettings(feature_path=args.data, true_alignment=True, overrides={**SETTINGS[name], **extra},
                               model_save_dir=out / "models", res_save_dir=out, log_dir=out / "logs")
        cells = [Cell("alignmamba", "mosi", data, seed) for seed in (args.seeds or [1111])]
        logging.getLogger("mmsa_alignmamba").info("setting %s: %s (log %s)", name, settings.overrides, handler_path)
        run_cells(cells, settings)
        print((Path(write_summary(out)["md"])).read_text())


if __name__ == "__main__":
    main()
