# The README's two commands: `make demo` and `make test`. Both create .venv and install what they need.
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin

.PHONY: setup demo test fixtures benchmark reproduce

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml plugins/kktembed-squared-relu/pyproject.toml .ci/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c .ci/constraints.txt torch
	$(BIN)/python -m pip install --quiet -c .ci/constraints.txt -e '.[test]'
	$(BIN)/python -m pip install --quiet -c .ci/constraints.txt -e plugins/kktembed-squared-relu
	touch $@

demo: setup
	$(BIN)/kktembed check fixtures/mlp_gd_digits38.safetensors

test: setup
	$(BIN)/python -m pytest -q tests plugins/kktembed-squared-relu/tests

fixtures: setup
	$(BIN)/python fixtures/make_fixtures.py

benchmark: setup
	$(BIN)/python benchmarks/bench_check.py

reproduce: setup
	bash docs/reproduce_paper.sh
