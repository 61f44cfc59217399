# Two commands on a fresh machine:  `make matrix` (install + data + the default experiment)
# and `make test` (install + the test suite). Everything lands in .venv.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: install install-run data matrix test

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first and pinned: the CPU wheel of exactly 2.13.0 (an unpinned torch pulls CUDA packages)
install-run: $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e ".[dp,he,plot]"

install: install-run
	$(BIN)/pip install -q --disable-pip-version-check -e ".[all]"

# Fashion-MNIST for the default experiment: Debian's package, unless ARENA_DATA or the file is there.
data:
	@if [ -n "$$ARENA_DATA" ] || [ -f $(FMNIST) ]; then echo "fashion-mnist: found"; else \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; fi

matrix: install-run data
	$(BIN)/python -m arena.matrix $(ARGS)

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)
