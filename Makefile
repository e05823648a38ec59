# School attendance: the two commands are `make run` and `make test`; both set up what is missing first.
#
#   make run        start the demo (python -m sim.demo) after setup
#   make test       setup, then every gate: ruff, mypy (gateway), mypy (firmware as MicroPython), pytest
#                   extra pytest arguments: make test PYTEST_ARGS="-m 'not slow' -x"
#   make bench      every benchmark under bench/, then docs/BENCHMARKS.md (about 10 minutes)
#   make soak       the fault campaign (python -m sim.soak), MINUTES=10 by default: make soak MINUTES=2
#   make fuzz       coverage-guided fuzzing of every parser, SECONDS=60 per harness (docs/fuzzing.md)
#   make setup      install what is missing: apt packages (python3-venv, mosquitto, nodejs/npm),
#                   .venv with pinned Python packages, pinned MicroPython WebAssembly VM (node_modules/)
#   make lint | typecheck | typecheck-firmware | clean | distclean | constraints
#
# Setup is idempotent: stamp files are named after a hash of pyproject.toml + constraints.txt
# (.venv/.stamps/) and of package.json + package-lock.json (node_modules/), so a changed pin
# reinstalls and an unchanged tree costs a few milliseconds.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := $(VENV)/.stamps
MPY_TYPINGS := $(VENV)/mpy-typings
PYTEST_ARGS ?=

SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT_GET := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get
APT_INSTALL = $(APT_GET) update -qq && $(APT_GET) install -y -qq --no-install-recommends
PIP := $(PY) -m pip --disable-pip-version-check

content_hash = $(shell cat $(1) 2>/dev/null | sha256sum | cut -c1-16)
PY_STAMP := $(STAMPS)/python-$(call content_hash,pyproject.toml constraints.txt)
NODE_STAMP := node_modules/.stamp-$(call content_hash,package.json package-lock.json)

.PHONY: help run test setup system-deps python-deps node-deps lint typecheck typecheck-firmware \
	pytest gates browser-deps bench soak fuzz clean distclean constraints

help:
	@sed -n '3,/^#$$/p' Makefile | sed '$$d; s/^# \{0,1\}//'

# ---------------------------------------------------------------------------------------------
# Setup

setup: system-deps python-deps node-deps

# apt packages, only those missing (mosquitto: tests start their own brokers, the distro service is
# not used; Node.js only if `node` is absent). python3-venv is installed when `python3 -m venv` fails.
system-deps:
	@missing=""; \
	if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then \
		missing="$$missing mosquitto"; fi; \
	if ! command -v node >/dev/null 2>&1; then missing="$$missing nodejs npm"; \
	elif [ ! -f "$(NODE_STAMP)" ] && ! command -v npm >/dev/null 2>&1; then missing="$$missing npm"; fi; \
	if [ -n "$$missing" ]; then \
		echo "setup: installing system packages:$$missing"; \
		$(APT_INSTALL) $$missing; \
	fi

python-deps: system-deps $(PY_STAMP)

$(PY_STAMP): | system-deps
	@if ! $(PY) -m pip --version >/dev/null 2>&1; then \
		echo "setup: creating $(VENV)"; rm -rf $(VENV); \
		if ! $(PYTHON) -m venv $(VENV); then \
			echo "setup: '$(PYTHON) -m venv' failed; installing python3-venv"; rm -rf $(VENV); \
			$(APT_INSTALL) python3-venv; \
			$(PYTHON) -m venv $(VENV); \
		fi; \
	fi
	@echo "setup: installing Python packages (pinned by constraints.txt)"
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	@echo "setup: installing MicroPython stubs into $(MPY_TYPINGS)"
	rm -rf $(MPY_TYPINGS)
	$(PIP) install -q --no-deps -c constraints.txt --target $(MPY_TYPINGS) \
		micropython-esp32-stubs micropython-stdlib-stubs
	@rm -rf $(STAMPS) && mkdir -p $(STAMPS) && touch $@

# Only the tests need a browser (the dashboard's tests drive Debian's chromium headless).
browser-deps:
	@if [ ! -x /usr/bin/chromium ]; then \
		echo "setup: installing chromium for the dashboard's browser tests"; \
		$(APT_INSTALL) chromium; \
	fi

node-deps: system-deps $(NODE_STAMP)

$(NODE_STAMP): | system-deps
	@echo "setup: installing the pinned MicroPython WebAssembly VM (node_modules/)"
	@if [ -f package-lock.json ]; then npm ci --no-audit --no-fund --loglevel=error; \
	else npm install --no-audit --no-fund --loglevel=error; fi
	@rm -f node_modules/.stamp-* && touch $@

# Regenerate constraints.txt from a clean install of '.[dev]' (existing pins are kept; new packages
# get the newest compatible version). Run after changing dependencies in pyproject.toml.
constraints: system-deps
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/pip" install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'; \
	{ sed -n '/^#/p' constraints.txt; "$$tmp/venv/bin/pip" freeze --exclude-editable; } > constraints.new; \
	mv constraints.new constraints.txt; rm -rf school_attendance.egg-info
	@echo "constraints.txt regenerated"

# ---------------------------------------------------------------------------------------------
# The two commands

run: setup
	$(PY) -m sim.demo

# Every benchmark under bench/, then docs/BENCHMARKS.md (about 10 minutes; not part of `make test`).
bench: setup
	$(PY) bench/report.py

# The fault campaign (docs/soak.md): taps and faults for MINUTES, then the drain and the checks.
MINUTES ?= 10
soak: setup
	$(PY) -m sim.soak --minutes $(MINUTES)

# Every gate runs even if an earlier one failed, so one run shows all problems; pytest runs last.
test: setup browser-deps
	@failed=""; \
	$(MAKE) lint || failed="$$failed ruff"; \
	$(MAKE) typecheck || failed="$$failed mypy"; \
	$(MAKE) typecheck-firmware || failed="$$failed mypy-firmware"; \
	if [ -n "$$failed" ]; then echo "*** gates failed:$$failed (pytest runs anyway)"; fi; \
	$(MAKE) pytest || failed="$$failed pytest"; \
	if [ -n "$$failed" ]; then echo "*** FAILED:$$failed"; exit 1; fi

# ---------------------------------------------------------------------------------------------
# Gates (assume setup is done; `make test` does it)

lint:
	$(PY) -m ruff check .

# mypy --strict on the CPython side: the files listed in pyproject's [tool.mypy] that exist.
typecheck:
	@targets=$$($(PY) -c 'import pathlib, tomllib; \
		files = tomllib.load(open("pyproject.toml", "rb"))["tool"]["mypy"]["files"]; \
		ok = lambda p: p.is_file() or (p.is_dir() and any(p.rglob("*.py"))); \
		print(" ".join(f for f in files if ok(pathlib.Path(f))))'); \
	if [ -z "$$targets" ]; then echo "mypy: nothing to check yet"; \
	else echo "mypy $$targets"; $(PY) -m mypy $$targets; fi

# mypy on firmware/ and runtime-neutral protocol/ against the MicroPython ESP32 stubs.
typecheck-firmware:
	@files=$$($(PY) -m tests.project_files); \
	if [ -z "$$files" ]; then echo "mypy (MicroPython): no firmware/protocol modules yet"; \
	else echo "mypy (MicroPython stubs): $$(echo $$files | wc -w) files"; \
		$(PY) -m mypy --config-file mypy-firmware.ini $$files; fi

pytest:
	$(PY) -m pytest $(PYTEST_ARGS)

# Coverage-guided fuzzing (atheris, x86_64): each harness in fuzz/ for SECONDS, one at a time;
# new inputs are merged into fuzz/corpus/ (docs/fuzzing.md). The suite replays that corpus.
SECONDS ?= 60
fuzz: setup
	$(PY) fuzz/run.py --seconds $(SECONDS) $(FUZZ_ARGS)

# ---------------------------------------------------------------------------------------------

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache *.egg-info
	find . -path ./.venv -prune -o -path ./node_modules -prune -o -path ./.git -prune -o \
		\( -name __pycache__ -o -name '*.mpy' \) -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) node_modules
