"""AlignMamba's trainer, written to MMSA's trainer contract (what ATIO.getTrain returns).

    trainer = AlignMambaTrainer(args)
    trainer.do_train(model, dataloaders)          # best-on-validation checkpoint at args.model_save_path
    results = trainer.do_test(model, dataloaders["test"], mode="TEST")   # MMSA's metric dict

Loss: L = L1(prediction, label) + λ·L_align (λ = args.align_weight) + μ·L_plan (μ = args.plan_weight,
ours: plan learning, see model.py), AdamW with a constant or cosine learning rate, gradient-norm
clipping, optionally an exponential moving average of the weights (args.ema_decay), early stopping
on the validation KeyEval, one tqdm bar per epoch. A non-finite loss
stops training at once with the epoch and batch where it happened.

Alignment diagnostics: when the evaluated split's dataset carries the true frame→word maps
(``dataset.true_tokens``, attached by the runner for data that has them) and the model can show
its plans (``alignment_plans``), every evaluation also reports, per source modality and plan
(``ot``, ``soft_ot``, ``none`` = time-proportional), the share of frames sent to their true word
(``Plan_<plan>_<modality>``) and to within one word of it (``Plan1_<plan>_<modality>``).
"""
from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from . import checkpoints, host
from .alignment.diagnostics import plan_hits
from .results import lower_is_better, metrics_line, plan_kinds

logger = logging.getLogger("MMSA")


def plan_lines(results: dict) -> list[str]:
    """One line per source modality: '<modality> frames to their true word, exact (±1 word) %:
    OT 81.6 (94.9), soft 80.6 (94.9), time 27.9 (71.0)'."""
    names = {"ot": "OT", "soft_ot": "soft", "none": "time"}   # a third party's plan shows its own name
    kinds = plan_kinds(results)
    lines = []
    for modality in ("audio", "vision"):
        cells = [f"{names.get(k, k)} {100 * results[f'Plan_{k}_{modality}']:.1f} "
                 f"({100 * results[f'Plan1_{k}_{modality}']:.1f})"
                 for k in kinds if f"Plan_{k}_{modality}" in results]
        if cells:
            lines.append(f"{modality} frames to their true word, exact (±1 word) %: " + ", ".join(cells))
    return lines


def batch_inputs(batch, device) -> tuple[tuple, dict]:
    """MMSA batch dict -> (text, audio, vision) and the keyword extras our model understands."""
    tensors = tuple(batch[k].to(device) for k in ("text", "audio", "vision"))
    extras = {k: batch[k].to(device) if torch.is_tensor(batch[k]) else torch.as_tensor(batch[k], device=device)
              for k in ("audio_lengths", "vision_lengths", "text_lengths", "modality_mask") if k in batch}
    return tensors, extras


def step_loss(model, batch, device, criterion, lengths: bool = True, **options):
    """One forward pass on an MMSA batch -> (outputs, labels (B, 1), task loss, L_align, L_plan);
    the last two are 0 for models without them. ``lengths``: whether the model takes the
    length extras (MMSA's own models do not)."""
    inputs, extras = batch_inputs(batch, device)
    labels = batch["labels"]["M"].to(device).view(-1, 1)
    outputs = model(*inputs, **(extras if lengths else {}), **options)
    task_loss = criterion(outputs["M"], labels)
    zero = task_loss.new_zeros(())
    return outputs, labels, task_loss, outputs.get("align_loss", zero), outputs.get("plan_loss", zero)


class TrainStep:
    """One optimisation step as AlignMamba trains: L = L1 + λ·L_align + μ·L_plan (λ =
    ``align_weight``, μ = ``plan_weight``), backward, gradient-norm clipping at ``grad_clip``
    (0: none), AdamW (``learning_rate``, ``weight_decay``). The trainer and ``mmsa bench --train``
    both run this object, so the benchmark times the step the model is trained with; the
    learning-rate schedule and weight averaging are per-epoch matters of the trainer."""

    def __init__(self, model, args, lengths: bool = True):
        self.model, self.lengths = model, lengths
        self.criterion = nn.L1Loss()
        self.align_weight = float(args.get("align_weight", 0.1))
        self.plan_weight = float(args.get("plan_weight", 1.0))
        self.grad_clip = float(args.get("grad_clip", 1.0))
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                           lr=float(args.get("learning_rate", 1e-3)),
                                           weight_decay=float(args.get("weight_decay", 1e-2)))

    def __call__(self, batch, device, where: str = ""):
        """-> (outputs, labels, the losses (total, task, align, plan) as a tensor (4,), detached).
        A non-finite loss raises FloatingPointError naming ``where`` (e.g. 'epoch 2, batch 5')."""
        outputs, labels, task_loss, align_loss, plan_loss = step_loss(self.model, batch, device, self.criterion,
                                                                      self.lengths)
        loss = task_loss + self.align_weight * align_loss + self.plan_weight * plan_loss
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss at {where}: task={task_loss.item()}, align={align_loss.item()}, "
                f"plan={plan_loss.item()} (check the input features for NaN/inf, or lower the learning rate)")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        return outputs, labels, torch.stack([loss, task_loss, align_loss, plan_loss]).detach()


class AlignMambaTrainer:
    def __init__(self, args):
        self.args = args
        self.criterion = nn.L1Loss()
        self.metrics = host.metrics_for(args["dataset_name"])
        self.max_epochs = int(args.get("max_epochs", 30))
        self.early_stop = int(args.get("early_stop", 6))
        self.ema_decay = float(args.get("ema_decay", 0.0))
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        self.lr_schedule = str(args.get("lr_schedule", "constant"))
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        self.key_eval = args.get("KeyEval", "Loss")

    def do_train(self, model, dataloader, return_epoch_results=False):
        args, device = self.args, self.args["device"]
        train_step = TrainStep(model, args)
        optimizer = train_step.optimizer
        steps = self.max_epochs * max(len(dataloader["train"]), 1)
        # cosine: from the set rate down to 0 over the epoch budget (early stopping may end it sooner)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, (lambda step: 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps)))
            if self.lr_schedule == "cosine" else (lambda step: 1.0))
        # Polyak averaging (ours, off at 0): validate, keep and test an exponential moving average of
        # the weights, which moves less from batch to batch than the weights themselves.
        averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(self.ema_decay), use_buffers=True) \
            if self.ema_decay > 0 else None
        evaluated = averaged.module if averaged is not None else model
        lower = lower_is_better(self.key_eval)   # Loss and MAE: lower; accuracies, F1, Corr: higher
        best_valid, best_epoch = (math.inf if lower else -math.inf), 0
        history = {"train": [], "valid": [], "test": []}
        for epoch in range(1, self.max_epochs + 1):
            model.train()
            preds, trues, totals = [], [], np.zeros(4)
            bar = tqdm(dataloader["train"], desc=f"{args['model_name']} epoch {epoch}", leave=False,
                       disable=not logger.isEnabledFor(logging.INFO))
            for step, batch in enumerate(bar):
                outputs, labels, losses = train_step(batch, device, where=f"epoch {epoch}, batch {step}")
                scheduler.step()
                if averaged is not None:
                    averaged.update_parameters(model)
                totals += losses.cpu().numpy()
                preds.append(outputs["M"].detach().cpu())
                trues.append(labels.cpu())
                bar.set_postfix(loss=f"{totals[0] / (step + 1):.4f}")
            n = max(len(dataloader["train"]), 1)
            train_results = self.metrics(torch.cat(preds), torch.cat(trues))
            train_results.update(Loss=round(totals[0] / n, 4), TaskLoss=round(totals[1] / n, 4),
                                 AlignLoss=round(totals[2] / n, 4), PlanLoss=round(totals[3] / n, 4),
                                 LR=float(f"{optimizer.param_groups[0]['lr']:.3g}"))
            logger.info(f"TRAIN-({args['model_name']}) [{epoch - best_epoch}/{epoch}/{args.get('cur_seed', 1)}] "
                        f">> loss {train_results['Loss']:.4f} = task {train_results['TaskLoss']:.4f} + align "
                        f"{train_results['AlignLoss']:.4f} + plan {train_results['PlanLoss']:.4f}, "
                        f"lr {train_results['LR']:.3g}")
            logger.debug(f"TRAIN-({args['model_name']}) metrics on the training split >> {metrics_line(train_results)}")
            valid_results = self.do_test(evaluated, dataloader["valid"], mode=f"VAL epoch {epoch}")
            current = valid_results[self.key_eval]
            improved = current < best_valid - 1e-6 if lower else current > best_valid + 1e-6
            if improved:
                best_valid, best_epoch = current, epoch
                checkpoints.save(args["model_save_path"], evaluated.state_dict(), None)  # bare: MMSA_run reloads it
            if return_epoch_results:
                history["train"].append(train_results)
                history["valid"].append(valid_results)
                history["test"].append(self.do_test(evaluated, dataloader["test"], mode="TEST"))
            if epoch - best_epoch >= self.early_stop:
                logger.info(f"early stop at epoch {epoch}: best {self.key_eval} {best_valid:.4f} at epoch {best_epoch}")
                break
        return history if return_epoch_results else None

    @torch.no_grad()
    def do_test(self, model, dataloader, mode="VAL", return_sample_results=False):
        device = self.args["device"]
        model.eval()
        preds, trues, loss_sum = [], [], 0.0
        ids, features = [], {}
        truth = getattr(getattr(dataloader, "dataset", None), "true_tokens", None)
        # the model shows its plans from the same forward pass (MMSA's AMIO wraps the model)
        shows_plans = hasattr(getattr(model, "Model", model), "alignment_plans")
        hits: dict[str, torch.Tensor] = {}
        for batch in dataloader:
            measure = bool(truth) and shows_plans and "modality_mask" not in batch
            outputs, labels, task_loss, _, _ = step_loss(model, batch, device, self.criterion, **(
                {"with_plans": True} if measure else {}))
            loss_sum += task_loss.item()
            preds.append(outputs["M"].cpu())
            trues.append(labels.cpu())
            if measure:
                self._count_plan_hits(outputs["plans"], batch, truth, hits, device)
            if return_sample_results:
                ids.extend(batch["id"])
                for k, v in outputs.items():
                    if k.startswith("Feature_"):
                        features.setdefault(k, []).append(v.cpu().numpy())
        pred, true = torch.cat(preds), torch.cat(trues)
        results = self.metrics(pred, true)
        results["Loss"] = round(loss_sum / max(len(dataloader), 1), 4)
        for name, (exact, near, steps) in hits.items():
            if steps > 0:
                results[f"Plan_{name}"] = round(float(exact / steps), 4)
                results[f"Plan1_{name}"] = round(float(near / steps), 4)
        plain = {k: v for k, v in results.items() if not k.startswith("Plan")}
        logger.info(f"{mode}-({self.args['model_name']}) >> {metrics_line(plain)}")
        for line in plan_lines(results) if hits else []:
            logger.info(f"{mode}-({self.args['model_name']}) plan >> {line}")
        if return_sample_results:
            results.update(Ids=ids, SResults=pred.view(-1).numpy(), Labels=true.view(-1).tolist(),
                           Features={k: np.concatenate(v) for k, v in features.items()})
        return results

    @staticmethod
    def _count_plan_hits(plans, batch, truth, hits, device) -> None:
        """Add this batch's [exact, within ±1, frames] counts per '<plan>_<modality>' to ``hits``;
        ``plans``: source modality -> plan name -> OTAlignment (the model's ``with_plans`` output)."""
        rows = torch.as_tensor(batch["index"]).long()
        for modality, by_kind in plans.items():
            if modality not in truth:
                continue
            true_token = truth[modality][rows].to(device)
            for kind, plan in by_kind.items():
                name = f"{kind}_{modality}"
                hits[name] = hits.get(name, 0) + plan_hits(plan, true_token).cpu()
