# Two commands do all set-up on a fresh machine (Python 3.11+, make):
#   make train   create .venv, install charrnn, run the main job
#   make test    create .venv, install charrnn with its test extras, run the test suite
#   make server  the team's MLflow server on PostgreSQL in ./team-server (PORT=5000 HOST=127.0.0.1);
#                make server-stop stops it
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Stamps: reinstall only when pyproject.toml changes.
CORE   := $(VENV)/.installed-core
TEST   := $(VENV)/.installed-test
SERVER := $(VENV)/.installed-server
PORT   ?= 5000
HOST   ?= 127.0.0.1

.PHONY: train test sweep ui server server-stop clean

train: $(CORE)
	$(BIN)/charrnn-train

# One BLAS thread per xdist worker: two workers already fill two cores, and oversubscribed BLAS
# threads make the engine's small matmuls about ten times slower.
test: $(TEST)
	OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -n 2

sweep: $(CORE)
	$(BIN)/charrnn-train experiment=grid hydra/launcher=charrnn

ui: $(CORE)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db

server: $(SERVER)
	@$(BIN)/python -m charrnn_experiments.team_server start --dir team-server --port $(PORT) --host $(HOST)

server-stop: $(CORE)
	@$(BIN)/python -m charrnn_experiments.team_server stop --dir team-server

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(CORE): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e .
	touch $@

$(TEST): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[test]'
	touch $@ $(CORE)

$(SERVER): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[server]'
	touch $@ $(CORE)

clean:
	rm -rf outputs multirun mlruns .pytest_cache
