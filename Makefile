# Two entry points (README's Quick start): `make demo` and `make test`. Both set the project up first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# W&B runs offline unless the caller says otherwise; albumentations must not look for updates online.
export WANDB_MODE ?= offline
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "Installing gradwatch and its dependencies into $(VENV) (6.3 GB with torch's CUDA build): pip lists each download, then unpacks for about a minute without a word"
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

setup: $(STAMP)

# The quick-start sweep, locally on Optuna (W&B offline): 8 trials, 2 at a time; rerun to resume or reprint.
# Then its report: one HTML file, opened in any browser with no network.
demo: setup
	$(BIN)/gradwatch sweep run sweeps/quickstart.yaml --local --workers 2
	$(BIN)/gradwatch report runs/sweeps/quickstart

test: setup lint
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

# Every benchmark in full, one after another (bench/README.md): over half an hour on 2 cores.
bench: setup
	$(BIN)/python bench/lightning_overhead.py
	$(BIN)/python bench/augment_throughput.py
	$(BIN)/python bench/gradient_overhead.py
	$(BIN)/python bench/fsdp_overhead.py
	$(BIN)/python bench/sweep_controller.py
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/sweep_workers.py
	$(BIN)/python bench/report_speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
