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

demo-fit:  # --ckpt_path last: a second `make demo` resumes (or finds the run done); `make clean-demo` starts over
	$(COATTN) fit --config experiments/demo.yaml --ckpt_path last

demo-test:
	$(COATTN) test --config experiments/demo.yaml --ckpt_path $(DEMO_RUN)/checkpoints/best.ckpt

clean-demo:
	rm -rf $(DEMO_DATA) $(DEMO_RUN)
