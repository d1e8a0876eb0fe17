#!/usr/bin/env bash
# The prepared check for a lent GPU (issue 24), under 10 minutes in all; never part of CI.
#   bash benchmarks/gpu_check.sh            # from the repository root, with the package installed
# Writes benchmarks/results/gpu-check/ (the tests' log, the aligner comparison), gpu-inference/
# (mmsa bench --device cuda at the paper's lengths 50..3200) and gpu-train/ (one training epoch,
# MOSI-sized SYNTHETIC data). Each step has its own time limit, so one slow step cannot eat the rest.
set -u
results=benchmarks/results
mkdir -p "$results/gpu-check"
nvidia-smi > "$results/gpu-check/nvidia-smi.txt" 2>&1 || true
status=0

# 1. the CUDA tests (~1 min): Triton and TorchScript on CUDA against the CPU kernel, the model on CUDA
timeout 180 python -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_mamba.py \
    2>&1 | tee "$results/gpu-check/tests.log" || status=1

# 2. the CUDA aligner against the CPU kernel on the same inputs, and its time (~1 min)
timeout 120 python - "$results/gpu-check/aligner.json" <<'PY' || status=1
import json, sys, time
import torch
from mmsa_alignmamba import monotone_kernel, monotone_triton
from mmsa_alignmamba.alignment import band, lattice
rows = []
for batch, t_m, t_l, width in ((32, 500, 50, 0), (8, 1600, 1600, 0), (8, 1600, 1600, 16), (8, 3200, 3200, 16)):
    g = torch.Generator().manual_seed(0)
    emit = torch.randn(batch, t_m, t_l, generator=g)
    frames, words = torch.ones(batch, t_m, dtype=torch.bool), torch.ones(batch, t_l, dtype=torch.bool)
    starts = band.band_starts(frames, words, width) if width else None
    if starts is not None:
        emit = emit.gather(2, band.band_words(starts, width))
    t0 = time.perf_counter(); want = monotone_kernel.forward_backward(emit, frames, words, 0.05, starts)
    cpu_s = time.perf_counter() - t0
    cuda = [x.cuda() if x is not None else None for x in (emit, frames, words, starts)]
    row = {"batch": batch, "t_m": t_m, "t_l": t_l, "band": width, "cpu_kernel_s": cpu_s}
    for name, run in (("triton", lambda: monotone_triton.forward_backward(*cuda[:3], 0.05, cuda[3])),
                      ("torchscript", lambda: lattice.compiled(lattice.forward_backward)(
                          *cuda[:3], 0.05, False, lattice.starts_or_full(cuda[1], cuda[3])))):
        run(); torch.cuda.synchronize()                                  # compile / warm up
        t0 = time.perf_counter(); got = run(); torch.cuda.synchronize()
        finite = torch.isfinite(want[1])
        row[f"{name}_s"] = time.perf_counter() - t0
        row[f"{name}_max_abs_diff_log_lik"] = float((got[0].cpu() - want[0]).abs().max())
        row[f"{name}_max_abs_diff_log_post"] = float((got[1].cpu()[finite] - want[1][finite]).abs().max())
        row[f"{name}_same_impossible_cells"] = bool(torch.equal(finite, torch.isfinite(got[1].cpu())))
    rows.append(row)
    print(row, flush=True)
json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows},
          open(sys.argv[1], "w"), indent=1)
PY

# 3. inference time and memory against length on CUDA, the paper's lengths (~4 min)
timeout 300 mmsa bench --device cuda --lengths 50 100 200 400 800 1600 3200 --batch 8 --repeats 3 \
    --repeat-budget 10 --time-limit 60 --models alignmamba alignmamba_banded mult transformer \
    --out "$results/gpu-inference" || status=1

# 4. one training epoch at MOSI size, the trainer's own step, AlignMamba and MulT (~2 min)
timeout 240 mmsa bench --device cuda --train --out "$results/gpu-train" || status=1
exit $status
