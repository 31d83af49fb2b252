#!/usr/bin/env bash
# Issue 20's leads in the pretrained real-sound regime: every variant starts from the same converged stage-1
# dual encoder (STAGE1) and changes experiments/real/coattn.yaml by the overrides given; `coattn test` writes each
# variant's metrics.json (fused / pair / dual, twin and other queries, order and count probes);
# docs/real/leads.py tabulates them (mean +- std over seeds).
#   coattn sounds build data/bank --tuxpaint && coattn synth --sounds data/bank data/real --seed 0
#   coattn fit --config experiments/real/dual.yaml                        # stage 1 -> runs/real_dual
#   SEEDS="0 1 2" ONLY="recipe residual" bash docs/real/run_leads.sh      # minutes a variant on 2 idle cores
#   python docs/real/leads.py runs/real_leads --dual runs/real_dual*/results/test/metrics.json
set -euo pipefail
export HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
COATTN=${COATTN:-coattn}
OUT=${OUT:-runs/real_leads}
STAGE1=${STAGE1:-runs/real_dual/checkpoints/best.ckpt}
SEEDS=${SEEDS:-0}
ONLY=${ONLY:-}   # e.g. ONLY="recipe residual": run only these variants
CFG=${CFG:-experiments/real/coattn.yaml}
L=--model.loss
D=--data.init_args

variant() {  # $1 name, rest: overrides of $CFG. A finished variant (metrics.json) is skipped.
  local name=$1; shift
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  for seed in $SEEDS; do
    local dir="$OUT/$name/seed$seed"
    [ -f "$dir/results/test/metrics.json" ] && continue
    echo "== $name seed $seed $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
    COATTN_RUN_DIR=$dir $COATTN fit --config "$CFG" --seed_everything "$seed" --model.init_from "$STAGE1" "$@" \
      > "$OUT/$name.seed$seed.log" 2>&1
    COATTN_RUN_DIR=$dir $COATTN test --config "$CFG" --seed_everything "$seed" --model.init_from "$STAGE1" "$@" \
      --ckpt_path "$dir/checkpoints/best.ckpt" >> "$OUT/$name.seed$seed.log" 2>&1
    echo "   done $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  done
}
mkdir -p "$OUT"
variant recipe                                           # experiments/real/coattn.yaml as it is
variant residual $L.residual_lambda=1.0                  # the cascade trained through s_pair + s_dual
variant twins $D.twin_batches=true                       # each clip's order twin in its batch
variant swap $L.swap_negatives=true                      # its own clip with the event segments reversed
variant grounding $L.grounding_weight=0.1                # attention grounded by the event timings
variant residual_twins_swap $L.residual_lambda=1.0 $D.twin_batches=true $L.swap_negatives=true
variant all $L.residual_lambda=1.0 $D.twin_batches=true $L.swap_negatives=true $L.grounding_weight=0.1
# the same with negatives mined by dual score (K = 3 hardest + R = 2 random per caption and per clip instead of
# B x B: 2 x 6 x B cascade passes a step instead of B^2; a twin is the dual's top confuser), and the converged
# dual branch frozen (freeze_dual: the residual term's fixed reference)
H="$L.pair_negatives=hard $L.pair_k=3 $L.pair_random=2 --model.freeze_dual=true"
variant residual_hard $H $L.residual_lambda=1.0 $D.twin_batches=true
variant all_hard $H $L.residual_lambda=1.0 $D.twin_batches=true $L.swap_negatives=true $L.grounding_weight=0.1
variant swap_grounding_hard $H $L.residual_lambda=1.0 $D.twin_batches=true $L.swap_negatives=true \
  $L.grounding_weight=0.1 $L.caption_negatives=false
echo "leads done: $OUT (python docs/real/leads.py $OUT)"
