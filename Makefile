# the same venv scripts/provision.sh builds (SAEMNESIA_VENV overrides it there too)
SAEMNESIA_VENV ?= $(CURDIR)/.venv
export SAEMNESIA_VENV
PY := $(SAEMNESIA_VENV)/bin/python
.PHONY: setup browser-deps demo lint test test-fast bench clean

setup:
	bash scripts/provision.sh

# The main job: erase a concept in a real ComfyUI graph and leave before/after images.
demo: setup
	$(PY) scripts/demo.py $(DEMO_ARGS)

browser-deps:
	bash scripts/browser_deps.sh

# Lint (rules and import order: [tool.ruff] in pyproject.toml); the test targets run it first.
lint: setup
	$(PY) -m ruff check .

# Everything: lint, core unit tests, real-ComfyUI integration, end-to-end over HTTP, browser.
test: setup browser-deps lint
	$(PY) -m pytest -q -ra

# Core only (no ComfyUI, no slow tests): seconds.
test-fast: setup lint
	$(PY) -m pytest -q -m "not comfy and not e2e and not slow"

# Speed and quality benchmarks (numbers go to benchmarks/results/*.json; tables into README).
bench: setup
	$(PY) -m pip install -q -r requirements-bench.txt -c constraints.txt
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/training_throughput.py
	HF_HUB_OFFLINE=1 $(PY) -m saemnesia_demo.bench --workers 2
	$(PY) benchmarks/tables.py

clean:
	rm -rf .cache output test-artifacts
