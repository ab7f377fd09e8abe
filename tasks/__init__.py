"""Thin Prefect tasks around refit's plain functions: retries, timeouts, logging, artifacts."""
