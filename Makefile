# The two commands of the README:
#   make demo   set up .venv (+ apt packages), run the VALL-E then the Parler-TTS recipe on the mini corpus
#   make test   same set-up, then the test suite
# Set-up runs only when something is missing or requirements changed, so a second call starts at once.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.install-stamp
SYSTEM_STAMP := $(VENV)/.system-stamp
APT_PACKAGES := espeak-ng sox libsndfile1

.PHONY: demo test lint format install system-deps clean-demo

install: $(STAMP)

$(SYSTEM_STAMP):
	@bash tools/install_system_deps.sh $(APT_PACKAGES)
	@mkdir -p $(VENV) && touch $@

$(STAMP): requirements.txt requirements-nodeps.txt setup.py $(SYSTEM_STAMP)
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip setuptools wheel
	$(VENV)/bin/pip install --quiet -r requirements.txt
	$(VENV)/bin/pip install --quiet --no-deps -r requirements-nodeps.txt
	$(VENV)/bin/pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

test: install
	$(VENV)/bin/python -m pytest -q tests

demo: install
	bash egs/tts/VALLE/demo.sh
	bash egs/tts/ParlerTTS/demo.sh
	bash egs/tts/TokTTS/demo.sh

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean-demo:
	rm -rf data/demo exp/demo corpus/mini data/parler_demo exp/parler_demo data/demo_toktts \
		exp/demo_toktts corpus/mini_lj
