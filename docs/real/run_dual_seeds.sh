#!/usr/bin/env bash
# Stage 1 of the pretrained regime on seeds 0-2: the dual encoder trained to convergence (early stopping), then
# tested. Seed 0 is experiments/real/dual.yaml's own run folder (runs/real_dual, what `make demo` trains); other
# seeds go to <PREFIX>_s<k>. Arguments are overrides passed to both commands (e.g. another data root).
#   SEEDS="0 1 2" bash docs/real/run_dual_seeds.sh
#   PREFIX=runs/x4/dual bash docs/real/run_dual_seeds.sh --data.init_args.root data/real_x4   # docs/ablations.md
set -euo pipefail
export HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
COATTN=${COATTN:-coattn}
SEEDS=${SEEDS:-"0 1 2"}
CFG=${CFG:-experiments/real/dual.yaml}
PREFIX=${PREFIX:-runs/real_dual}
for seed in $SEEDS; do
  dir=$PREFIX; [ "$seed" = 0 ] || dir=${PREFIX}_s$seed
  if [ ! -f "$dir/results/test/metrics.json" ]; then
    mkdir -p "$(dirname "$dir")"
    echo "== dual seed $seed $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
    COATTN_RUN_DIR=$dir $COATTN fit --config "$CFG" --seed_everything "$seed" --ckpt_path last "$@" > "$dir.fit.log" 2>&1
    COATTN_RUN_DIR=$dir $COATTN test --config "$CFG" --seed_everything "$seed" "$@" \
      --ckpt_path "$dir/checkpoints/best.ckpt" > "$dir.test.log" 2>&1
    echo "   done $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  fi
done
