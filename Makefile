PY ?= python
.PHONY: style quality test test-fast

style:
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

quality:
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	$(PY) -c "import oscar_hf, oscar_hf.processors"

test:
	$(PY) -m pytest tests

test-fast:
	$(PY) -m pytest tests -m "not slow"

# transformers 4.57 + huggingface_hub 0.36 side by side (not on sys.path unless a test adds it).
compat-4.57:
	$(PY) -m pip install -q --target .cache/tf457 --no-deps "transformers==4.57.6" "huggingface_hub==0.36.0" "tokenizers==0.22.1"
