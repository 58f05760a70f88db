# dualserve: the commands a user runs. `make up` and `make test` do all the set-up themselves.
SHELL := /bin/bash
PYTHON ?= python3
# One uv for everyone: another version rewrites uv.lock on its next `uv add` (a newer one added
# `size =` to every entry). pyproject.toml's required-version refuses any other; the Dockerfile
# pins the same (tests/test_quality.py keeps the three equal). Installed in .tools/, not over
# the uv a developer may have.
UV_VERSION := 0.13.9
UV := .tools/uv-$(UV_VERSION)/bin/uv
VENV := .venv
RUN := $(VENV)/bin

.PHONY: help install lock test test-fast template-test lint audit django-tests up migrate static clean bench docker-test cluster

help:  ## List the targets.
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv .tools/uv-$(UV_VERSION)
	.tools/uv-$(UV_VERSION)/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

install: $(UV)  ## Create .venv with the locked dependencies (uv sync --locked).
	$(UV) sync --locked --all-extras

lock: $(UV)  ## Re-lock after editing pyproject.toml's dependencies (uv lock).
	$(UV) lock

test: install  ## Run the whole suite: pytest, then Django's own runner on the app tests.
	$(RUN)/pytest
	$(RUN)/python manage.py test --verbosity 1

cluster: install  ## Hosts as network namespaces (root): nginx over 3 app hosts, PostgreSQL, Redis; throughput and faults, report in var/cluster-results/ (ARGS="--quick").
	$(RUN)/python -m lab.cluster $(ARGS)

template-test: install  ## Generate projects from this repo (copier), with and without the showcase; test them.
	$(RUN)/python -m lab.template check

test-fast: install  ## The suite without the slow, process-heavy tests.
	$(RUN)/pytest -m "not slow"

# pypi (PyPI's JSON API) or osv (osv.dev); AUDIT_ARGS passes more options (--osv-url URL, ...).
AUDIT_SERVICE ?= pypi
AUDIT_ARGS ?=

audit: install  ## Check every locked dependency for known vulnerabilities (pip-audit on uv.lock).
	@# The lock, not the venv: the audit sees exactly what `uv sync --locked` and the image install.
	@# --strict fails on a package the service could not check (pip-audit passes it otherwise).
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(UV) export --frozen --all-extras --all-groups --no-emit-project --quiet \
		--format requirements-txt --output-file "$$tmp/requirements.txt" && \
	$(RUN)/pip-audit --strict --require-hashes --disable-pip --progress-spinner off \
		--vulnerability-service $(AUDIT_SERVICE) $(AUDIT_ARGS) \
		--requirement "$$tmp/requirements.txt"

django-tests: install  ## Django's own middleware tests, Django's classes vs apps.dualserve.native's.
	$(RUN)/python -m tests.django_suite.run $(if $(LABELS),--labels $(LABELS))

lint: install  ## ruff and mypy, as the suite runs them.
	$(RUN)/ruff check .
	$(RUN)/ruff format --check .
	$(RUN)/mypy

up: install  ## Migrate, collect static, run WSGI + ASGI + nginx on 127.0.0.1 (Ctrl-C stops all).
	$(RUN)/python -m lab.up

# This machine's engine when `docker info` works; else (as root) Docker from Debian trixie's
# packages, brought up and removed again by the script (deploy/docker/README.md).
docker-test: install  ## Build the images, run the compose stack on a real engine, check it.
	lab/docker/run.sh

bench: install  ## Benchmark every mode side by side: report in bench-results/ (ARGS="--quick").
	$(RUN)/python -m lab.bench $(ARGS)

migrate: install
	$(RUN)/python manage.py migrate --noinput

static: install
	$(RUN)/python manage.py collectstatic --noinput --verbosity 0

clean:  ## Remove the virtualenv, the pinned uv and local state (database, static files).
	rm -rf $(VENV) .tools var
