# Two set-up commands for a fresh clone:  `make demo`  and  `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,onnx,ray]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m structprune demo --out runs/demo --overwrite

test: $(STAMP)
	$(PY) -m ruff check structprune tests benchmarks scripts
	$(PY) -m pytest -q -rs --durations=15

bench: $(STAMP)
	$(PY) benchmarks/bench_throughput.py --out runs/bench-throughput.json

docs: $(STAMP)
	$(PY) scripts/render_docs.py

lint: $(STAMP)
	$(PY) -m ruff check structprune tests benchmarks scripts

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
