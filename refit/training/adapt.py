"""Task-adaptive continued pre-training of the encoder: masked-language modelling on the
feedback's own text before fine-tuning, cached per base model and per corpus.

The packaged all-MiniLM-L6-v2 is a sentence-transformer: its folder holds a BERT encoder but no
masked-language-model head. :func:`adapted_encoder` puts a head on it (a fresh transform layer and
a decoder tied to the word embeddings, as BERT was pre-trained), fits the head for a few steps on
the frozen encoder, then trains the whole model on the corpus for a few epochs or until its
wall-time budget, whichever comes first (token masking, 15%), and saves only the encoder and its
tokenizer: a folder fine-tuning starts from as its base model.

An adaptation takes minutes and the corpus grows slowly, so each is cached, in the work dir and in
the object store, per base model and per corpus version::

    <work_dir>/adapted/<base key>/<corpus version>/    config.json, model.safetensors, tokenizer
                                                       files, adaptation.json
    adapted/<base key>/<corpus version>/...            the same files in the store, with
                                                       adaptation.json written last

``adaptation.json`` is the adaptation's record: how it ran, how much it lowered the masked-token
loss on a held-out slice of the corpus, and every file's size and SHA-256, which a reuse checks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from refit.core.errors import CheckpointError, StoreError
from refit.core.hashing import sha256_file
from refit.core.settings import Settings
from refit.models.checkpoint import verify_folder
from refit.models.paths import resolve_precision
from refit.models.train import length_bucketed_batches, pick_device, seed_everything
from refit.registry.layout import adapted_prefix
from refit.registry.store import AlreadyExists, ObjectStore, store_for
from refit.training.modeling import resolve_base_model
from refit.training.progress import duration

log = logging.getLogger("refit.adapt")

RECORD = "adaptation.json"  # the record of one adaptation, beside its files; written last
EPOCHS = 3  # the most passes over the corpus; the budget usually ends a large corpus's run sooner
LEARNING_RATE = 1e-4  # within BERT's continued pre-training range (5e-5 to 1e-4); short runs take the top
WEIGHT_DECAY = 0.01  # not on biases and LayerNorm weights, as in BERT's pre-training
WARMUP_SHARE = 0.06  # of the planned steps, then a linear decay to zero at the end of the last epoch
MAX_GRAD_NORM = 1.0
MASK_SHARE = 0.15  # of the tokens, each masked alone (80% [MASK], 10% a random token, 10% kept)
HELD_OUT_SHARE = 0.05  # of the corpus, never trained on: the loss before and after is measured there
HELD_OUT_MAX = 128  # rows: enough masked tokens (about 2,000) for a stable loss, few enough to cost seconds
HEAD_STEPS = 30  # steps of the new head alone on the frozen encoder, before the encoder learns (at most an epoch)
HEAD_BUDGET_SHARE = 0.25  # the head's phase ends sooner when it has taken this share of the budget
HEAD_LR = 1e-3  # the head starts from nothing: a rate that fits it in those few steps
SAVE_SECONDS = 10.0  # kept from training's share of the budget for saving (at most a tenth of the budget)
TOKENIZED = ("input_ids", "token_type_ids", "attention_mask", "special_tokens_mask")  # what the masker takes


@dataclass(frozen=True)
class Adapted:
    """An encoder adapted to a corpus, ready for fine-tuning to start from.

    Attributes:
        folder: an encoder folder that ``AutoModel`` and ``AutoTokenizer`` load (config.json,
            weights, tokenizer files), and refit's trainer as its base model.
        base_model: the base model it started from, as the caller named it.
        corpus_version: the corpus it was adapted on: ``<rows>-<digest>``.
        corpus_rows: how many texts that corpus had.
        reused: whether a cached adaptation served the call (nothing was trained).
        record: how the adaptation ran (see :func:`adapted_encoder`).
    """

    folder: Path
    base_model: str
    corpus_version: str
    corpus_rows: int
    reused: bool
    record: dict

    def lineage(self) -> dict:
        """What a checkpoint fine-tuned from this encoder records of where its encoder came from."""
        return {
            "base_model": self.base_model,
            "adapted_on": self.corpus_version,
            "corpus_rows": self.corpus_rows,
            "store_key": self.record.get("store_key"),
        }


def adapted_encoder(
    settings: Settings,
    base_model: str,
    texts: list[str],
    logger: logging.Logger | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> Adapted:
    """The base model adapted on ``texts`` (the corpus), cached or made now.

    A cached adaptation of this base model serves the call when it was made on exactly this corpus,
    or when it is the newest one (in the work dir or the store) and the corpus has not outgrown it:
    ``len(texts) < (1 + settings.adapt_refresh) * its corpus rows``. Otherwise the base model is
    adapted anew on the whole corpus, within ``settings.adapt_budget_minutes`` of wall time, and
    saved in the work dir and the store, so that another worker reuses it. Files downloaded from
    the store, and a local copy before it is reused, are checked against their SHA-256.

    The texts are feedback already redacted at ingest; they are used as they are. Blank texts are
    left out; their order does not matter.

    Args:
        settings: refit's settings: ``work_dir``, the store, ``adapt_budget_minutes``,
            ``adapt_refresh``, ``max_length``, ``batch_size``, ``seed``, ``num_threads``, ``device``,
            ``train_precision``.
        base_model: the encoder to adapt: the packaged model's name, a folder, or a model id.
        texts: the corpus.
        logger: where the progress lines go (default: ``refit.adapt``).
        clock: the time source of the budget and the progress lines, in seconds.

    Returns:
        The adapted encoder. Its ``record`` holds ``base_model``, ``base_key``, ``corpus_version``,
        ``corpus_rows``, ``held_out_rows``, ``head_steps`` (of the new head alone), ``steps`` (of the
        whole model) and ``planned_steps``, ``samples``, ``seconds`` (the whole call),
        ``train_seconds``, ``samples_per_second``, ``stopped_by`` (``budget`` or ``epochs``),
        ``mlm_loss_before`` (the base encoder's, with the head fitted) and ``mlm_loss_after`` (mean
        masked-token cross-entropy on the held-out slice, the same masks both times), the training
        settings, ``created_at``, ``store_key`` (the store prefix of its files; None when they could
        not be stored) and ``files``.

    Raises:
        ValueError: the corpus has no text, or the base model is not a BERT encoder or lacks some
            of its weights.
    """
    logger = logger or log
    corpus = [text for text in texts if isinstance(text, str) and text.strip()]
    if not corpus:
        raise ValueError("cannot adapt the encoder on an empty corpus: no non-blank texts were given")
    version = corpus_version(corpus)
    key = base_key(base_model)
    root = Path(settings.work_dir) / "adapted" / key
    store = store_for(settings)

    cached = _cached(root, store, key, version, len(corpus), settings.adapt_refresh, logger)
    if cached is not None:
        folder, record = cached
        logger.info(
            "adaptation: reusing %s of %s (adapted on %d texts, the corpus has %d)",
            record["corpus_version"], base_model, record["corpus_rows"], len(corpus),
        )  # fmt: skip
        return Adapted(folder, base_model, record["corpus_version"], record["corpus_rows"], True, record)

    started = clock()
    partial = root / f".partial-{version}-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        stats = _train(settings, resolve_base_model(base_model), corpus, partial, started, clock, logger)
        record = {
            "base_model": base_model,
            "base_key": key,
            "corpus_version": version,
            "corpus_rows": len(corpus),
            **stats,
            "seconds": round(clock() - started, 1),
            "budget_minutes": settings.adapt_budget_minutes,
            "created_at": datetime.now(timezone.utc).isoformat(),
            "files": _files(partial),
        }
        record["store_key"] = _publish(store, partial, record, logger)
        _write_record(partial, record)
        folder = _install(partial, root / version)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    logger.info(
        "adaptation: %d steps in %s (stopped by %s), held-out MLM loss %.3f -> %.3f, saved as %s",
        record["steps"], duration(record["seconds"]), record["stopped_by"],
        record["mlm_loss_before"], record["mlm_loss_after"], record["store_key"] or folder,
    )  # fmt: skip
    return Adapted(folder, base_model, version, len(corpus), False, record)


def corpus_version(texts: list[str]) -> str:
    """The version of a corpus: its size and a digest of its texts, in any order (``500-1a2b3c4d5e6f``)."""
    digest = hashlib.sha256()
    for text in sorted(texts):
        data = text.encode()
        digest.update(len(data).to_bytes(8, "big"))  # length-prefixed: no two corpora hash alike
        digest.update(data)
    return f"{len(texts)}-{digest.hexdigest()[:12]}"


def base_key(base_model: str) -> str:
    """A short, stable key of a base model's identity: its folder's name and its config.

    The same model installed at another path on another worker has the same key; two models whose
    folder name or config differ never share one (two folders of one name and config with other
    weights would: refit's base models are named, not hashed whole).
    """
    source = resolve_base_model(base_model)
    config_file = Path(source) / "config.json"
    if config_file.is_file():
        name, config = Path(source).resolve().name, json.loads(config_file.read_text())
    else:  # a model id: its config as transformers reads it
        from transformers import AutoConfig

        name, config = source, AutoConfig.from_pretrained(source).to_dict()
    identity = json.dumps({"name": name, "config": config}, sort_keys=True)
    return hashlib.sha256(identity.encode()).hexdigest()[:12]


# --- the cache -----------------------------------------------------------------------------------


def _cached(
    root: Path, store: ObjectStore, key: str, version: str, rows: int, refresh: float, logger: logging.Logger
) -> tuple[Path, dict] | None:
    """The folder and record of the cached adaptation that may serve this corpus, made local and
    checked; None when none may, or when the one that may cannot be had intact."""
    local = _local_records(root)
    remote = _store_records(store, key, logger)
    chosen = _choose({**remote, **local}, version, rows, refresh)
    if chosen is None:
        return None
    folder = root / chosen
    if chosen in local:
        try:
            verify_folder(folder, local[chosen])
            record = local[chosen]
            if record.get("store_key") is None:  # storing it failed before: another worker may want it
                record = {**record, "store_key": _publish(store, folder, record, logger)}
                _write_record(folder, record)
            return folder, record
        except CheckpointError as exc:
            logger.warning("adaptation: the local copy of %s is damaged (%s)", chosen, exc)
    if chosen in remote and _fetch(store, remote[chosen], folder, logger):
        return folder, remote[chosen]
    return None


def _choose(records: dict[str, dict], version: str, rows: int, refresh: float) -> str | None:
    """The corpus version of the adaptation that may serve: the one on exactly this corpus, else
    the newest, unless the corpus has grown by ``refresh`` of its rows since."""
    if version in records:
        return version
    if not records:
        return None
    newest = max(records.values(), key=lambda record: (record["created_at"], record["corpus_rows"]))
    return newest["corpus_version"] if rows < (1 + refresh) * newest["corpus_rows"] else None


def _local_records(root: Path) -> dict[str, dict]:
    """The records of the adaptations in the work dir, by corpus version (a folder without its
    record is an unfinished one, and not counted)."""
    records = {}
    for path in sorted(root.glob(f"*/{RECORD}")) if root.is_dir() else []:
        if path.parent.name.startswith("."):
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # damaged: as if absent, and replaced when this corpus is adapted again
        if record.get("corpus_version") == path.parent.name:
            records[path.parent.name] = record
    return records


def _store_records(store: ObjectStore, key: str, logger: logging.Logger) -> dict[str, dict]:
    """The records of the adaptations of base model ``key`` in the store, by corpus version; none
    when the store cannot be read (the work dir's still serve)."""
    prefix = adapted_prefix(key)
    records = {}
    try:
        for name in store.list(f"{prefix}/"):
            version, _, rest = name[len(prefix) + 1 :].partition("/")
            if rest != RECORD:
                continue
            try:
                record = json.loads(store.get(name))
            except json.JSONDecodeError:
                logger.warning("adaptation: the record %s in the store is corrupt; ignored", store.uri(name))
                continue
            if record.get("corpus_version") == version:
                # Where its files are is where the record was found, whatever it says.
                records[version] = {**record, "store_key": adapted_prefix(key, version)}
    except StoreError as exc:
        logger.warning("adaptation: cannot read the cached adaptations in the store (%s); using the local ones", exc)
        return {}
    return records


def _fetch(store: ObjectStore, record: dict, folder: Path, logger: logging.Logger) -> bool:
    """Download a stored adaptation into ``folder`` and check every file against its record;
    whether it arrived intact (when not, ``folder`` is left as it was)."""
    prefix = record["store_key"]
    partial = folder.parent / f".partial-{folder.name}-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        for rel in record["files"]:
            store.get_file(f"{prefix}/{rel}", partial / rel)
        verify_folder(partial, record)
        _write_record(partial, record)
        _install(partial, folder)
        return True
    except (StoreError, CheckpointError) as exc:
        logger.warning("adaptation: cannot use %s from the store (%s); adapting anew", store.uri(prefix), exc)
        return False
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _publish(store: ObjectStore, folder: Path, record: dict, logger: logging.Logger) -> str | None:
    """Upload an adaptation's files, check them, then seal them with the record; the store prefix,
    or None when the store refused (the local copy still serves this worker).

    Unsealed files of the same corpus version (an interrupted upload) are overwritten; a sealed
    adaptation of it (another worker's, made at the same time) is left alone.
    """
    prefix = adapted_prefix(record["base_key"], record["corpus_version"])
    try:
        if store.exists(f"{prefix}/{RECORD}"):
            logger.info("adaptation: another worker stored %s first; this one stays local", store.uri(prefix))
            return None
        sent = {rel: store.put_file(f"{prefix}/{rel}", folder / rel, sha256=entry["sha256"])
                for rel, entry in record["files"].items()}  # fmt: skip
        for rel, entry in record["files"].items():  # every file there, whole, before the seal
            key = f"{prefix}/{rel}"
            head = store.head(key)
            if head is None or head.size != entry["bytes"] or not store.holds(key, folder / rel, head, sent[rel]):
                raise StoreError(f"{store.uri(key)} did not arrive intact")
        body = json.dumps({**record, "store_key": prefix}, indent=2, sort_keys=True).encode()
        store.put(f"{prefix}/{RECORD}", body, if_absent=True)
    except AlreadyExists:
        logger.info("adaptation: another worker stored %s first; this one stays local", store.uri(prefix))
        return None
    except StoreError as exc:
        logger.warning("adaptation: not stored (%s); it stays in %s", exc, folder)
        return None
    return prefix


def _files(folder: Path) -> dict[str, dict]:
    """Every file of an adaptation but its record, with its size and SHA-256."""
    return {
        path.relative_to(folder).as_posix(): {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != RECORD
    }


def _write_record(folder: Path, record: dict) -> None:
    (folder / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True))


def _install(partial: Path, folder: Path) -> Path:
    """Move a finished folder into its place, replacing what was there (a damaged or older copy)."""
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(partial, folder)
    return folder


# --- the training --------------------------------------------------------------------------------


def _train(
    settings: Settings,
    source: str,
    corpus: list[str],
    folder: Path,
    started: float,
    clock: Callable[[], float],
    logger: logging.Logger,
) -> dict:
    """Adapt the encoder at ``source`` on ``corpus`` and save it (and its tokenizer) in ``folder``.

    Returns:
        How it ran: steps, samples, the held-out loss before and after, what stopped it.
    """
    previous_threads = torch.get_num_threads()
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    try:
        return _Adaptation(settings, source, corpus, started, clock, logger).run(folder)
    finally:
        torch.set_num_threads(previous_threads)


class _Adaptation:
    """One adaptation: the encoder with its MLM head, the corpus tokenized and split, the optimizers.

    It runs in two phases. First the new head alone learns, on the frozen encoder, for
    ``HEAD_STEPS`` steps or a quarter of the budget: a random head's gradients would only scramble
    what the encoder knows (fine-tuning a pretrained model under a fresh head distorts its features;
    fitting the head first lessens that). The held-out loss is measured there, the base encoder's
    with a fitted head, so the loss after shows what adapting the encoder added. Then the whole
    model trains, for ``EPOCHS`` or until the budget.
    """

    def __init__(
        self,
        settings: Settings,
        source: str,
        corpus: list[str],
        started: float,
        clock: Callable[[], float],
        logger: logging.Logger,
    ) -> None:
        from transformers import AutoTokenizer, DataCollatorForLanguageModeling

        _quiet_transformers()
        self.settings, self.clock, self.logger = settings, clock, logger
        self.budget = settings.adapt_budget_minutes * 60
        self.deadline = started + self.budget
        # Training stops early enough for the held-out loss after it and the save to fit in the
        # budget too; the evaluation's share is known once the loss before has been measured.
        self.train_deadline = self.deadline - min(SAVE_SECONDS, 0.1 * self.budget)
        seed_everything(settings.seed)  # the fresh head's initial weights, and dropout
        self.device = pick_device(settings.device)
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.encoder, self.mlm = encoder_with_mlm_head(source)
        self.mlm.to(self.device).train()
        self.precision = resolve_precision(settings.train_precision, self.device, self.mlm.config.hidden_size)

        self.rng = np.random.default_rng(settings.seed)
        order = self.rng.permutation(len(corpus))
        n_held = min(HELD_OUT_MAX, max(1, round(HELD_OUT_SHARE * len(corpus)))) if len(corpus) > 1 else 0
        held = [corpus[i] for i in order[:n_held]]
        train = [corpus[i] for i in order[n_held:]]
        self.held_out_rows = n_held
        self.rows = self._tokenized(train)
        # Masks drawn from generators of their own: the training masks do not depend on the held-out
        # slice, and the held-out loss is measured on the same masks before and after.
        self.masker = DataCollatorForLanguageModeling(self.tokenizer, mlm_probability=MASK_SHARE, seed=settings.seed)
        held_masker = DataCollatorForLanguageModeling(
            self.tokenizer, mlm_probability=MASK_SHARE, seed=settings.seed + 1
        )
        held_rows = self._tokenized(held or train)  # a one-text corpus is measured on its one text
        size = settings.batch_size
        self.held_batches = [held_masker(held_rows[i : i + size]) for i in range(0, len(held_rows), size)]

        self.steps_per_epoch = math.ceil(len(self.rows) / size)
        self.head_steps = min(HEAD_STEPS, self.steps_per_epoch)
        self.planned = EPOCHS * self.steps_per_epoch
        predictions = self.mlm.cls.predictions
        self.head_optimizer = torch.optim.AdamW([*predictions.transform.parameters(), predictions.bias], lr=HEAD_LR)
        self.optimizer = torch.optim.AdamW(_parameter_groups(self.mlm), lr=LEARNING_RATE)
        warmup = max(1, round(WARMUP_SHARE * self.planned))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: min((step + 1) / warmup, max(0.0, (self.planned - step) / max(1, self.planned - warmup))),
        )

    def _tokenized(self, texts: list[str]) -> list[dict]:
        encoded = self.tokenizer(
            texts, truncation=True, max_length=self.settings.max_length, return_special_tokens_mask=True
        )
        names = [name for name in TOKENIZED if name in encoded]
        return [{name: encoded[name][i] for name in names} for i in range(len(texts))]

    def _schedule(self):
        """Every step of the run: (where it is, for the progress lines; whether only the head learns; its rows)."""
        lengths = [len(row["input_ids"]) for row in self.rows]
        size = self.settings.batch_size
        for i, rows in enumerate(length_bucketed_batches(lengths, size, self.rng)[: self.head_steps], 1):
            yield f"fitting the new head, step {i} of {self.head_steps}", True, rows
        for epoch in range(1, EPOCHS + 1):
            for i, rows in enumerate(length_bucketed_batches(lengths, size, self.rng), 1):
                yield f"epoch {epoch} of {EPOCHS}, step {i} of {self.steps_per_epoch}", False, rows

    def run(self, folder: Path) -> dict:
        total = self.head_steps + self.planned
        progress = _Progress(self.logger, total, self.deadline, self.clock)
        embeddings = self.mlm.bert.embeddings.word_embeddings.weight
        embeddings.requires_grad_(False)  # the decoder is tied to them: the head's phase leaves them as they are
        before = None
        steps = samples = 0
        stopped_by = "epochs"
        head_done, head_over = 0, False
        first = encoder_started = self.clock()
        head_until = first + HEAD_BUDGET_SHARE * self.budget
        for done, (where, head_only, rows) in enumerate(self._schedule(), 1):
            if head_only and head_over:
                continue
            if not head_only and before is None:
                before = self._loss_before()
                embeddings.requires_grad_(True)
                encoder_started = self.clock()
            loss = self.step([self.rows[j] for j in rows], head_only)
            if head_only:
                head_done += 1
            else:
                steps, samples = steps + 1, samples + len(rows)
            progress.step(done, where, loss)
            now = self.clock()
            if done < total and now >= self.train_deadline:
                stopped_by = "budget"
                break
            head_over = head_over or now >= head_until
        ended = self.clock()
        embeddings.requires_grad_(True)
        if before is None:  # the budget ended the head's phase: the encoder is the base's
            before = after = self._loss_before()
        else:
            after = self.held_out_loss()
        self.save(folder)
        return {
            "held_out_rows": self.held_out_rows,
            "head_steps": head_done,
            "steps": steps,
            "planned_steps": self.planned,
            "samples": samples,
            "train_seconds": round(ended - first, 1),  # both phases, and the held-out loss between them
            "samples_per_second": round(samples / max(1e-9, ended - encoder_started), 1) if samples else None,
            "stopped_by": stopped_by,
            "mlm_loss_before": round(before, 4),
            "mlm_loss_after": round(after, 4),
            "masking": f"token, {MASK_SHARE:.0%}",
            "epochs": EPOCHS,
            "learning_rate": LEARNING_RATE,
            "batch_size": self.settings.batch_size,
            "max_length": self.settings.max_length,
            "seed": self.settings.seed,
            "device": str(self.device),
            "precision": self.precision,
        }

    def _loss_before(self) -> float:
        """The held-out loss of the base encoder with the fitted head; what measuring it cost is kept
        from training's share of the budget, since the loss after costs as much."""
        started = self.clock()
        loss = self.held_out_loss()
        self.train_deadline -= self.clock() - started
        return loss

    def step(self, rows: list[dict], head_only: bool = False) -> float | None:
        """One optimizer step on some rows (of the head alone, or of the whole model); their
        masked-token loss (None: nothing was masked)."""
        with self._autocast():
            loss, count = _masked_loss(self.mlm, self.masker(rows), self.device, encoder_grad=not head_only)
        optimizer = self.head_optimizer if head_only else self.optimizer
        if count:  # short texts can draw no mask: then nothing learns, and the schedule moves on
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.mlm.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if not head_only:
            self.scheduler.step()
        return loss.item() if count else None

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    @torch.no_grad()
    def held_out_loss(self) -> float:
        """The mean masked-token cross-entropy on the held-out slice, with its fixed masks."""
        self.mlm.eval()
        total, count = 0.0, 0
        for batch in self.held_batches:
            with self._autocast():
                loss, n = _masked_loss(self.mlm, batch, self.device, reduction="sum")
            total, count = total + float(loss), count + n
        self.mlm.train()
        return total / count if count else float("nan")

    def save(self, folder: Path) -> None:
        """The adapted encoder (with the base's pooler, untouched) and the tokenizer, as a base-model folder."""
        weights = {name: value.detach().cpu() for name, value in self.mlm.bert.state_dict().items()}
        result = self.encoder.load_state_dict(weights, strict=False)
        if result.unexpected_keys or any(not name.startswith("pooler.") for name in result.missing_keys):
            raise RuntimeError(f"the adapted weights do not fit the encoder: {result}")
        self.encoder.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)


def encoder_with_mlm_head(source: str):
    """The encoder at ``source``, and a ``BertForMaskedLM`` whose ``bert`` holds its weights.

    The head is new: the transform layer has BERT's initial weights, the decoder is the word
    embeddings (tied) and its bias is zero. Every weight of the encoder but its pooler (which the
    MLM model has not) must be in the folder and fit.

    Returns:
        (the encoder as ``AutoModel`` loads it, with its pooler; the MLM model).

    Raises:
        ValueError: the model is not a BERT, or its folder lacks or misfits some of the encoder's weights.
    """
    from transformers import AutoConfig, AutoModel, BertForMaskedLM

    config = AutoConfig.from_pretrained(source)
    if config.model_type != "bert":
        raise ValueError(f"encoder adaptation needs a BERT encoder; {source} is a {config.model_type!r}")
    encoder, info = AutoModel.from_pretrained(source, output_loading_info=True)
    missing = sorted(name for name in info["missing_keys"] if not name.startswith("pooler."))
    if missing or info["mismatched_keys"]:
        raise ValueError(f"{source} lacks or misfits encoder weights: {missing or sorted(info['mismatched_keys'])}")
    config.tie_word_embeddings = True
    mlm = BertForMaskedLM(config)
    weights = {name: value for name, value in encoder.state_dict().items() if not name.startswith("pooler.")}
    mlm.bert.load_state_dict(weights, strict=True)
    mlm.tie_weights()
    with torch.no_grad():
        mlm.cls.predictions.bias.zero_()
    if mlm.cls.predictions.decoder.weight.data_ptr() != mlm.bert.embeddings.word_embeddings.weight.data_ptr():
        raise RuntimeError("the MLM decoder is not tied to the word embeddings")
    return encoder.float(), mlm.float()


def _masked_loss(
    mlm, batch: dict, device: torch.device, reduction: str = "mean", encoder_grad: bool = True
) -> tuple[torch.Tensor, int]:
    """The cross-entropy of the masked tokens, and their count. The vocabulary projection runs on
    the masked positions only: on every position it would cost about as much as the encoder. With
    ``encoder_grad`` False the encoder runs without gradients (only the head learns)."""
    labels = batch["labels"].to(device)
    inputs = {name: value.to(device) for name, value in batch.items() if name != "labels"}
    with torch.set_grad_enabled(encoder_grad and torch.is_grad_enabled()):
        hidden = mlm.bert(**inputs).last_hidden_state
    masked = labels != -100
    count = int(masked.sum())
    if count == 0:
        return hidden.new_zeros((), dtype=torch.float32), 0
    logits = mlm.cls(hidden[masked])
    return F.cross_entropy(logits.float(), labels[masked], reduction=reduction), count


def _parameter_groups(model: torch.nn.Module) -> list[dict]:
    """Weight decay on the weight matrices only (not on biases and LayerNorm), as BERT was trained."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():  # a tied parameter once
        (no_decay if parameter.ndim < 2 or "LayerNorm" in name else decay).append(parameter)
    return [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the loading report; the loading info is checked instead
    hf_logging.disable_progress_bar()


class _Progress:
    """Progress lines for the logs, about every tenth of the run, in the style of
    :class:`refit.training.progress.ProgressLog`. The run's share is the larger of the steps done
    and the budget spent, since either may end it; the time left is the rate so far applied to the
    steps left, capped by the budget left."""

    def __init__(self, logger: logging.Logger, total: int, deadline: float, clock: Callable[[], float]) -> None:
        self.logger, self.total, self.deadline, self.clock = logger, max(1, total), deadline, clock
        self.started = clock()
        self.budget = max(1e-9, deadline - self.started)
        self.next_share = 0.1
        self.loss: float | None = None

    def step(self, done: int, where: str, loss: float | None) -> None:
        """Called after each optimizer step, with the steps done, where in the run it is and its loss."""
        if loss is not None:  # smoothed: one batch's loss is noisy
            self.loss = loss if self.loss is None else 0.9 * self.loss + 0.1 * loss
        now = self.clock()
        share = min(1.0, max(done / self.total, (now - self.started) / self.budget))
        if share + 1e-9 < self.next_share:
            return
        self.next_share = (math.floor(share * 10 + 1e-9) + 1) / 10
        left = min((now - self.started) / done * (self.total - done), max(0.0, self.deadline - now))
        self.logger.info(
            "adaptation: %d%% (%s), MLM loss %s, about %s left",
            round(share * 100), where, f"{self.loss:.3f}" if self.loss is not None else "-", duration(left),
        )  # fmt: skip
