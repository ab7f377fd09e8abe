"""refit: continuous retraining of a feedback-satisfaction BERT model."""

__version__ = "0.1.0"
