# `make demo` and `make test` each set up .venv on a fresh machine, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.autokd-installed
# torch and torchvision must be a matching pair, or `import timm` fails.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/autokd search --teacher vit_b --budget 1GFLOP --trials 60 --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q -rs -p no:cacheprovider

lint: $(STAMP)
	$(PY) -m ruff check autokd tests benchmarks

clean:
	rm -rf runs .pytest_cache
