"""AlignMamba's trainer, written to MMSA's trainer contract (what ATIO.getTrain returns).

    trainer = AlignMambaTrainer(args)
    trainer.do_train(model, dataloaders)          # best-on-validation checkpoint at args.model_save_path
    results = trainer.do_test(model, dataloaders["test"], mode="TEST")   # MMSA's metric dict

Loss: L = L1(prediction, label) + λ·L_align (λ = args.align_weight), AdamW, gradient-norm
clipping, early stopping on the validation KeyEval, one tqdm bar per epoch. A non-finite loss
stops training at once with the epoch and batch where it happened.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from . import host

logger = logging.getLogger("MMSA")


def batch_inputs(batch, device) -> tuple[tuple, dict]:
    """MMSA batch dict -> (text, audio, vision) and the keyword extras our model understands."""
    tensors = tuple(batch[k].to(device) for k in ("text", "audio", "vision"))
    extras = {k: batch[k].to(device) if torch.is_tensor(batch[k]) else torch.as_tensor(batch[k], device=device)
              for k in ("audio_lengths", "vision_lengths", "modality_mask") if k in batch}
    return tensors, extras


class AlignMambaTrainer:
    def __init__(self, args):
        self.args = args
        self.criterion = nn.L1Loss()
        self.metrics = host.metrics_for(args["dataset_name"])
        self.align_weight = float(args.get("align_weight", 0.1))
        self.max_epochs = int(args.get("max_epochs", 30))
        self.early_stop = int(args.get("early_stop", 6))
        self.key_eval = args.get("KeyEval", "Loss")

    def _step_loss(self, model, batch, device):
        inputs, extras = batch_inputs(batch, device)
        labels = batch["labels"]["M"].to(device).view(-1, 1)
        outputs = model(*inputs, **extras)
        task_loss = self.criterion(outputs["M"], labels)
        align_loss = outputs.get("align_loss", task_loss.new_zeros(()))
        return outputs, labels, task_loss, align_loss

    def do_train(self, model, dataloader, return_epoch_results=False):
        args, device = self.args, self.args["device"]
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                      lr=float(args.get("learning_rate", 1e-3)),
                                      weight_decay=float(args.get("weight_decay", 1e-2)))
        grad_clip = float(args.get("grad_clip", 1.0))
        lower_is_better = self.key_eval == "Loss"
        best_valid, best_epoch = (math.inf if lower_is_better else -math.inf), 0
        history = {"train": [], "valid": [], "test": []}
        for epoch in range(1, self.max_epochs + 1):
            model.train()
            preds, trues, totals = [], [], np.zeros(3)
            bar = tqdm(dataloader["train"], desc=f"{args['model_name']} epoch {epoch}", leave=False,
                       disable=not logger.isEnabledFor(logging.INFO))
            for step, batch in enumerate(bar):
                outputs, labels, task_loss, align_loss = self._step_loss(model, batch, device)
                loss = task_loss + self.align_weight * align_loss
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"non-finite training loss at epoch {epoch}, batch {step}: task={task_loss.item()}, "
                        f"align={align_loss.item()} (check the input features for NaN/inf, or lower the learning rate)")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                optimizer.step()
                totals += (loss.item(), task_loss.item(), align_loss.item())
                preds.append(outputs["M"].detach().cpu())
                trues.append(labels.cpu())
                bar.set_postfix(loss=f"{totals[0] / (step + 1):.4f}")
            n = max(len(dataloader["train"]), 1)
            train_results = self.metrics(torch.cat(preds), torch.cat(trues))
            train_results.update(Loss=round(totals[0] / n, 4), TaskLoss=round(totals[1] / n, 4),
                                 AlignLoss=round(totals[2] / n, 4))
            logger.info(f"TRAIN-({args['model_name']}) [{epoch - best_epoch}/{epoch}/{args.get('cur_seed', 1)}] "
                        f">> {host.metrics_text(train_results)}")
            valid_results = self.do_test(model, dataloader["valid"], mode="VAL")
            current = valid_results[self.key_eval]
            improved = current < best_valid - 1e-6 if lower_is_better else current > best_valid + 1e-6
            if improved:
                best_valid, best_epoch = current, epoch
                host.save_checkpoint(model, args["model_save_path"])
            if return_epoch_results:
                history["train"].append(train_results)
                history["valid"].append(valid_results)
                history["test"].append(self.do_test(model, dataloader["test"], mode="TEST"))
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
        for batch in dataloader:
            outputs, labels, task_loss, _ = self._step_loss(model, batch, device)
            loss_sum += task_loss.item()
            preds.append(outputs["M"].cpu())
            trues.append(labels.cpu())
            if return_sample_results:
                ids.extend(batch["id"])
                for k, v in outputs.items():
                    if k.startswith("Feature_"):
                        features.setdefault(k, []).append(v.cpu().numpy())
        pred, true = torch.cat(preds), torch.cat(trues)
        results = self.metrics(pred, true)
        results["Loss"] = round(loss_sum / max(len(dataloader), 1), 4)
        logger.info(f"{mode}-({self.args['model_name']}) >> {host.metrics_text(results)}")
        if return_sample_results:
            results.update(Ids=ids, SResults=pred.view(-1).numpy(), Labels=true.view(-1).tolist(),
                           Features={k: np.concatenate(v) for k, v in features.items()})
        return results
