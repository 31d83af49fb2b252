#!/usr/bin/env bash
# The 80-step fits quoted in README.md ("Training HTS-AT from scratch"): the demo config, 80 steps
# of batch 16, one validation (100 clips x 5 captions), with the audio tower's training settings
# varied. Prints validation t2a mAP@10 of the co-attention scores and of the dual shortlist.
# ~2.5 min per fit on 2 idle CPU cores.   bash docs/demo/short_fits.sh   (after `make demo-data`)
set -euo pipefail
cd "$(dirname "$0")/../.."
COATTN=${COATTN:-coattn}
OUT=${OUT:-runs/demo_short_fits}
A=--model.audio_encoder.init_args
declare -A RUNS=(
  [laion_clap_defaults]="$A.spec_augment=true $A.frozen_norm=false $A.drop_path_rate=0.1"
  [frozen_eval_mode]="$A.freeze=true"
  [frozen_norm_no_specaug_drop_path_lr0]="$A.drop_path_rate=0.1 --model.optim.audio_encoder_lr=0"
  [demo_settings]=""
)
for name in laion_clap_defaults frozen_eval_mode frozen_norm_no_specaug_drop_path_lr0 demo_settings; do
  rm -rf "${OUT:?}/$name"  # a re-run starts over (coattn refuses a fresh fit over an existing run)
  # shellcheck disable=SC2086
  COATTN_RUN_DIR="$OUT/$name" "$COATTN" fit --config experiments/demo.yaml --trainer.max_epochs=1 \
    --trainer.limit_train_batches=80 --trainer.enable_progress_bar=false --trainer.log_every_n_steps=10 \
    --model.evaluation.bootstrap=0 ${RUNS[$name]} > "$OUT.$name.log" 2>&1
  python - "$OUT/$name" "$name" <<'PY'
import csv, glob, sys
rows = list(csv.DictReader(open(sorted(glob.glob(f"{sys.argv[1]}/logs/*/metrics.csv"))[-1])))
val = [r for r in rows if r.get("val/t2a_mAP@10")][-1]
print(f"{sys.argv[2]:40s} val t2a mAP@10 {100 * float(val['val/t2a_mAP@10']):5.1f} %   "
      f"dual shortlist {100 * float(val['val/dual_t2a_mAP@10']):5.1f} %")
PY
done
