#!/usr/bin/env bash
# Issue 22's evidence with BERT-style [PAD] rows (the default --synthetic-padding bert), SYNTHETIC data.
# One job at a time, one thread each; checkpoints and logs outside the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/runs}
common=(--model-save-dir "$OUT/models" --log-dir "$OUT/logs" --cpus-per-run 1 -v 1)
# the wordlevel family at MOSI size: AlignMamba and w/o local OT, 3 seeds (zero-pad cells: ablation-wordlevel-full/)
mmsa ablate -d mosi --synthetic --synthetic-task wordlevel --synthetic-size full -s 1111 -s 1112 -s 1113 \
    --variants alignmamba wo_local_ot --res-save-dir experiments/bert-pads-wordlevel-full "${common[@]}"
# the sample missing sweep (zero-pad cells: missing-sample-mosi-small/)
mmsa ablate -d mosi --synthetic --variants alignmamba modality_dropout --missing-protocol sample \
    --missing-rates 0 0.1 0.4 0.7 -s 1111 -s 1112 --res-save-dir experiments/bert-pads-missing-sample-mosi-small "${common[@]}"
# the pooled family at MOSI size (zero-pad cells: regression-pooled-full/)
mmsa ablate -d mosi --synthetic --synthetic-size full -s 1111 -s 1112 --variants alignmamba \
    --res-save-dir experiments/bert-pads-regression-pooled-full "${common[@]}"
