# Two commands do all set-up on a fresh machine (Python 3.11+, make):
#   make train   create .venv from uv.lock (core packages), run the main job
#   make test    add the test extras from the same lock, run the test suite
#   make lint    ruff's linter and formatter check, as CI runs them
#   make server  the team's MLflow server on PostgreSQL in ./team-server (PORT=5000 HOST=127.0.0.1);
#                make server-stop stops it
# Every environment is installed from uv.lock, resolved once for the project and all its extras, so an extra
# never changes a core package's version: what `make train` installs is what the tests ran against.
# After editing pyproject.toml's dependencies, or to move to current releases: make lock.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# uv itself lives in its own small venv (uv sync would remove it from .venv), at a pinned version.
UV_VERSION := 0.13.9
TOOLS  := .tools
UV     := $(TOOLS)/bin/uv
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
# --locked: fail rather than install anything but the lock (a stale lock is an error: make lock).
# --inexact: an extra added later (test, server) does not remove another one installed before it.
SYNC   := $(UV) sync --locked --inexact
# Stamps: reinstall only when the lock changes.
CORE   := $(VENV)/.installed-core
TEST   := $(VENV)/.installed-test
SERVER := $(VENV)/.installed-server
PORT   ?= 5000
HOST   ?= 127.0.0.1

.PHONY: train test lint test-user-env sweep ui server server-stop lock extra clean

train: $(CORE)
	$(BIN)/charrnn-train

# One BLAS thread per xdist worker: two workers already fill two cores, and oversubscribed BLAS
# threads make the engine's small matmuls about ten times slower.
test: $(TEST)
	OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -n 2

# ruff, configured in pyproject.toml: lint, then check the formatting (`$(BIN)/ruff format .` applies it).
lint: $(TEST)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The sweep, kill and Ctrl-C tests again, with every command they start taken from the environment `make train`
# builds (core packages only, in .venv-core): a sweep that needs a package only the test extras bring fails here.
# The Ray, submitit and Optuna plugins are test extras, so their tests stay in `make test`.
test-user-env: $(TEST) $(UV)
	UV_PROJECT_ENVIRONMENT=.venv-core $(UV) sync --locked
	CHARRNN_APP_BIN=$(CURDIR)/.venv-core/bin OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
		$(BIN)/python -m pytest -n 2 tests/test_cli_sweep.py tests/test_faults.py tests/test_sweep_edges.py \
		"tests/test_cli_train.py::test_sigterm_kills_with_checkpoint_and_resume_with_a_stop_limit_logs_the_uninterrupted_numbers" \
		-k "not ray and not submitit and not optuna and not cluster_launchers"

sweep: $(CORE)
	$(BIN)/charrnn-train experiment=grid hydra/launcher=charrnn

# MLflow 3's job runner (GenAI judges and trace roll-ups) adds eight processes and ~0.5 GB: not needed here.
ui: $(CORE)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db

server: $(SERVER)
	@$(BIN)/python -m charrnn_experiments.team_server start --dir team-server --port $(PORT) --host $(HOST)

server-stop: $(CORE)
	@$(BIN)/python -m charrnn_experiments.team_server stop --dir team-server

# Re-resolve uv.lock to the newest releases pyproject.toml allows (commit the result with the change).
lock: $(UV)
	$(UV) lock --upgrade

# Any other extra from the lock, e.g. make extra NAME=bench (PyTorch CPU and numexpr for the benchmarks).
extra: $(UV)
	$(SYNC) --extra $(NAME)

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet uv==$(UV_VERSION)

$(CORE): pyproject.toml uv.lock | $(UV)
	$(SYNC)
	touch $@

$(TEST): pyproject.toml uv.lock | $(UV)
	$(SYNC) --extra test
	touch $@ $(CORE)

$(SERVER): pyproject.toml uv.lock | $(UV)
	$(SYNC) --extra server
	touch $@ $(CORE)

clean:
	rm -rf outputs multirun mlruns .pytest_cache
