# membrane: `make demo` and `make test` are all a fresh machine needs (both install first).
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
export PATH := $(VENV)/bin:$(PATH)

.PHONY: install demo test test-unit test-priv bench clean-lab

install:
	@bash scripts/install.sh

demo: install
	$(PY) -m membrane_testkit.lab.demo

test: install
	$(PY) -m pytest -q tests

test-unit: install
	$(PY) -m pytest -q tests/unit

bench: install
	$(PY) -m tests.bench.run

# Removes whatever a crashed test or demo left behind (only objects named mbt-/mbdemo-).
clean-lab:
	$(PY) -m membrane_testkit.lab.cleanup
