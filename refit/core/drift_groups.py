"""The drift signal groups, named where both the settings (which validate ``REFIT_DRIFT_TRIGGERS``)
and ``refit.drift`` (which measures them) can read them, without the settings importing drift."""

# In this order: the order signals are listed in a drift report.
GROUPS = (
    "performance",
    "estimated_performance",
    "embeddings",
    "text",
    "descriptors",
    "labels",
    "predictions",
    "features",
)

# The groups whose drift triggers a retrain on its own when ``REFIT_DRIFT_TRIGGERS`` is not set:
# every group. Each signal is tested against its own null and the family is corrected, so on real
# reviews no group drifted in more than 1 of 20 null checks at any size, and leaving one out lost
# real shifts (README "Drift policy" gives the figures).
DEFAULT_TRIGGERS = GROUPS
