#!/usr/bin/env bash
# The pretrained-regime moment table (docs/moments.md): per seed, a zero-shot dual encoder trained for CLIP
# retrieval only (experiments/real/dual.yaml), then two moment runs on the same frozen towers whose dual heads
# are that dual encoder's, frozen: the co-attention head (experiments/moments/real.yaml) and the dual-features head
# (+ real_dual_head.yaml). Each test also scores the zero-shot sliding-window dual encoder (its baseline row).
#   bash docs/moments/run_seeds.sh                 # SEEDS="0 1 2" OUT=runs/moments_seeds
#   python docs/moments/summarize.py runs/moments_seeds
# Needs data/bank, data/real (coattn synth --sounds data/bank data/real --seed 0) and data/moments_real
# (coattn synth-moments data/bank data/moments_real --seconds 60 --sample-rate 44100). One thread per run; run it
# from the repository root with the venv active (`coattn` on PATH).
set -euo pipefail
SEEDS=${SEEDS:-"0 1 2"}
VARIANTS=${VARIANTS-"coattn dual_head"}   # "": the dual encoders only; two shells: VARIANTS=coattn, VARIANTS=dual_head
OUT=${OUT:-runs/moments_seeds}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false

overlay() {  # overlay.yaml: seed, run folder, its logger and checkpoint callback ($1 folder, $2 seed, $3 monitor, $4 early stop)
  mkdir -p "$1"
  cat > "$1/overlay.yaml" <<YAML
seed_everything: $2
trainer:
  default_root_dir: $1
  logger:
    - class_path: lightning.pytorch.loggers.CSVLogger
      init_args: {save_dir: $1, name: logs}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {dirpath: $1/checkpoints, filename: best, monitor: "$3", mode: max, save_top_k: 1,
                  save_last: false, enable_version_counter: false}
$4
YAML
}

for seed in $SEEDS; do
  dual=$OUT/dual/seed$seed
  if [ ! -f "$dual/checkpoints/best.ckpt" ]; then
    overlay "$dual" "$seed" "val/t2a_mAP@10" "    - class_path: lightning.pytorch.callbacks.EarlyStopping
      init_args: {monitor: val/t2a_mAP@10, mode: max, patience: 5, min_delta: 0.001}"
    coattn fit --config experiments/real/dual.yaml --config "$dual/overlay.yaml" --trainer.enable_progress_bar=false \
      > "$dual/fit.log" 2>&1
  fi
  for variant in $VARIANTS; do
    run=$OUT/$variant/seed$seed
    [ -f "$run/results/test/metrics.json" ] && continue
    overlay "$run" "$seed" "val/moment/mAP@0.5:0.95" ""
    extra=()
    [ "$variant" = dual_head ] && extra=(--config experiments/moments/real_dual_head.yaml)
    args=(--config experiments/moments/real.yaml "${extra[@]}" --config "$run/overlay.yaml"
          --model.init_from "$dual/checkpoints/best.ckpt" --data.init_args.seed "$seed")
    /usr/bin/time -f "fit wall %e s" coattn fit "${args[@]}" > "$run/fit.log" 2>&1
    coattn test "${args[@]}" --ckpt_path "$run/checkpoints/best.ckpt" > "$run/test.log" 2>&1
    tail -4 "$run/test.log"
  done
done
python docs/moments/summarize.py "$OUT" || true   # the table so far (the other variant may still run)
