"""Incremental pulls by watermark, stable splits, snapshot hashes."""

from collections import Counter

from refit.data.ingest import ingest_file
from refit.data.snapshots import SplitConfig, iter_feedback, latest_snapshot, read_feedback, split_of, take_snapshot
from refit.data.validate import IngestRules
from refit.ops.synth import generate_feedback, write_feedback

RULES = IngestRules(labels=("negative", "neutral", "positive"))
SPLIT = SplitConfig(dev_fraction=0.15, test_fraction=0.15)


def test_pull_takes_only_new_rows(engine, tmp_path):
    ingest_file(engine, write_feedback(generate_feedback(200, seed=1, id_prefix="a"), tmp_path / "a.csv"), RULES)
    first = take_snapshot(engine, SPLIT)
    assert (first.watermark_from, first.new_rows) == (0, 200)
    assert sum(first.label_counts.values()) == 200
    assert first.window_start < first.window_end
    assert take_snapshot(engine, SPLIT) is None

    ingest_file(engine, write_feedback(generate_feedback(50, seed=2, id_prefix="b"), tmp_path / "b.csv"), RULES)
    second = take_snapshot(engine, SPLIT)
    window = read_feedback(engine, after=second.watermark_from, upto=second.watermark_to)
    assert second.watermark_from == first.watermark_to
    assert len(window) == 50
    assert set(window["feedback_id"].str[:2]) == {"b-"}
    assert second.total_rows == 250
    assert sum(second.split_counts[s] for s in ("train", "dev", "test")) == 250
    assert latest_snapshot(engine) == second


def test_late_arriving_feedback_is_pulled_once(engine, tmp_path):
    ingest_file(engine, write_feedback(generate_feedback(30, seed=1, id_prefix="a"), tmp_path / "a.csv"), RULES)
    take_snapshot(engine, SPLIT)
    old = generate_feedback(5, seed=9, id_prefix="late")  # timestamps long before the first batch's
    for row in old:
        row["created_at"] = "2020-01-01T00:00:00+00:00"
    ingest_file(engine, write_feedback(old, tmp_path / "late.csv"), RULES)
    snapshot = take_snapshot(engine, SPLIT)
    window = read_feedback(engine, after=snapshot.watermark_from, upto=snapshot.watermark_to)
    assert sorted(window["feedback_id"]) == sorted(r["feedback_id"] for r in old)


def test_split_is_stable_and_follows_the_fractions():
    ids = [f"fb-{i}" for i in range(20000)]
    first = [split_of(i, SPLIT) for i in ids]
    assert first == [split_of(i, SPLIT) for i in ids]
    shares = {k: v / len(ids) for k, v in Counter(first).items()}
    assert abs(shares["dev"] - 0.15) < 0.01
    assert abs(shares["test"] - 0.15) < 0.01
    # growing the test fraction never moves a dev row
    wider = SplitConfig(dev_fraction=0.15, test_fraction=0.25)
    assert all(split_of(i, wider) == "dev" for i, s in zip(ids, first, strict=True) if s == "dev")


def test_same_data_gives_the_same_snapshot_hash(new_database, tmp_path):
    from refit.data.db import get_engine

    path = write_feedback(generate_feedback(120, seed=5), tmp_path / "f.csv")
    hashes = []
    for _ in range(2):
        engine = get_engine(new_database())
        ingest_file(engine, path, RULES)
        hashes.append(take_snapshot(engine, SPLIT).content_hash)
    assert hashes[0] == hashes[1]
    assert len(hashes[0]) == 64


def test_pull_streams_in_chunks_with_the_same_rows(engine, tmp_path):
    ingest_file(engine, write_feedback(generate_feedback(700, seed=4), tmp_path / "f.csv"), RULES)
    whole = read_feedback(engine)
    chunks = list(iter_feedback(engine, chunk_rows=100))
    assert len(chunks) >= 2
    streamed = __import__("pandas").concat(chunks, ignore_index=True)
    assert streamed["id"].tolist() == whole["id"].tolist() == sorted(whole["id"])
    assert streamed["text"].tolist() == whole["text"].tolist()
    assert list(read_feedback(engine, after=int(whole["id"].iloc[-1]))["id"]) == []
