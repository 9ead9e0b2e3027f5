# Two commands do everything on a fresh machine: `make test` and `make demo`.
# Each creates .venv when absent and installs the pinned dependencies (constraints.txt).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.recast-installed
PYTEST_ARGS ?=

export TF_CPP_MIN_LOG_LEVEL ?= 2
export RAY_USAGE_STATS_ENABLED ?= 0
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install install-gpu test test-slow demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==26.3
	$(PY) -m pip install -q -c constraints.txt -e ".[hf,dev]"
	touch $(STAMP)

# JAX's CUDA 12 build on top of `install` (NVIDIA driver needed; CUDA libraries come from pip).
install-gpu: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e ".[hf,dev,gpu]"

test: $(STAMP)
	$(PY) -m pytest -q --durations=15 $(PYTEST_ARGS)

# End-to-end jobs of many processes and runs killed and resumed (a 2-host Ray job killed and
# restarted, a whole study, sweeps, ColD Fusion rounds, damaged checkpoints, the benchmarks'
# flow); CI runs it after `make test`.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow --durations=15 $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/recast demo

# Every fault-injection case (kills, damaged checkpoints, torn metrics, second writers), ~20 min.
faults: $(STAMP)
	$(PY) -m pytest -q -m faults tests/faults

bench: $(STAMP)
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) build *.egg-info
