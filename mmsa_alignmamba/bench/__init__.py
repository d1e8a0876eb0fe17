"""`mmsa bench`: time and memory of AlignMamba vs MMSA's MulT and a Transformer fusion baseline.

    mmsa bench [--device cpu|cuda] [--lengths 50 100 … 3200] [--batch 8] [--out DIR] [--quick]
               [--kernels] [--train] [--inference] [--time-limit S] [--memory-limit-gb G]

Inference (default section). For each per-modality length L (T_a = T_v = T_l = L; RANDOM inputs
with MOSI's widths text 768 / audio 5 / vision 20, every step valid) and each model:

* ``alignmamba``   AlignMamba, MOSI config of configs/alignmamba.json, built by MMSA's AMIO;
* ``mult``         MMSA's own MulT, MOSI config of MMSA's config_regression.json, built by AMIO;
* ``transformer``  the same AlignMamba (encoders, OT, MMD, interleaving, pooling, head) with each
                   Mamba stack swapped for an ``nn.TransformerEncoder`` of the same width and depth
                   (nhead 4, feed-forward 4·d, pre-norm) on the interleaved 3L sequence.

Each (model, L) point runs in a FRESH process, forked from a multiprocessing forkserver that has
only imported torch/MMSA (``python -m mmsa_alignmamba.bench --point JSON`` measures one by hand):
eval mode, ``torch.no_grad``, warm-up pass(es), then the median of repeated forward passes.
Memory: on CPU the increase of the resident-set high-water mark over a baseline taken after
imports, model construction and input creation (glibc's free lists trimmed and the kernel's
high-water mark reset via /proc/self/clear_refs first, so the number is what the forward passes
touch: activations, workspaces, one-time thread-pool and kernel-cache setup). Parameters and
inputs are not in it (they are reported separately). On CUDA: ``torch.cuda.max_memory_allocated``
after ``reset_peak_memory_stats`` (parameters and inputs included, as that is what the GPU holds).

A point that runs out of memory or time gets status "oom" / "timeout" (larger L of that model are
then "skipped"); a crash of the point gets "error" and makes the command exit with status 1.
``--memory-limit-gb`` caps each point's RSS growth on CPU (a watchdog thread polls it every 20 ms);
``--time-limit`` caps each point's measuring phase.

``--train``: one training epoch on MOSI-sized SYNTHETIC unaligned data (not real data), through
MMSA's data loader, for AlignMamba and MulT with the same loop, each step AlignMamba's trainer's
own (``trainer.TrainStep``: AdamW, gradient clipping, L1 + λ·L_align + μ·L_plan) and the same
batch size: seconds, samples/s, ratio.
``--kernels``: the selective-scan kernel comparison of :mod:`mmsa_alignmamba.bench.kernels`.
With ``--train`` and/or ``--kernels`` only those sections run, unless ``--inference`` is given too.

Outputs in --out (default ~/MMSA/bench/<timestamp>): bench.json (machine, settings, every point,
summary), bench.md (tables and ratios), bench-time.png and bench-memory.png (log-log), all written
atomically.

The package, one job per module: ``baselines`` (the registry of compared models: adding one is one
entry), ``isolation`` (a fresh process per point, /proc memory, the watchdog), ``inference`` (the
sweep and one point's measurement), ``render`` (ratios, growth, tables, plots), ``training``
(``--train``), ``kernels`` (``--kernels``), ``command`` (options, machine, outputs).
"""
from .baselines import (
           BASELINES,
           MODELS,
           Baseline,
           bench_args,
           build_bench_model,
           random_inputs,
           register,
)
from .command import DEFAULT_LENGTHS, QUICK_LENGTHS, main, parser
from .render import growth_per_doubling, summarize

__all__ = ["BASELINES", "MODELS", "Baseline", "register", "bench_args", "build_bench_model", "random_inputs",
           "DEFAULT_LENGTHS", "QUICK_LENGTHS", "main", "parser", "growth_per_doubling", "summarize"]
