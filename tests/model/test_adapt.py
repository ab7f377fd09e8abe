"""Task-adaptive pre-training of the encoder (refit.training.adapt) on the tiny BERT: it learns the
corpus's words, saves an encoder that fine-tuning starts from, and is cached per base model and
corpus in the work dir and in a ``file://`` store, as another worker would find it."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from refit.core.settings import Settings
from refit.models.checkpoint import verify_folder
from refit.models.fusion import FeatureSchema, build_model
from refit.models.inference import predict_texts
from refit.models.predict import Predictor
from refit.models.saving import save_checkpoint
from refit.models.train import train
from refit.registry.store import open_store
from refit.training.adapt import RECORD, adapted_encoder, corpus_version

from model_helpers import Clock, clean_settings, review_data, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

CORPUS_ROWS = 300


def _corpus(n: int, seed: int = 1) -> list[str]:
    """Synthetic reviews: a few templates and a small vocabulary, so a BERT can learn them quickly."""
    data = review_data(n, seed=seed)
    return data.train_texts + data.dev_texts


def _settings(root: Path, **overrides) -> Settings:
    """The settings of a worker whose work dir and store are under ``root`` (no .env, no REFIT_*)."""
    values = {"max_length": 64, "batch_size": 16, "num_threads": 1, "seed": 3, **overrides}
    return clean_settings(work_dir=root / "work", store_url=(root / "store").as_uri(), **values)


def _folders(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in (root / "work" / "adapted").glob("*/*"))


@pytest.fixture(scope="module")
def first(tiny_model, tmp_path_factory):
    """One adaptation of the tiny BERT on the corpus, in a worker's work dir and store; tests that
    change either work on copies."""
    root = tmp_path_factory.mktemp("adapt")
    corpus = _corpus(CORPUS_ROWS)
    return root, corpus, adapted_encoder(_settings(root), str(tiny_model), corpus)


def _copy(root: Path, to: Path, work: bool = True) -> Path:
    shutil.copytree(root / "store", to / "store")
    if work:
        shutil.copytree(root / "work", to / "work")
    return to


def test_adaptation_lowers_the_held_out_mlm_loss_and_saves_a_loadable_encoder(first, tiny_model):
    from transformers import AutoModel

    root, corpus, adapted = first
    record = adapted.record
    assert not adapted.reused
    assert adapted.corpus_version == corpus_version(corpus) and adapted.corpus_rows == len(corpus)
    assert record["stopped_by"] == "epochs" and record["steps"] == record["planned_steps"] > 0
    assert record["head_steps"] > 0  # the new head learned first, on the frozen encoder
    assert 0 < record["held_out_rows"] < len(corpus)
    # the masked-token loss on texts it never trained on fell: it learned the corpus's words
    assert record["mlm_loss_after"] < record["mlm_loss_before"] - 0.1, record

    # the folder is an encoder AutoModel loads whole (its pooler included) ...
    encoder, info = AutoModel.from_pretrained(adapted.folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    base = AutoModel.from_pretrained(tiny_model)
    weights, base_weights = encoder.state_dict(), base.state_dict()
    assert weights.keys() == base_weights.keys()
    changed = [name for name in weights if not torch.equal(weights[name], base_weights[name])]
    assert "embeddings.word_embeddings.weight" in changed  # tied to the MLM decoder, so trained
    assert any(name.startswith("encoder.layer.1.") for name in changed)
    assert not any(name.startswith("pooler.") for name in changed)  # the MLM model has no pooler
    # ... and refit's own loader takes it as a base model
    model, tokenizer = build_model(str(adapted.folder), 1, FeatureSchema())
    assert torch.equal(model.encoder.embeddings.word_embeddings.weight, weights["embeddings.word_embeddings.weight"])
    assert tokenizer("a great guitar")["input_ids"] == base_tokenizer_ids(tiny_model, "a great guitar")

    # the store holds the same files, sealed by the record, and the lineage names them
    store = open_store((root / "store").as_uri())
    stored = json.loads(store.get(f"{record['store_key']}/{RECORD}"))
    assert stored["files"] == record["files"] and stored["corpus_version"] == adapted.corpus_version
    assert adapted.lineage() == {
        "base_model": str(tiny_model),
        "adapted_on": adapted.corpus_version,
        "corpus_rows": len(corpus),
        "store_key": record["store_key"],
    }


def base_tokenizer_ids(folder: Path, text: str) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)(text)["input_ids"]


def test_a_cached_adaptation_serves_until_the_corpus_outgrows_it(first, tiny_model, tmp_path):
    root, corpus, adapted = first
    worker = _copy(root, tmp_path)
    settings = _settings(worker)
    before = _folders(worker)

    # the same corpus, in another order: reused, nothing trained
    again = adapted_encoder(settings, str(tiny_model), list(reversed(corpus)), clock=Clock())
    assert again.reused and again.corpus_version == adapted.corpus_version
    assert again.record["created_at"] == adapted.record["created_at"]
    assert _folders(worker) == before
    # grown by less than the refresh share (0.5): still the cached one
    grown = corpus + _corpus(100, seed=2)
    assert len(grown) < 1.5 * len(corpus)
    still = adapted_encoder(settings, str(tiny_model), grown)
    assert still.reused and still.corpus_version == adapted.corpus_version and _folders(worker) == before

    # grown past it: adapted anew, from the base model, on the whole corpus
    outgrown = corpus + _corpus(160, seed=2)
    assert len(outgrown) >= 1.5 * len(corpus)
    fresh = adapted_encoder(settings, str(tiny_model), outgrown)
    assert not fresh.reused
    assert fresh.corpus_version == corpus_version(outgrown) != adapted.corpus_version
    assert fresh.corpus_rows == len(outgrown) and fresh.record["mlm_loss_after"] < fresh.record["mlm_loss_before"]
    assert len(_folders(worker)) == len(before) + 1 and fresh.folder.is_dir()
    # and the newest adaptation is the one reused from then on
    assert adapted_encoder(settings, str(tiny_model), outgrown + corpus[:10]).corpus_version == fresh.corpus_version


def test_a_fresh_worker_reuses_the_adaptation_from_the_store(first, tiny_model, tmp_path):
    root, corpus, adapted = first
    worker = _copy(root, tmp_path, work=False)  # the store only: an empty work dir
    reused = adapted_encoder(_settings(worker), str(tiny_model), corpus, clock=Clock())
    assert reused.reused and reused.corpus_version == adapted.corpus_version
    assert reused.folder == worker / "work" / "adapted" / adapted.folder.parent.name / adapted.corpus_version
    verify_folder(reused.folder, reused.record)  # every file as the record says
    weights = "model.safetensors"
    assert (reused.folder / weights).read_bytes() == (adapted.folder / weights).read_bytes()
    assert reused.lineage() == adapted.lineage()


def test_a_damaged_download_is_not_used(first, tiny_model, tmp_path):
    root, corpus, adapted = first
    worker = _copy(root, tmp_path, work=False)
    weights = worker / "store" / adapted.record["store_key"] / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    # the budget (a clock that runs fast) keeps the new adaptation short
    anew = adapted_encoder(_settings(worker, adapt_budget_minutes=0.05), str(tiny_model), corpus, clock=Clock())
    assert not anew.reused and anew.record["stopped_by"] == "budget"


def test_the_budget_stops_an_adaptation(tiny_model, tmp_path):
    corpus = _corpus(CORPUS_ROWS)
    settings = _settings(tmp_path, adapt_budget_minutes=1)  # 60 s of a clock that moves 1 s a read
    adapted = adapted_encoder(settings, str(tiny_model), corpus, clock=Clock())
    record = adapted.record
    assert record["stopped_by"] == "budget"
    assert record["head_steps"] > 0 and 0 < record["steps"] < record["planned_steps"]
    assert record["seconds"] <= 60
    assert (adapted.folder / "model.safetensors").is_file() and (adapted.folder / "config.json").is_file()


def test_an_empty_corpus_is_refused(tiny_model, tmp_path):
    for texts in ([], ["", "   \n"]):
        with pytest.raises(ValueError, match="empty corpus"):
            adapted_encoder(_settings(tmp_path), str(tiny_model), texts)
    assert not (tmp_path / "work").exists() and not (tmp_path / "store").exists()


def test_a_model_fine_tuned_from_the_adapted_encoder_stands_alone(first, tmp_path):
    root, _, adapted = first
    worker = _copy(root, tmp_path)
    encoder = worker / "work" / adapted.folder.relative_to(root / "work")
    data = review_data(300, seed=4)
    result = train(tiny_config(encoder, epochs=2), data)
    folder = save_checkpoint(result, tmp_path / "ckpt", lineage={"version": "v-adapted", "encoder": adapted.lineage()})
    expected = predict_texts(result.model, result.tokenizer, data.dev_texts, None, "regression", 64)

    shutil.rmtree(worker / "work")  # the adapted encoder and the work dir are gone
    predictor = Predictor(folder)
    prediction = predictor.predict(data.dev_texts)
    np.testing.assert_allclose(prediction, expected, atol=1e-5)
    assert predictor.meta["lineage"]["encoder"]["adapted_on"] == adapted.corpus_version
