# The README's two commands: `make demo` (the main job) and `make test`.
# Each creates or reuses the virtual environment at .venv and installs what it needs.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# the shared datasets, read in place (never copied into the repository); override to point at another copy
SHARED_DATA ?= $(abspath ../shared/data)
export SMEC_SHARED_DATA := $(SHARED_DATA)

.PHONY: install test demo bench bench-scale clean

$(STAMP): setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(VENV)/bin/smec evaluate --data $(SHARED_DATA)/scifact --output outputs/demo

# figures, not pass/fail: table on stdout, outputs/bench/bench.json (+ bench.md); reuses outputs/demo/run if present
bench: $(STAMP)
	$(PY) -m benchmarks

# `smec train` (and `smec evaluate`) at N = 100k, 300k, 1M x 1024 on structured synthetic sets: per-phase time, peak
# memory, growth exponent in N -> outputs/bench/scale/scale.{json,md}. Hours on 2 cores and ~6 GB of disk, so not
# part of `make bench`; e.g. `make bench-scale SCALE_ARGS="--sizes 100000 300000"`
SCALE_ARGS ?= --evaluate
bench-scale: $(STAMP)
	$(PY) -m benchmarks.scale $(SCALE_ARGS)

clean:
	rm -rf outputs .pytest_cache
