"""Thin Prefect tasks around refit's plain functions: retries, timeouts, logging, artifacts."""

from prefect.cache_policies import INPUTS, RUN_ID, TASK_SOURCE

# The steps whose result a retried flow run reuses instead of redoing: the key holds the flow run's
# id, so a new run never sees an old result (training is never cached across runs), while a retry
# of the same run resumes after its finished snapshot, drift check, training and gate.
RESUMABLE = RUN_ID + TASK_SOURCE + INPUTS
