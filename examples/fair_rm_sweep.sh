#!/usr/bin/env bash
# A small Pareto sweep on the bundled data: accuracy vs best-minus-worst group gap vs Jain index.
# Trains bt; fr with alpha 0.1 / 1 / 3; fc (published form) gamma 0.5; fc inverse gamma 0.5 / 1; and fr alpha 1 over
# per-group mean allocations (--fairness_group_key category), then prints the Pareto table (also in report.md).
# 8 reward models: about 40 minutes on 2 CPU cores, a few minutes on one GPU.
# Reuses models already in OUT (e.g. from `openrlhf-fair demo --out OUT`: bt, fr_a1, fc_paper_g0.5).
set -euo pipefail
OUT=${1:-./fair_rm_sweep}
openrlhf-fair demo --sweep --reuse --out "$OUT" "${@:2}"
