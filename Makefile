# The quickstart commands. Each one creates .venv and installs the package on first use.
#   make train   train the tiny model on the built-in Shakespeare corpus (CPU, a few minutes)
#   make test    lint and run the test suite
#   make tensorboard   view a run's TensorBoard (WORKDIR=runs/tiny) at http://127.0.0.1:$(TB_PORT)
PYTHON ?= python3
VENV ?= .venv
WORKDIR ?= runs/tiny
TB_PORT ?= 6006
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: train test tensorboard install clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else \
		"llm_jax needs Python >= 3.11, found " + sys.version.split()[0] + "; run e.g. make PYTHON=python3.12")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(BIN)/llm-jax train --config=configs/train.py:model=tiny,topology=cpu --workdir=$(WORKDIR)

# Bound to loopback: TensorBoard has no authentication (reach it from elsewhere with ssh -L $(TB_PORT):127.0.0.1:$(TB_PORT)).
tensorboard: $(STAMP)
	$(BIN)/tensorboard --logdir=$(WORKDIR) --host=127.0.0.1 --port=$(TB_PORT)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
