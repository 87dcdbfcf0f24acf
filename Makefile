# The README's two commands: `make demo` and `make test`. Everything else they need is set up here.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test stop lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# compat: a plain path entry instead of an import finder, which cost wal-push ~9 ms a segment
	$(BIN)/pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pgkeeper demo

test: $(STAMP)
	$(BIN)/ruff check pgkeeper tests benchmarks
	$(BIN)/pytest -q

stop: $(STAMP)
	$(BIN)/pgkeeper demo --stop
	$(BIN)/pgkeeper server stop

lint: $(STAMP)
	$(BIN)/ruff check pgkeeper tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/backup.py

clean:
	rm -rf $(VENV) *.egg-info
