"""`mmsa bench --train`: one training epoch of AlignMamba and MulT with the same loop, on
MOSI-sized SYNTHETIC data through MMSA's loader. Each step is AlignMamba's trainer's own
(:class:`mmsa_alignmamba.trainer.TrainStep`: AdamW, gradient clipping, L1 + λ·L_align + μ·L_plan)."""
from __future__ import annotations

import time
from pathlib import Path

from .baselines import BASELINES, bench_args, build_bench_model
from .render import _load_note


def bench_train(opts, log) -> dict:
    """One epoch over MOSI-sized SYNTHETIC unaligned data for AlignMamba and MulT, same loop."""
    import torch

    from .. import host
    from ..synthetic import ensure_synthetic
    from ..trainer import TrainStep
    size = "small" if opts.quick else "full"
    path = ensure_synthetic(opts.cache_dir, "mosi", size=size, seed=0)
    batch_size = opts.train_batch
    if batch_size is None:
        batch_size = int(host.load_config("alignmamba", "mosi")["batch_size"])
    where = Path(path).relative_to(opts.cache_dir) if Path(path).is_relative_to(opts.cache_dir) else Path(path).name
    results = {"data": f"SYNTHETIC MOSI-format unaligned ({size}; not real data): {where} in the cache folder",
               "batch_size": batch_size,
               "max_batches": opts.train_max_batches, "step": "the trainer's (AdamW, gradient clipping, L1 + align_weight·L_align + plan_weight·L_plan)",
               "models": {}}
    for model_name in ("alignmamba", "mult"):
        torch.manual_seed(0)
        args = bench_args(model_name, opts.device)
        args.update(host.mmsa_run_args(str(path), opts.device), batch_size=batch_size)
        loaders = host.build_dataloaders(args, 0)
        model = build_bench_model(model_name, args).train()
        train_step = TrainStep(model, args, lengths=BASELINES[model_name].takes_lengths)

        def step(batch):
            return train_step(batch, opts.device, where=f"{model_name}'s bench step")[1].shape[0]

        def sync():
            if str(opts.device).startswith("cuda"):
                torch.cuda.synchronize(opts.device)

        warm = iter(loaders["valid"])  # warm-up steps on validation batches, not counted
        for _ in range(2):
            step(next(warm))
        sync()
        n_samples, n_batches, compute = 0, 0, 0.0
        t_epoch, c_epoch = time.perf_counter(), time.process_time()
        for batch in loaders["train"]:
            t0 = time.perf_counter()
            n_samples += step(batch)
            sync()
            compute += time.perf_counter() - t0
            n_batches += 1
            if opts.train_max_batches and n_batches >= opts.train_max_batches:
                break
        epoch_s, epoch_cpu_s = time.perf_counter() - t_epoch, time.process_time() - c_epoch
        seq = args.get("seq_lens")
        full = len(loaders["train"].dataset)
        results["models"][model_name] = {
            "epoch_s": epoch_s, "epoch_cpu_s": epoch_cpu_s, "compute_s": compute, "samples": n_samples,
            "batches": n_batches, "train_split_samples": full, "samples_per_s": n_samples / epoch_s,
            "cpu_samples_per_s": n_samples / epoch_cpu_s if epoch_cpu_s > 0 else None,
            "full_epoch_s_estimate": epoch_s * full / n_samples,
            "params": sum(p.numel() for p in model.parameters()),
            "seq_lens_text_audio_vision": list(seq) if seq else None}
        log(f"  train {BASELINES[model_name].label:12s}: {epoch_s:8.2f} s wall, {epoch_cpu_s:8.2f} s CPU for {n_samples} "
            f"of {full} samples ({n_samples / epoch_s:.2f} samples/s, {n_batches} batches of {batch_size})")
        del model, train_step, loaders
    a, b = results["models"]["alignmamba"], results["models"]["mult"]
    results["epoch_ratio_alignmamba_vs_mult"] = a["epoch_s"] / b["epoch_s"]
    results["epoch_cpu_ratio_alignmamba_vs_mult"] = a["epoch_cpu_s"] / b["epoch_cpu_s"]
    results["throughput_ratio_alignmamba_vs_mult"] = a["samples_per_s"] / b["samples_per_s"]
    return results


def train_markdown(report) -> str:
    t, m = report["train"], report["machine"]
    lines = [f"# mmsa bench --train: one training epoch on {m['device_label']}", "",
             f"**Device: {m['device_label']}** — torch {m['torch']}, "
             f"Mamba backend: {m['mamba_backend']}. {m['timestamp']}.", "", _load_note(m),
             f"Data: {t['data']}. Same loop for both models, each step AlignMamba's trainer's own: AdamW, gradient-norm "
             f"clipping, L1 loss (+ align_weight·L_align + plan_weight·L_plan where the model has them), "
             f"batch size {t['batch_size']}, forward + backward + optimizer step over the train split"
             + (f" (capped at {t['max_batches']} batches)" if t["max_batches"] else "") +
             "; 2 warm-up steps not counted; epoch time includes MMSA's data loader.", "",
             "| model | params | batches | samples (of train split) | wall (s) | CPU (s) | samples/s (wall) | "
             "full-epoch wall estimate (s) |", "|---|---|---|---|---|---|---|---|"]
    for name, r in t["models"].items():
        lines.append(f"| {BASELINES[name].label} | {r['params']:,} | {r['batches']} | {r['samples']} ({r['train_split_samples']}) | "
                     f"{r['epoch_s']:.2f} | {r['epoch_cpu_s']:.2f} | {r['samples_per_s']:.2f} | "
                     f"{r['full_epoch_s_estimate']:.1f} |")
    lines += ["", f"AlignMamba epoch time = {t['epoch_ratio_alignmamba_vs_mult']:.3f} × MulT wall, "
              f"{t['epoch_cpu_ratio_alignmamba_vs_mult']:.3f} × MulT CPU "
              f"(throughput {t['throughput_ratio_alignmamba_vs_mult']:.2f} × MulT)."]
    return "\n".join(lines) + "\n"
