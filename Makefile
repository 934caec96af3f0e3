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
