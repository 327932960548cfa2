#!/usr/bin/env bash
# A small Pareto sweep on the bundled data: accuracy vs best-minus-worst group gap vs Jain index.
# Trains bt; fr with alpha 0.1 and 1; fc gamma 0.5 in the published and the inverse form; and fr alpha 1 over
# per-group mean allocations (--fairness_group_key category), then prints the Pareto table (also in report.md).
# 6 reward models: about 15 minutes on 2 idle CPU cores (2 minutes per model), less on a GPU. Add e.g.
# --methods 'bt,fr:reg=3,fc:coef=1:form=inverse,fr:reg=1:T=0.5' (without --sweep) for other points.
# Reuses models already in OUT (e.g. from `openrlhf-fair demo --out OUT`: bt, fr_a1, fc_paper_g0.5).
set -euo pipefail
OUT=${1:-./fair_rm_sweep}
openrlhf-fair demo --sweep --reuse --out "$OUT" "${@:2}"
