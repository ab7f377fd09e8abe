"""Explanations: integrated gradients rank the words and the features that carry the score."""

import numpy as np
import pandas as pd
import pytest

from refit.models.config import TrainData
from refit.models.explain import explain
from refit.models.predict import Predictor
from refit.models.saving import save_checkpoint
from refit.models.train import train

from model_helpers import review_data, tiny_config


@pytest.fixture(scope="module")
def predictor(tiny_model, tmp_path_factory):
    """The tiny BERT trained briefly on reviews whose score follows both their words and whether
    the buyer is on iOS, loaded from its checkpoint folder."""
    reviews = review_data(800)
    rng = np.random.default_rng(0)
    device = rng.choice(["ios", "android", "web"], size=800)
    y = np.concatenate([reviews.train_targets, reviews.dev_targets]) * 0.75 + 0.25 * (device == "ios")
    frame = pd.DataFrame({"device": device})
    data = TrainData(
        reviews.train_texts, y[:640], reviews.dev_texts, y[640:], frame.iloc[:640], frame.iloc[640:].reset_index()
    )
    result = train(tiny_config(tiny_model, epochs=3, feature_types={"device": "categorical"}), data)
    assert result.dev_metrics["spearman"] > 0.8  # the model learned what it is asked to explain
    return Predictor(save_checkpoint(result, tmp_path_factory.mktemp("explain") / "ckpt", {"version": "v-x"}))


def test_sentiment_words_rank_top_on_a_clearly_positive_and_a_clearly_negative_review(predictor):
    positive = explain(predictor, "The kettle is excellent, arrived on time, love it.", {"device": "web"})
    negative = explain(predictor, "The kettle is terrible, arrived on time, returned it.", {"device": "web"})
    assert positive.output > 0.6 > negative.output
    assert positive.top_words(1) == ["excellent"]
    assert "love" in positive.top_words(3, by="positive")
    assert negative.top_words(1) == ["terrible"]
    assert "returned" in negative.top_words(2, by="negative")
    # the neutral filler the reviews share carries little
    scores = dict(positive.words)
    assert abs(scores["arrived"]) < 0.2 * scores["excellent"]
    # token and feature attributions add up to the change from the baseline (completeness)
    for explanation in (positive, negative):
        assert abs(explanation.delta) < 0.02 * abs(explanation.output - explanation.baseline_output) + 1e-3


def test_feature_attributions_follow_the_feature_that_moves_the_score(predictor):
    text = "The novel is okay, shipping was a bit slow, does the job."
    on_ios = explain(predictor, text, {"device": "ios"})
    on_web = explain(predictor, text, {"device": "web"})
    assert on_ios.features["device"] > 0.05
    assert on_web.features["device"] < on_ios.features["device"]
    assert on_ios.output - on_web.output > 0.1
    again = explain(predictor, text, {"device": "ios"})  # fixed steps: the same input, the same answer
    assert again.words == on_ios.words and again.features == on_ios.features
