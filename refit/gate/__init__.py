"""The promotion gate: the rule (:mod:`refit.gate.rule`), the paired bootstrap, the baselines a first
model must beat, the slices, and the decision records (model cards, decision summaries)."""
