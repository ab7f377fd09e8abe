"""The gate's dev set follows the data: each snapshot's dev-split rows join it as a recorded
version, and none of them ever trains a model."""

from sqlalchemy import text

from refit.data.devset import dev_periods, dev_rows, ensure_devset, grow_devset
from refit.data.ingest import ingest_file
from refit.data.snapshots import SplitConfig, snapshot_rows, split_of, take_snapshot
from refit.data.validate import IngestRules
from refit.ops.synth import generate_feedback, write_feedback
from refit.training.modeling import training_data

RULES = IngestRules(labels=("negative", "neutral", "positive"))
SPLIT = SplitConfig()
LABELS = ["negative", "neutral", "positive"]


def arrive(engine, tmp_path, n: int, seed: int):
    ingest_file(
        engine, write_feedback(generate_feedback(n, seed=seed, id_prefix=f"s{seed}"), tmp_path / f"{seed}.csv"), RULES
    )
    return take_snapshot(engine, SPLIT)


def test_each_snapshot_grows_the_dev_set_as_a_recorded_version_and_no_dev_row_reaches_training(engine, tmp_path):
    first = arrive(engine, tmp_path, 300, 1)
    devset = ensure_devset(engine, SPLIT, first.watermark_to, "initial: first gate")
    assert grow_devset(engine, SPLIT, devset, first.watermark_to, first.id) == devset  # nothing new: no version
    versions = [devset]
    for seed in (2, 3):
        snapshot = arrive(engine, tmp_path, 300, seed)
        grown = grow_devset(engine, SPLIT, versions[-1], snapshot.watermark_to, snapshot.id)
        added = grown.rows - versions[-1].rows
        assert grown.version == versions[-1].version + 1 and grown.watermark == snapshot.watermark_to
        assert added > 0 and grown.reason.startswith(f"grown with snapshot {snapshot.id}: +{added} dev rows")
        versions.append(grown)

        # the new version keeps every earlier dev row and adds the snapshot's dev-split rows
        rows = dev_rows(engine, grown, SPLIT)
        earlier = set(dev_rows(engine, versions[-2], SPLIT)["feedback_id"])
        assert earlier < set(rows["feedback_id"]) and len(rows) == grown.rows
        assert all(split_of(fid, SPLIT) == "dev" for fid in rows["feedback_id"])
        periods = dev_periods(engine, rows["id"])
        assert (periods == f"snapshot {snapshot.id}").sum() == added

        # no dev row trains: each dev row's text is marked, and no marked text reaches the training
        # rows or the validation fold
        frame = snapshot_rows(engine, snapshot, SPLIT)
        is_dev = frame["feedback_id"].isin(set(rows["feedback_id"]))
        assert is_dev.sum() == len(rows) and (frame.loc[is_dev, "split"] == "dev").all()
        frame.loc[is_dev, "text"] = "dev row " + frame.loc[is_dev, "feedback_id"]
        data = training_data(frame, "classification", LABELS, seed=0, val_fraction=0.15)
        used = list(data.train_texts) + list(data.dev_texts)
        assert len(used) == (frame["split"] == "train").sum()
        assert not [t for t in used if t.startswith("dev row ")]

    with engine.connect() as conn:
        recorded = conn.execute(text("SELECT version, reason FROM dev_sets ORDER BY version")).all()
    assert [v for v, _ in recorded] == [1, 2, 3]
    assert recorded[0].reason == "initial: first gate"
