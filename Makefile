# Two commands a person needs: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config/thumbwatch.yaml

.PHONY: run test stress bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/thumbwatch run --config $(CONFIG)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest

stress: $(VENV)/.installed-test
	THUMBWATCH_STRESS=1 $(BIN)/python -m pytest -m stress -p no:cacheprovider tests/test_stress.py

bench: $(VENV)/.installed-test
	$(BIN)/pip install --quiet -e '.[bench]' || echo "pyvips not installable: benchmark runs without it"
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info
