#!/usr/bin/env bash
# Issue 24's speed changes recomputed the aligner's emissions as one product (the same formulas, other
# float rounding): AlignMamba's defaults again, SYNTHETIC data at MOSI size, 3 seeds, both families,
# both padding conventions. Two lanes side by side, one thread each; checkpoints and logs in $OUT.
set -u
export OMP_NUM_THREADS=1
B=mmsa
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/seedruns}
mkdir -p "$OUT"
common=(-d mosi --synthetic --synthetic-size full -s 1111 -s 1112 -s 1113 --variants alignmamba --cpus-per-run 1 -v 1)
(
  $B ablate "${common[@]}" --synthetic-task wordlevel --synthetic-padding bert --res-save-dir experiments/emissions-one-product-3seeds/wl-bert --model-save-dir "$OUT/m1" > "$OUT/wl-bert.log" 2>&1
  $B ablate "${common[@]}" --synthetic-task wordlevel --synthetic-padding zero --res-save-dir experiments/emissions-one-product-3seeds/wl-zero --model-save-dir "$OUT/m2" > "$OUT/wl-zero.log" 2>&1
) &
(
  $B ablate "${common[@]}" --synthetic-task pooled --synthetic-padding bert --res-save-dir experiments/emissions-one-product-3seeds/po-bert --model-save-dir "$OUT/m3" > "$OUT/po-bert.log" 2>&1
  $B ablate "${common[@]}" --synthetic-task pooled --synthetic-padding zero --res-save-dir experiments/emissions-one-product-3seeds/po-zero --model-save-dir "$OUT/m4" > "$OUT/po-zero.log" 2>&1
) &
wait
echo ALLDONE
