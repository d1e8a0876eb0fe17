#!/usr/bin/env bash
# Issue 22's evidence with BERT-style [PAD] rows (the default --synthetic-padding bert), SYNTHETIC data.
# One job at a time, one thread each; checkpoints and logs outside the repository. Seed 1111 first:
# the zero-pad cells of the same trainings are in ablation-wordlevel-full/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/runs}
common=(--model-save-dir "$OUT/models" --log-dir "$OUT/logs" --cpus-per-run 1 -v 1)
wordlevel=(-d mosi --synthetic --synthetic-task wordlevel --synthetic-size full)
# 1. the wordlevel family at MOSI size with BERT-style pads: AlignMamba and w/o local OT
mmsa ablate "${wordlevel[@]}" -s 1111 --variants alignmamba wo_local_ot \
    --res-save-dir experiments/bert-pads-wordlevel-full "${common[@]}"
# 2. the same file with its attention mask withheld: every slot a word, as the model read such data before
python - "$OUT" <<'PY'
import json, pickle, shutil, sys
from pathlib import Path
from mmsa_alignmamba.safeio import safe_pickle_load
from mmsa_alignmamba.settings import output_root
from mmsa_alignmamba.synthetic import synthetic_path
src = synthetic_path(output_root(), "mosi", False, "full", 0, task="wordlevel", padding="bert")
data = safe_pickle_load(src)
for part in data.values():
    del part["text_bert"]
dst = Path(sys.argv[1]) / "wordlevel-full-bertpad-no-mask.pkl"
with open(dst, "wb") as f:
    pickle.dump(data, f, protocol=4)
meta = json.loads(Path(str(src) + ".json").read_text())
meta["note"] += "; text_bert removed (no attention mask)"
Path(str(dst) + ".json").write_text(json.dumps(meta, indent=2))
PY
mmsa ablate -d mosi --feature-path "$OUT/wordlevel-full-bertpad-no-mask.pkl" -s 1111 --variants alignmamba wo_local_ot \
    --res-save-dir experiments/bert-pads-mask-withheld "${common[@]}"
# 3. the other two seeds
mmsa ablate "${wordlevel[@]}" -s 1111 -s 1112 -s 1113 --variants alignmamba wo_local_ot \
    --res-save-dir experiments/bert-pads-wordlevel-full "${common[@]}"
# 4. the sample missing sweep (zero-pad cells: missing-sample-mosi-small/)
mmsa ablate -d mosi --synthetic --variants alignmamba modality_dropout --missing-protocol sample \
    --missing-rates 0 0.1 0.4 0.7 -s 1111 -s 1112 --res-save-dir experiments/bert-pads-missing-sample-mosi-small "${common[@]}"
# 5. the pooled family at MOSI size (zero-pad cells: regression-pooled-full/)
mmsa ablate -d mosi --synthetic --synthetic-size full -s 1111 -s 1112 --variants alignmamba \
    --res-save-dir experiments/bert-pads-regression-pooled-full "${common[@]}"
