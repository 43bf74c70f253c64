# Two commands for a fresh machine with Python 3.11+ and pip:
#   make repro      set up .venv and run the pipeline (dvc repro)
#   make test       set up .venv and run the whole test suite (what CI runs, after make lint)
#   make test-fast  the unit tests alone (no trained models, no services): under 2 minutes
#   make lint       ruff (pycodestyle, pyflakes, isort, bugbear, pyupgrade) and mypy on src/
#   make bench      the performance benchmark on the real data (../shared), reports/benchmark.md
#   make ui         the MLflow UI of the tracking store on 127.0.0.1:5000 (a tracking server's: its link)
#   make plots      the DVC plots as dvc_plots/index.html, which draws with no network
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# No phoning home: MLflow telemetry and DVC analytics / update checks are off (DVC's also in .dvc/config).
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1
# Quieter TensorFlow start-up logs.
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: repro test test-fast lint bench venv ui plots clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is needed, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lint]'
	touch $@

repro: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# Two workers, one test file each at a time, in collection order (the longest files first: tests/conftest.py).
test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

test-fast: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

# The performance benchmark (bench/README.md): the whole pipeline from an empty cache and more; needs ../shared.
bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench.run \
		--data ../shared/data/cats_and_dogs_filtered.zip --weights ../shared/weights/vgg16_notop.h5

# The MLflow UI of the tracking store (catsdogs ui): the link it prints opens the training runs.
ui: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/catsdogs ui

plots: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/catsdogs plots -o dvc_plots

clean:
	rm -rf $(VENV) .pytest_cache
