#!/usr/bin/env bash
# Issue 23's leaderboard, SYNTHETIC data: every MMSA built-in with a MOSI config, AlignMamba with this
# package's defaults and as published (alignmamba+paper), on the wordlevel family at MOSI size
# (1284 / 229 / 686, BERT-style [PAD] rows), seed 1111.
#   leaderboard-wordlevel-full/        every model, at most 2 epochs each (the cap that MulT and
#                                      TFR-Net fit in: ~25 and ~17 minutes per epoch here)
#   leaderboard-wordlevel-full-cap10/  every model but those two, at most 10 epochs each
# The BERT models fine-tune a random 1-layer BERT (hidden 768) built from transformers' classes, not
# bert-base: their rows say what the pipeline does, not what BERT gives.
# Two lanes on the 2-core VM, one thread each; runners that share a results folder never train the
# same cell twice (claims), and the last command of each board finds every cell finished and writes
# its one summary, with MMSA's own published rows.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/lbruns}
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
python - "$OUT/bert" <<'PY'
# the random BERT and a vocab.txt with every id of the synthetic text_bert (as tests/test_builtins.py)
import sys
from pathlib import Path
from transformers import BertConfig, BertModel
from mmsa_alignmamba.synthetic.common import CLS, SEP, VOCAB_OFFSET
path = Path(sys.argv[1]); path.mkdir(parents=True, exist_ok=True)
BertModel(BertConfig(vocab_size=VOCAB_OFFSET + 2000, hidden_size=768, num_hidden_layers=1, num_attention_heads=12,
                     intermediate_size=64, max_position_embeddings=64)).save_pretrained(path)
tokens = [f"[unused{i}]" for i in range(VOCAB_OFFSET)]
tokens[0], tokens[100], tokens[CLS], tokens[SEP], tokens[103] = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
(path / "vocab.txt").write_text("\n".join(tokens + [f"w{i:04d}" for i in range(2000)]) + "\n")
PY
common=(-d mosi --synthetic --synthetic-task wordlevel --synthetic-size full -s 1111 --pretrained "$OUT/bert"
        --cpus-per-run 1 --log-dir "$OUT/logs" -v 1)
board2=(mmsa leaderboard "${common[@]}" --epochs 2 --res-save-dir experiments/leaderboard-wordlevel-full
        --model-save-dir "$OUT/models")
board10=(mmsa leaderboard "${common[@]}" --epochs 10 --res-save-dir experiments/leaderboard-wordlevel-full-cap10
         --model-save-dir "$OUT/models10")
"${board2[@]}" --models lf_dnn ef_lstm          # first, alone: it generates the unaligned and aligned files
(   # lane A
    "${board2[@]}" --models tfr_net > "$OUT/tfr_net.log" 2>&1 || true
    "${board2[@]}" --models mfn graph_mfn mfm mctn bert_mag > "$OUT/lane-a-cap2.log" 2>&1 || true
    "${board10[@]}" --models lf_dnn ef_lstm tfn lmf mfn graph_mfn mfm mctn alignmamba alignmamba+paper \
        > "$OUT/lane-a-cap10.log" 2>&1 || true
    "${board10[@]}" --models self_mm misa bert_mag > "$OUT/lane-a2-cap10.log" 2>&1 || true
) &
(   # lane B
    "${board2[@]}" --models mult alignmamba alignmamba+paper tfn lmf misa self_mm mmim > "$OUT/others.log" 2>&1 || true
    "${board10[@]}" --models mmim > "$OUT/lane-b-cap10.log" 2>&1 || true
) &
wait
"${board2[@]}" --reference mmsa                 # every model: all finished, so this writes the summary
"${board10[@]}" --models lf_dnn ef_lstm tfn lmf mfn graph_mfn mfm mctn misa bert_mag self_mm mmim alignmamba \
    alignmamba+paper --reference mmsa
mmsa report --results-dir experiments/leaderboard-wordlevel-full --format md latex html --reference mmsa
mmsa report --results-dir experiments/leaderboard-wordlevel-full-cap10 --format md latex html --reference mmsa
