# The README's two commands: `make demo` and `make test`. Everything else they need is set up here.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test stop lint bench clean constraints

# compat: a plain path entry instead of an import finder, which cost wal-push ~9 ms a segment.
# setuptools warns at length that the mode is transitional; the message filter keeps it quiet.
EDITABLE := --config-settings editable_mode=compat
QUIET_BUILD := PYTHONWARNINGS="ignore:Compat editable installs"

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# constraints.txt pins every dependency: the versions the tests passed with, resolved in seconds
	$(QUIET_BUILD) $(BIN)/pip install --quiet -c constraints.txt -e '.[test]' $(EDITABLE)
	touch $(STAMP)

# Re-pin after changing the dependencies in pyproject.toml (then run the tests and commit it).
constraints: $(STAMP)
	$(QUIET_BUILD) $(BIN)/pip install --quiet --upgrade -e '.[test]' $(EDITABLE)
	{ sed -n '/^#/p' constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -vi '^pgkeeper'; } > constraints.new
	mv constraints.new constraints.txt

# Bytecode for pgkeeper's own modules, as an installed package has it: the editable install leaves
# none, and under PYTHONDONTWRITEBYTECODE every pgkeeper process would compile them from source
# (~0.25 s CPU each). compileall rewrites only what changed.
BYTECODE := $(BIN)/python -m compileall -q pgkeeper

demo: $(STAMP)
	$(BYTECODE)
	$(BIN)/pgkeeper demo

test: $(STAMP)
	$(BIN)/ruff check pgkeeper tests benchmarks
	$(BYTECODE) tests
	# Three workers, whole files each (a file's tests share clusters and servers), the longest files first
	# (tests/conftest.py SLOWEST_FIRST). On the 2-core box of 2026-12-02, idle, in one hour: 936 s with two workers,
	# 865 s with three (cores 97 % busy): the third fills the others' waits. docs/performance.md section 6.
	$(BIN)/pytest -q -n 3 --dist loadfile

# Stops the demo's PostgreSQL and Prefect server, then asks whether to remove the demo directory
# (REMOVE=1 removes it without asking; without a terminal it is kept).
stop: $(STAMP)
	$(BIN)/pgkeeper demo --stop $(if $(REMOVE),--remove,)

lint: $(STAMP)
	$(BIN)/ruff check pgkeeper tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/backup.py

clean:
	rm -rf $(VENV) *.egg-info
