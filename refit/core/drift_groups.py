"""The drift signal groups, named where both the settings (which validate ``REFIT_DRIFT_TRIGGERS``)
and ``refit.drift`` (which measures them) can read them, without the settings importing drift."""

# In this order: the order signals are listed in a drift report.
GROUPS = ("performance", "embeddings", "text", "descriptors", "labels", "predictions", "features")

# The groups whose drift triggers a retrain on its own when ``REFIT_DRIFT_TRIGGERS`` is not set
# (README "Drift policy" gives the measurements behind the choice).
DEFAULT_TRIGGERS = GROUPS
