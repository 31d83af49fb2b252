#!/usr/bin/env bash
# The mechanism study of docs/ablations.md: what each part of the stage-2 recipe brings.
# Every variant starts from the same stage-1 dual encoder (STAGE1) and changes one thing of
# experiments/demo.yaml; `coattn test` writes each variant's metrics.json (fused and pair-alone
# t2a mAP@10, the dual branch, the order probe), docs/ablations/mechanism.py tabulates them.
#   coattn synth data/demo --seed 0
#   coattn fit --config experiments/demo_dual.yaml                    # stage 1 -> runs/demo_dual
#   bash docs/ablations/run_mechanism.sh                              # a few minutes a variant on 2 idle cores
#   python docs/ablations/mechanism.py runs/mechanism
set -euo pipefail
export HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
COATTN=${COATTN:-coattn}
OUT=${OUT:-runs/mechanism}
STAGE1=${STAGE1:-runs/demo_dual/checkpoints/best.ckpt}
SEEDS=${SEEDS:-0}
ONLY=${ONLY:-}   # e.g. ONLY="positions_none no_caption_negatives": run only these variants
CFG=experiments/demo.yaml
C=--model.cascade.init_args
L=--model.loss

variant() {  # $1 name, rest: overrides of demo.yaml. A finished variant (metrics.json) is skipped.
  local name=$1; shift
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  for seed in $SEEDS; do
    local dir="$OUT/$name/seed$seed"
    [ -f "$dir/results/test/metrics.json" ] && continue
    echo "== $name seed $seed $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
    COATTN_RUN_DIR=$dir $COATTN fit --config $CFG --seed_everything "$seed" --model.init_from "$STAGE1" "$@" \
      > "$OUT/$name.seed$seed.log" 2>&1
    COATTN_RUN_DIR=$dir $COATTN test --config $CFG --seed_everything "$seed" --model.init_from "$STAGE1" "$@" \
      --ckpt_path "$dir/checkpoints/best.ckpt" >> "$OUT/$name.seed$seed.log" 2>&1
  done
}
mkdir -p "$OUT"
variant recipe
variant epochs8 --trainer.max_epochs=8   # stage 2 trained longer (8 epochs instead of 3)
variant positions_none $C.positions=none
variant no_caption_negatives $L.caption_negatives=false
variant time_negatives $L.time_negatives=true
variant hard_k4 $L.pair_negatives=hard $L.pair_k=4    # K hardest (by dual score) + R = 8 random negatives per
variant hard_k8 $L.pair_negatives=hard                # caption and per clip instead of B x B
variant hard_k16 $L.pair_negatives=hard $L.pair_k=16
variant random_16 $L.pair_negatives=hard $L.pair_k=0 $L.pair_random=16   # as many passes as hard_k8, random only
variant single $C.kind=single
variant stacking $C.kind=stacking
variant depth1 $C.depth=1
variant depth4 $C.depth=4
variant depth8 $C.depth=8
variant width64 $C.width=64 $C.ffn_dim=128
variant temperature_0.05 --model.temperature=0.05 --model.learn_temperature=false
variant temperature_0.1 --model.temperature=0.1 --model.learn_temperature=false
# the audio tower learns too (no feature cache for it): gently, or both towers as in stage 1
variant audio_tower_1e-4 --model.audio_encoder.init_args.freeze=false --model.optim.audio_encoder_lr=1e-4
variant towers_1e-3 --model.audio_encoder.init_args.freeze=false --model.text_encoder.init_args.freeze=false \
  --model.optim.encoder_lr=1e-3 --model.feature_cache=null --data.init_args.batch_size=16 --trainer.max_epochs=2
variant no_fusion --model.evaluation.fusion=0.0   # the pair score alone (also in every run's metrics.json)
echo "mechanism study done: $OUT (python docs/ablations/mechanism.py $OUT)"
