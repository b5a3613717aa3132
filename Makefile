# The two commands of the README: `make demo` (the embedded benchmark) and `make test`.
# Both set up everything on a fresh machine: .venv, the package with its test extra,
# the Debian package with Fashion-MNIST's original IDX files, and the Debian fortunes
# packages (English, German, Spanish, Italian fortune cookies: the embedded text data).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.plexbench-installed
FMNIST_DIR := /usr/share/datasets/fashion-mnist
# fortunes puts its files in /usr/share/games/fortunes, fortunes-{de,es,it} in its de/, es/, it/.
FORTUNES_DIR := /usr/share/games/fortunes
FORTUNES_PACKAGES := fortunes fortunes-de fortunes-es fortunes-it
PYTEST_ARGS ?=

.PHONY: demo test setup data clean-cache

setup: $(STAMP) data

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

# Fashion-MNIST comes from Debian's dataset-fashion-mnist (original IDX files).
data:
	@if [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "installing Debian package dataset-fashion-mnist"; \
	    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null)); \
	  else \
	    echo "Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist' (files go to $(FMNIST_DIR))"; exit 2; \
	  fi; \
	fi
	@if [ ! -f $(FORTUNES_DIR)/computers ] || [ ! -d $(FORTUNES_DIR)/de ] || [ ! -d $(FORTUNES_DIR)/es ] || [ ! -d $(FORTUNES_DIR)/it ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "installing Debian packages $(FORTUNES_PACKAGES)"; \
	    (apt-get install -y -qq $(FORTUNES_PACKAGES) >/dev/null 2>&1 || \
	     (apt-get update -qq && apt-get install -y -qq $(FORTUNES_PACKAGES) >/dev/null)); \
	  else \
	    echo "fortunes missing: run 'sudo apt-get install $(FORTUNES_PACKAGES)' (files go to $(FORTUNES_DIR))"; exit 2; \
	  fi; \
	fi

demo: setup
	$(BIN)/plexbench demo

test: setup
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

clean-cache:
	rm -rf .cache
