# Two commands a user needs: `make demo` and `make test`. Both create .venv on first use and are
# idempotent. torch==2.13.0 (CPU) is installed first, and pinned by constraints.txt for everything
# after it, so that no dependency pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[all,dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/flowdppo demo --out runs/demo

lint: $(STAMP)
	$(PY) -m ruff check flowdppo tests benchmarks
	$(PY) -m ruff format --check flowdppo tests benchmarks
	$(PY) -m mypy

test: lint
	$(PY) -m pytest -q -n 2

bench: $(STAMP)
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
