PY := .venv/bin/python
.PHONY: setup demo test test-fast bench clean

setup:
	bash scripts/provision.sh

# The main job: erase a concept in a real ComfyUI graph and leave before/after images.
demo: setup
	$(PY) scripts/demo.py $(DEMO_ARGS)

# Everything: core unit tests, real-ComfyUI integration, end-to-end over HTTP.
test: setup
	$(PY) -m pytest -q -ra

# Core only (no ComfyUI): seconds.
test-fast: setup
	$(PY) -m pytest -q -m "not comfy and not e2e"

clean:
	rm -rf .cache output test-artifacts
