#!/usr/bin/env bash
# Installs mamba-ssm's Python code WITHOUT its CUDA kernels, into the active environment, so the tests
# can compare our CPU selective scan with mamba-ssm's own `selective_scan_ref`, and the kernel
# benchmark can compare with mambapy. Not needed to use the package; on a GPU machine install the
# `cuda` extra instead (pip install -e ".[cuda]"), which builds the real kernels.
#   FORCE_BUILD: without it mamba-ssm's setup tries to download a prebuilt wheel and fails offline.
#   SKIP_CUDA_BUILD: build no kernels (there is no nvcc / GPU here).
#   --no-cache-dir: a kernel-less wheel left in pip's cache would later replace a real one.
#   Order: the helpers first, mamba-ssm last with --no-deps, so that pip never checks mamba-ssm's
#   GPU-only requirements (ninja, tilelang, quack-kernels) and prints no resolver error about them.
set -euo pipefail
# selective_scan_interface imports mamba_ssm.ops.triton.layer_norm, hence triton.
pip install -q --no-cache-dir einops triton mambapy==1.2.0
MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE \
  pip install -q --no-cache-dir --no-build-isolation --no-deps mamba-ssm==2.3.2.post1
