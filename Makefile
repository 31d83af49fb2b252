# coattn: two commands do everything on a fresh machine.
#   make demo   install, synthesise the demo dataset, train, test, print the results table
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
PYTEST_ARGS ?=

# Offline by default: pretrained weights come from local paths; W&B writes offline runs.
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install browsers test demo demo-data demo-fit demo-test clean-demo

install:
	@VENV="$(VENV)" PYTHON="$(PYTHON)" bash .ci/install.sh

# Debian's chromium + chromium-driver for tests/test_serve.py (a check when present, apt-get when not)
browsers:
	@bash .ci/browsers.sh

test: install browsers
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install demo-data demo-fit demo-test

demo-data:
	$(COATTN) synth $(DEMO_DATA) --seed 0

# Two stages (README "The two-stage recipe"): the dual encoder aligns the towers, then the cascade
# learns on top of them, frozen. --ckpt_path last: a second `make demo` resumes (or finds a run done).
demo-fit:
	$(COATTN) fit --config experiments/demo_dual.yaml --ckpt_path last
	$(COATTN) fit --config experiments/demo.yaml --ckpt_path last

# Both stages' test results, then the comparison table (dual baseline first).
demo-test:
	$(COATTN) test --config experiments/demo_dual.yaml --ckpt_path $(DEMO_DUAL_RUN)/checkpoints/best.ckpt
	$(COATTN) test --config experiments/demo.yaml --ckpt_path $(DEMO_RUN)/checkpoints/best.ckpt
	$(COATTN) compare $(DEMO_DUAL_RUN)/results/test/metrics.json $(DEMO_RUN)/results/test/metrics.json \
	  --names "dual encoder (stage 1)" "co-attention (stage 2, fused)"

clean-demo:
	rm -rf $(DEMO_DATA) $(DEMO_RUN) $(DEMO_DUAL_RUN) runs/feature_cache
