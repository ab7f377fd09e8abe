"""The served mix of a checkpoint's BERT and its TF-IDF model: kept only when it beats the BERT
alone on the validation fold beyond the fold's noise."""

import numpy as np

from refit.training.blend import MIN_BERT_WEIGHT, choose_bert_weight


def _probabilities(labels: np.ndarray, n_labels: int, sure: float) -> np.ndarray:
    out = np.full((len(labels), n_labels), (1 - sure) / (n_labels - 1))
    out[np.arange(len(labels)), labels] = sure
    return out


def test_a_tfidf_that_only_says_the_majority_class_leaves_the_bert_alone():
    rng = np.random.default_rng(0)
    y = rng.choice(3, size=200, p=[0.7, 0.15, 0.15])
    guess = np.where(rng.random(200) < 0.75, y, rng.integers(0, 3, 200))
    bert = _probabilities(guess, 3, 0.9)  # sure of itself: a mix cannot move its argmax
    tfidf = _probabilities(np.zeros(200, dtype=int), 3, 0.5)
    choice = choose_bert_weight(y, bert, tfidf, "classification", 3, "macro_f1", seed=13)
    # every share ties on the fold; the tie's even mix is no better than the BERT alone
    assert choice["fitted_weight"] == MIN_BERT_WEIGHT
    assert choice["bert_weight"] == 1.0
    assert choice["over_bert"]["low"] <= 0
    assert "within the fold's noise" in choice["why"]
    assert choice["fold"]["blend"] == choice["fold"]["bert"]


def test_a_mix_that_wins_beyond_the_noise_is_kept_at_its_fitted_share():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 400)
    unsure = rng.random(400) < 0.4  # the BERT is barely wrong on these; TF-IDF is sure and right
    wrong = (y + 1) % 3
    bert = _probabilities(np.where(unsure, wrong, y), 3, 0.9)
    bert[unsure] = _probabilities(wrong[unsure], 3, 0.4)
    tfidf = np.where(unsure[:, None], _probabilities(y, 3, 0.9), _probabilities(wrong, 3, 0.36))
    choice = choose_bert_weight(y, bert, tfidf, "classification", 3, "macro_f1", seed=13)
    assert MIN_BERT_WEIGHT <= choice["bert_weight"] == choice["fitted_weight"] < 1.0
    assert choice["over_bert"]["low"] > 0
    assert choice["fold"]["blend"] > choice["fold"]["bert"]
    assert "beyond the fold's noise" in choice["why"]


def test_a_small_gain_on_a_small_fold_is_noise():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 30)
    bert, tfidf = _probabilities(y, 2, 0.9), _probabilities(y, 2, 0.6)
    # of thirty rows, the mix turns three the BERT gets wrong and two it gets right
    bert[:3], tfidf[:3] = _probabilities(1 - y[:3], 2, 0.55), _probabilities(y[:3], 2, 0.99)
    bert[3:5], tfidf[3:5] = _probabilities(y[3:5], 2, 0.55), _probabilities(1 - y[3:5], 2, 0.99)
    choice = choose_bert_weight(y, bert, tfidf, "classification", 2, "accuracy", seed=13)
    assert choice["fitted_weight"] < 1.0
    assert np.isclose(choice["fold"]["blend"] - choice["fold"]["bert"], 1 / 30)
    assert choice["over_bert"]["low"] <= 0 < choice["over_bert"]["high"]
    assert choice["bert_weight"] == 1.0


def test_regression_keeps_a_mix_of_two_independent_errors_and_refuses_a_useless_one():
    rng = np.random.default_rng(3)
    y = rng.random(500)
    bert = y + rng.normal(0, 0.1, 500)
    halves = choose_bert_weight(y, bert, y + rng.normal(0, 0.1, 500), "regression", 1, "mse", seed=13)
    assert halves["bert_weight"] < 1.0 and halves["over_bert"]["low"] > 0  # MSE roughly halves
    sharp = y + rng.normal(0, 0.02, 500)
    noise = choose_bert_weight(y, sharp, 1 - y, "regression", 1, "mse", seed=13)  # every share costs
    assert noise["fitted_weight"] == 1.0 and noise["bert_weight"] == 1.0 and noise["over_bert"] is None
    assert noise["why"] == "the fold's best share is the BERT alone"
