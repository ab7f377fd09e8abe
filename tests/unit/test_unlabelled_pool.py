"""The unlabelled pool's checks and self-training's choice of pseudo-labels, as plain functions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from refit.training.unlabelled import Pool, check_pool, fold_by_id, in_fold, pseudo_rows

pytestmark = pytest.mark.unit

ENGLISH = [
    "The strings sound great and the tuner holds its pitch after a week of playing.",
    "I returned it because the cable crackled and the jack was loose from the start.",
    "It is fine for the price, but the stand wobbles when the guitar is on it.",
    "Works as described, and the shipping was fast; I would buy it again.",
    "The pedal is noisy with my amp and the battery died in two days.",
    "My son loves this ukulele and it stays in tune better than the old one.",
] * 5
GERMAN = [
    "Die Saiten klingen gut und das Stimmgerät hält die Stimmung auch nach einer Woche.",
    "Ich habe es zurückgeschickt, weil das Kabel knackte und die Buchse locker war.",
    "Für den Preis ist es in Ordnung, aber der Ständer wackelt mit der Gitarre.",
    "Funktioniert wie beschrieben und der Versand war schnell; ich würde es wieder kaufen.",
] * 10


def test_a_pool_in_the_labelled_rows_language_passes_and_another_language_is_left_out_with_its_reason():
    reason, checks = check_pool(ENGLISH[::-1], ENGLISH)
    assert reason is None and checks["pool_common_word_share"] > 0.5 * checks["labelled_common_word_share"]

    reason, checks = check_pool(GERMAN, ENGLISH)
    assert reason.startswith("another language than the labelled rows:")
    assert "\n" not in reason and checks["pool_common_word_share"] < 0.5 * checks["labelled_common_word_share"]


def test_a_pool_that_is_mostly_one_repeated_text_is_left_out_whatever_its_case_and_spacing():
    pool = ["Thanks for the  feedback!"] * 30 + ["thanks for the feedback!"] * 10 + ENGLISH[:20]
    reason, checks = check_pool(pool, ENGLISH)
    assert reason == "mostly one repeated text: 'thanks for the feedback!' is 40 of 60 unlabelled rows"
    assert checks["top_text_share"] == pytest.approx(40 / 60, abs=1e-4)
    # Half of the pool repeated is still a pool.
    assert check_pool(["same text"] * 30 + ENGLISH, ENGLISH)[0] is None


def test_the_fold_is_drawn_by_id_the_same_rows_in_every_run_and_never_empty_or_whole():
    ids = [f"fb-{i}" for i in range(2000)]
    share = np.mean([in_fold(fid, 0.15) for fid in ids])
    assert 0.12 < share < 0.18
    train = pd.DataFrame({"feedback_id": ids, "text": ids})
    rest, fold = fold_by_id(train, 0.15)
    assert set(fold["feedback_id"]) == {fid for fid in ids if in_fold(fid, 0.15)}
    assert set(fold_by_id(train.sample(frac=1, random_state=1), 0.15)[1]["feedback_id"]) == set(fold["feedback_id"])
    assert len(rest) + len(fold) == len(train)
    two = pd.DataFrame({"feedback_id": ["a", "b"], "text": ["a", "b"]})
    assert [len(part) for part in fold_by_id(two, 0.15)] == [1, 1]


def _pool(n: int) -> Pool:
    return Pool(rows=pd.DataFrame({"feedback_id": [f"u{i}" for i in range(n)], "text": [f"t{i}" for i in range(n)]}))


def test_pseudo_labels_keep_only_confident_rows_no_class_above_its_labelled_share_and_the_cap():
    rng = np.random.default_rng(0)
    n = 400
    probabilities = rng.dirichlet([1, 1, 1], size=n)
    probabilities[:300] = [0.02, 0.03, 0.95]  # the teacher is sure of "positive" for most rows
    labelled = np.array([0] * 20 + [1] * 20 + [2] * 60)  # 100 labelled rows: positive is 60%

    pseudo = pseudo_rows(_pool(n), probabilities, "classification", labelled, confidence=0.8, share=1.0)

    top = probabilities.max(axis=1)
    chosen = [int(t[1:]) for t in pseudo.texts]
    assert all(top[i] >= 0.8 for i in chosen)
    assert pseudo.record["cap"] == 100 and len(chosen) <= 100
    counts = np.bincount(pseudo.targets, minlength=3)
    assert counts[2] == 60  # positive kept to its labelled share of the cap, though 300 rows qualified
    assert counts[0] <= 20 and counts[1] <= 20
    assert list(pseudo.targets) == list(probabilities[chosen].argmax(axis=1))
    assert pseudo.record["above_threshold"] == int((top >= 0.8).sum())


def test_pseudo_targets_in_regression_are_the_surest_share_clipped_and_capped():
    prediction = np.linspace(-0.1, 1.1, 50)
    uncertainty = np.arange(50)[::-1] / 50.0  # the last rows are the surest
    pseudo = pseudo_rows(_pool(50), prediction, "regression", np.zeros(30), 0.5, 1.0, uncertainty=uncertainty)
    assert len(pseudo.texts) == 25  # half the pool (confidence 0.5), under the cap of 30
    assert pseudo.texts == [f"t{i}" for i in range(25, 50)]
    assert pseudo.targets.max() == 1.0 and pseudo.targets.min() >= 0.0
    capped = pseudo_rows(_pool(50), prediction, "regression", np.zeros(10), 0.9, 1.0, uncertainty=uncertainty)
    assert len(capped.texts) == 10
