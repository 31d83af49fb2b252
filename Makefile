# coattn: two commands do everything on a fresh machine.
#   make demo   install, then the pretrained regime: fetch real recorded sounds (Debian's tuxpaint-stamps-default),
#               compose scenes, cache the pretrained towers' features, train the dual encoder to convergence and
#               co-attention on top, test both, print the comparison. Where Debian's package cannot be had, the
#               synthetic demo (towers from scratch on sine-wave scenes) runs instead, saying so in one line.
#   make test   install (+ the browser of the browser test), then run the whole test suite (what CI runs)
#
# The virtual environment lives outside the clone so that CI on the same machine reuses it;
# override with `make VENV=/path/to/venv ...`. `make install` is a no-op when pyproject.toml and
# the clone's location are unchanged (it compares a hash stored inside the venv).

VENV     ?= $(HOME)/.cache/coattn/venv
PYTHON   ?= python3
PY       := $(VENV)/bin/python
COATTN   := $(VENV)/bin/coattn
DEMO_DATA ?= data/demo
DEMO_RUN  ?= runs/demo
DEMO_DUAL_RUN ?= runs/demo_dual
BANK      ?= data/bank
REAL_DATA ?= data/real
REAL_DUAL_RUN ?= runs/real_dual
REAL_RUN  ?= runs/real_coattn
TUXPAINT  ?=
# stage 2 of the demo: the recipe's 10 epochs of 62 steps (6 leave it under-fitted on 1,600 scenes: README "Results")
REAL_STAGE2_EPOCHS ?= 10
# training scenes composed from the bank: 4x the 400 of round 4 lets stage 2 learn order instead of memorising scenes
# (README "Results"; the validation and test scenes do not depend on it)
REAL_TRAIN_SCENES ?= 1600
PYTEST_ARGS ?=

# Offline by default: pretrained weights come from local paths; W&B writes offline runs.
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install browsers sounds test demo demo-real demo-real-data demo-real-fit demo-real-test \
        demo-synthetic demo-data demo-fit demo-test clean-demo

install:
	@VENV="$(VENV)" PYTHON="$(PYTHON)" bash .ci/install.sh

# Debian's chromium + chromium-driver for tests/test_serve.py (a check when present, apt-get when not)
browsers:
	@bash .ci/browsers.sh

test: install browsers sounds
	$(PY) -m pytest $(PYTEST_ARGS)

# The real recordings the sound-bank tests read (Debian's tuxpaint-stamps-default, 160 MB, once)
sounds:
	@$(COATTN) sounds fetch > /dev/null

# The pretrained regime when the sounds can be had (README "Results"); TUXPAINT=path/to.deb uses a local copy.
demo: install
	@if [ -f $(REAL_DATA)/synth_metadata.json ] || $(COATTN) sounds build $(BANK) --tuxpaint $(TUXPAINT); then \
	  $(MAKE) --no-print-directory demo-real; \
	else \
	  echo "demo: the real sounds (Debian's tuxpaint-stamps-default) could not be had, see above: running the synthetic demo (towers from scratch on sine-wave scenes) instead"; \
	  $(MAKE) --no-print-directory demo-synthetic; \
	fi

demo-real: demo-real-data demo-real-fit demo-real-test

# A data root made earlier with another number of training scenes stops here in one line (its runs would resume
# on other data): `make clean-demo` or REAL_TRAIN_SCENES=<its number>.
demo-real-data:
	@case "$(REAL_TRAIN_SCENES)" in ''|*[!0-9]*) \
	  echo "demo: REAL_TRAIN_SCENES=$(REAL_TRAIN_SCENES): expected a whole number of training scenes (default 1600)" >&2; \
	  exit 2;; esac
	@if test -f $(REAL_DATA)/synth_metadata.json; then \
	  $(PY) -c "import json, sys; m = json.load(open(sys.argv[1])); n = sum(k.startswith('development/') for k in m); \
	    n == int(sys.argv[2]) or sys.exit(f'demo: {sys.argv[1]} holds {n} training scenes, REAL_TRAIN_SCENES is ' \
	    f'{sys.argv[2]}: run make clean-demo (or make demo REAL_TRAIN_SCENES={n})')" \
	    $(REAL_DATA)/synth_metadata.json $(REAL_TRAIN_SCENES); \
	else $(COATTN) synth --sounds $(BANK) $(REAL_DATA) --seed 0 --n-train $(REAL_TRAIN_SCENES); fi

# Stage 1: the dual encoder on the frozen pretrained towers, early-stopped; stage 2: co-attention on top.
demo-real-fit:
	$(COATTN) fit --config experiments/real/dual.yaml --ckpt_path last
	$(COATTN) fit --config experiments/real/coattn.yaml --ckpt_path last --trainer.max_epochs $(REAL_STAGE2_EPOCHS)

# --overwrite true: the demo owns these run folders; a second `make demo` that trained further (e.g. a larger
# REAL_STAGE2_EPOCHS) replaces its own earlier results, where a bare `coattn test` refuses to
demo-real-test:
	$(COATTN) test --config experiments/real/dual.yaml --ckpt_path $(REAL_DUAL_RUN)/checkpoints/best.ckpt --overwrite true
	$(COATTN) test --config experiments/real/coattn.yaml --ckpt_path $(REAL_RUN)/checkpoints/best.ckpt --overwrite true
	$(COATTN) compare $(REAL_DUAL_RUN)/results/test/metrics.json $(REAL_RUN)/results/test/metrics.json \
	  --names "dual encoder (converged)" "co-attention (fused)"

# The synthetic demo: HTSAT-mini + a tiny RoBERTa trained from scratch on sine-wave scenes.
demo-synthetic: demo-data demo-fit demo-test

demo-data:
	$(COATTN) synth $(DEMO_DATA) --seed 0

# Two stages (README "The two-stage recipe"): the dual encoder aligns the towers, then the cascade
# learns on top of them, frozen. --ckpt_path last: a second `make demo` resumes (or finds a run done).
demo-fit:
	$(COATTN) fit --config experiments/demo_dual.yaml --ckpt_path last
	$(COATTN) fit --config experiments/demo.yaml --ckpt_path last

# Both stages' test results, then the comparison table (dual baseline first).
demo-test:
	$(COATTN) test --config experiments/demo_dual.yaml --ckpt_path $(DEMO_DUAL_RUN)/checkpoints/best.ckpt --overwrite true
	$(COATTN) test --config experiments/demo.yaml --ckpt_path $(DEMO_RUN)/checkpoints/best.ckpt --overwrite true
	$(COATTN) compare $(DEMO_DUAL_RUN)/results/test/metrics.json $(DEMO_RUN)/results/test/metrics.json \
	  --names "dual encoder (stage 1)" "co-attention (stage 2, fused)"

clean-demo:
	rm -rf $(DEMO_DATA) $(DEMO_RUN) $(DEMO_DUAL_RUN) runs/feature_cache \
	  $(BANK) $(REAL_DATA) $(REAL_DUAL_RUN) $(REAL_RUN) runs/feature_cache_real
