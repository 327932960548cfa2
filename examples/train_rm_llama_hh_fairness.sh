#!/usr/bin/env bash
# Reward fairness on full HH-RLHF with a Llama-3-8B SFT backbone, as in Ouyang et al. (ACL 2025), in the style of
# OpenRLHF's examples/scripts/train_rm_llama.sh. For a GPU node (8 x 80 GB); NOT run in CI, not tested here.
#
#   bash examples/train_rm_llama_hh_fairness.sh            # bt, fr, fc one after another, then the report
#   METHODS="fr" bash examples/train_rm_llama_hh_fairness.sh
#   bash examples/train_rm_llama_hh_fairness.sh slurm      # only print the commands (run them from your launcher)
#
# Needs: pip install openrlhf-fair, OpenRLHF (0.9.3-0.11.x) with flash-attn on the node, the Hugging Face hub reachable
# (or a local copy: set PRETRAIN / DATASET to paths). The paper's settings: 1 epoch, lr 2e-6, alpha 0.1,
# gamma 0.5, tau -1 (Jain); the authors used 32 pairs per device per step. Fairness is computed over each
# rank's micro-batch, so keep --train.micro_batch_size >= 2 (8 here; raise it if memory allows).
set -x

PRETRAIN=${PRETRAIN:-OpenRLHF/Llama-3-8b-sft-mixture}
DATASET=${DATASET:-Anthropic/hh-rlhf}       # helpful-base + harmless-base + online/rejection-sampled, ~160k pairs
OUT=${OUT:-./checkpoint/llama3-8b-rm-fairness}
METHODS=${METHODS:-"bt fr fc"}
MAX_LEN=${MAX_LEN:-1024}

declare -A FAIRNESS_FLAGS=(
    [bt]=""
    [fr]="--fairness_reg 0.1 --fairness_tau -1"
    [fc]="--fairness_coef 0.5 --fairness_coef_form paper --fairness_tau -1"
    [fc_inverse]="--fairness_coef 0.5 --fairness_coef_form inverse --fairness_tau -1"
)

for METHOD in $METHODS; do
read -r -d '' training_commands <<EOC
openrlhf_fair.cli.train_rm \
   --ckpt.output_dir $OUT/$METHOD \
   --ckpt.save_steps -1 \
   --logger.logging_steps 1 \
   --eval.steps -1 \
   --train.batch_size 256 \
   --train.micro_batch_size 8 \
   --model.model_name_or_path $PRETRAIN \
   --ds.param_dtype bf16 \
   --train.max_epochs 1 \
   --data.max_len $MAX_LEN \
   --ds.zero_stage 3 \
   --adam.lr 2e-6 \
   --data.dataset $DATASET \
   --data.chosen_key chosen \
   --data.rejected_key rejected \
   --ds.attn_implementation flash_attention_2 \
   --model.gradient_checkpointing_enable \
   ${FAIRNESS_FLAGS[$METHOD]}
EOC
     # --logger.wandb.key [WANDB_TOKENS]
     # HH-RLHF's chosen/rejected are whole "\n\nHuman: ... \n\nAssistant: ..." transcripts: no prompt key, no
     # chat template. --fairness_group_key does not work with --ds.packing_samples.
    # The host flags in the installed OpenRLHF's spelling (flat names such as --pretrain on 0.9.3-0.10.1).
    training_commands=$(python -m openrlhf_fair.host.compat $training_commands | tr '\n' ' ')
    if [[ ${1} != "slurm" ]]; then
        deepspeed --module $training_commands
    else
        echo "deepspeed --module $training_commands"
    fi
done
[[ ${1} == "slurm" ]] && exit 0

# Held-out, labelled test pairs for the report: HH-RLHF's harmless-base and helpful-base test files, split at the
# last assistant turn (prompt + chosen is exactly the training text), with a `category` column.
python - "$OUT/hh_test_labelled.jsonl" <<'PY'
import json, sys
from datasets import load_dataset
SEP = "\n\nAssistant:"
with open(sys.argv[1], "w") as f:
    for subset, category in (("harmless-base", "harmless"), ("helpful-base", "helpful")):
        for row in load_dataset("Anthropic/hh-rlhf", data_dir=subset, split="test"):
            cut_c, cut_r = row["chosen"].rfind(SEP) + len(SEP), row["rejected"].rfind(SEP) + len(SEP)
            prompt = row["chosen"][:cut_c]
            if prompt != row["rejected"][:cut_r]:
                continue  # the two transcripts differ before the last turn: not a clean pair
            f.write(json.dumps({"prompt": prompt, "chosen": row["chosen"][cut_c:],
                                "rejected": row["rejected"][cut_r:], "category": category}) + "\n")
PY

MODELS=()
for METHOD in $METHODS; do MODELS+=(--model "$OUT/$METHOD" --label "$METHOD"); done
openrlhf-fair report "${MODELS[@]}" --data "$OUT/hh_test_labelled.jsonl" --group-key category \
    --max-len $MAX_LEN --batch-size 16 --device cuda --attn-implementation flash_attention_2 --out "$OUT/report"
