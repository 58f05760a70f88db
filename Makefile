# dualserve: the commands a user runs. `make up` and `make test` do all the set-up themselves.
SHELL := /bin/bash
PYTHON ?= python3
UV ?= $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
VENV := .venv
RUN := $(VENV)/bin

.PHONY: help install test test-fast lint django-tests up migrate static clean bench

help:  ## List the targets.
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m pip install --user --quiet uv || $(PYTHON) -m pip install --quiet uv

install: $(UV)  ## Create .venv with the locked dependencies (uv sync --locked).
	$(UV) sync --locked --all-extras

test: install  ## Run the whole suite: pytest, then Django's own runner on the app tests.
	$(RUN)/pytest
	$(RUN)/python manage.py test --verbosity 1

test-fast: install  ## The suite without the slow, process-heavy tests.
	$(RUN)/pytest -m "not slow"

django-tests: install  ## Django's own middleware tests, Django's classes vs apps.core.native's.
	$(RUN)/python -m tests.django_suite.run $(if $(LABELS),--labels $(LABELS))

lint: install  ## ruff and mypy, as the suite runs them.
	$(RUN)/ruff check .
	$(RUN)/ruff format --check .
	$(RUN)/mypy

up: install  ## Migrate, collect static, run WSGI + ASGI + nginx on 127.0.0.1 (Ctrl-C stops all).
	$(RUN)/python -m deploy.up

bench: install  ## Benchmark every mode side by side: report in bench-results/ (ARGS="--quick").
	$(RUN)/python -m deploy.bench $(ARGS)

migrate: install
	$(RUN)/python manage.py migrate --noinput

static: install
	$(RUN)/python manage.py collectstatic --noinput --verbosity 0

clean:  ## Remove the virtualenv and local state (database, static files).
	rm -rf $(VENV) var
