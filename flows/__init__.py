"""Prefect flows: they decide the order and the branches, and nothing else."""
