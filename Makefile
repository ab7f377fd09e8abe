# Shortcuts for the local stack and the checks; the README explains each.
.PHONY: setup up down test lint

setup:
	bash scripts/setup.sh dev

up:
	.venv/bin/refit up

down:
	.venv/bin/refit down

test:
	.venv/bin/python -m pytest

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/python scripts/lint_imports.py
