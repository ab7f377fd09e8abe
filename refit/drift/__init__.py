"""Drift between the champion's training data and the feedback that arrived since, with Evidently.

One concept a module:

- ``policy``: :class:`DriftPolicy` (from the ``REFIT_DRIFT_*`` settings), :class:`DriftResult`, the
  decisions (``RETRAIN``, ``NO_DRIFT``, ...) and the rule (``detect``, then ``decide`` with N-of-M
  confirmation and the cooldown).
- ``windows``: the reference (the champion's training rows) and the current window, from Postgres,
  and their time-stratified samples.
- ``descriptors``: the text descriptors (length, out-of-vocabulary rate, dominant language, short).
- ``signals``: the measured frame, each column's kind, and the per-column and embeddings signals.
- ``significance``: each distribution signal's p-value under its own null at the window's sizes,
  the family correction, and the effect floor.
- ``performance``: the champion's metric on the current window against its dev-set metric.
- ``report``: Evidently's report, its HTML and JSON in the store, and the markdown table.
- ``history``: the ``drift_reports`` rows, and the earlier checks that confirmation reads.
- ``check``: ``check_drift`` (frames in, a result out) and ``run_drift_check`` (read, check, record).

The signal group names live in ``refit.core.drift_groups``, so that the settings can validate
``REFIT_DRIFT_TRIGGERS`` without importing drift.
"""
