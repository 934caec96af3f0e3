PY ?= python
.PHONY: style quality test test-fast test-parity test-slow test-full compat-4.57 wheel-smoke

style:
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

quality:
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	$(PY) -c "import oscar_hf, oscar_hf.processors, oscar_hf.data, oscar_hf.training, oscar_hf.metrics"

# The full suite, as CI runs it (the README's test command).
test test-full:
	$(PY) -m pytest tests

# Everything but the heavy end-to-end runs (about a minute).
test-fast:
	$(PY) -m pytest tests -m "not slow"

# Numerical parity against the original implementation's fixtures.
test-parity:
	$(PY) -m pytest tests -m parity

# Only the heavy end-to-end runs (recipes, fresh-process loads, distributed).
test-slow:
	$(PY) -m pytest tests -m slow

# transformers 4.57 + huggingface_hub 0.36 side by side (not on sys.path unless a test adds it).
compat-4.57:
	$(PY) -m pip install -q --target .cache/tf457 --no-deps "transformers==4.57.6" "huggingface_hub==0.36.0" "tokenizers==0.22.1"

# Build the wheel, install it in a fresh venv and run it from outside the clone (part of .ci/run).
wheel-smoke:
	rm -rf dist && $(PY) -m pip wheel -q --no-deps --no-build-isolation -w dist .
	tmp=$$(mktemp -d); python3 -m venv $$tmp/venv && $$tmp/venv/bin/python -m pip install -q "$$(ls dist/oscar_hf-*.whl)[train,data,metrics]" \
		&& (cd $$tmp && $$tmp/venv/bin/python $(CURDIR)/.ci/wheel_smoke.py $(CURDIR) $$tmp/work); status=$$?; rm -rf $$tmp; exit $$status
