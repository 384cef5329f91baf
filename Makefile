# Two commands for a newcomer: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deform-robust-installed
PKGS := torchattacks_deform fgr_defense deform_robust eval benchmarks

.PHONY: install demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,robustbench]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m eval demo

lint: install
	$(PY) -m ruff check $(PKGS) tests docs

typecheck: install
	$(PY) -m mypy $(PKGS)

unit: install
	OMP_NUM_THREADS=2 $(PY) -m pytest -q

test: lint typecheck unit

bench: install
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
