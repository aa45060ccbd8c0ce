# Set-up and everyday tasks. `make demo` and `make test` each do the whole set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch for this machine; a GPU user overrides it, e.g. `make demo TORCH=torch`.
TORCH ?= torch==2.13.0
# Read catalogue corpora from the local mirror when one sits beside the checkout, else download them.
MIRROR ?= $(if $(wildcard ../shared/corpora/SOURCES.md),../shared/corpora,)
MIRROR_OPTION := $(if $(MIRROR),--mirror $(MIRROR),)
DEMO_TIME ?= 2m

.PHONY: install demo test bench bench-quality clean

install: $(VENV)/.installed

# --system-site-packages lets an already installed torch count, so nothing is downloaded twice.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/python -m pip install -q "setuptools>=64" wheel "$(TORCH)"
	$(BIN)/python -m pip install -q --no-build-isolation -e ".[dev]"
	touch $@

demo: install
	$(BIN)/rnnlm prepare alice $(MIRROR_OPTION) -o data/alice
	$(BIN)/rnnlm train data/alice --max-time $(DEMO_TIME) -o models/alice-demo
	$(BIN)/rnnlm sample --seed "Alice was " --length 400 --temperature 0.7 --random-seed 1
	printf 'Alice was beginning to get very tired of sitting by her sister\nsister her by sitting of tired very get to beginning was Alice\n' | $(BIN)/rnnlm score

test: install
	$(BIN)/python -m pytest -q

# Each benchmark compares against a reference in the same run and writes benchmarks/results/NAME.md.
BENCHMARKS ?= $(sort $(wildcard benchmarks/*_throughput.py))
bench: install
	@for benchmark in $(BENCHMARKS); do echo "== $$benchmark"; $(BIN)/python $$benchmark || exit 1; done

# Quality under a wall-clock budget against the pytorch/examples loop, then n-best rescoring WER
# (forward and backward PTB models, 3 minutes each): about 2 hours 15 minutes on 2 cores.
bench-quality: install
	$(BIN)/python -m pip install -q --no-build-isolation -e ".[bench]"
	$(BIN)/python benchmarks/ptb.py $(if $(MIRROR),--corpora $(MIRROR),)
	$(BIN)/python benchmarks/shakespeare.py $(if $(MIRROR),--corpora $(MIRROR),)
	$(BIN)/python benchmarks/rescoring.py $(if $(MIRROR),--corpora $(MIRROR),)

clean:
	rm -rf $(VENV) data models .pytest_cache
