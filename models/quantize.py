"""int8 CPU inference with ONNX Runtime: a model exported to ONNX, its weights quantized to int8,
run behind the interface the prediction code already uses, and checked against its float self.

- **Export**: :func:`export_onnx` writes the model's padded forward pass (``torch.onnx.export``
  with the dynamo exporter; any batch size and length), with the behaviour-feature tensors as
  inputs, so fused and ensemble models export too.
- **Quantize**: ONNX Runtime's dynamic quantization (``onnxruntime.quantization.quantize_dynamic``):
  the weights of every matrix product are int8, one scale per output channel, and the
  activations are quantized on the fly per call. Measured against torch's dynamic quantization
  (``torch.ao.quantization.quantize_dynamic``, now deprecated) on the packaged all-MiniLM-L6-v2,
  it scores more texts per second and stays closer to float (``bench/serve_bench.py``).
- **Run**: :class:`OnnxModel` takes token ids, a mask and the feature tensors and returns logits,
  so :func:`refit.models.inference.predict_ids` scores with it as with the torch model.
- **Check**: :func:`quantized` keeps the int8 copy of a predictor only when its predictions stay
  within a tolerance of the float model's on the checkpoint's own dev rows (its
  ``dev_sample.jsonl``, :mod:`refit.models.dev_sample`); :func:`agreement` is the measure, also
  used by the publish-time check of :mod:`refit.models.int8_artifact`.

Serving quantizes the champion with :func:`quantized` when ``REFIT_SERVE_QUANTIZE`` is set and the
version has no artifact; :mod:`refit.models.int8_artifact` measures the same quantization on all
dev rows at publish time and saves it as ``model.int8.onnx``.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from refit.core.errors import CheckpointError, RefitError
from refit.models.dev_sample import read_dev_sample

INT8_FILE = "model.int8.onnx"
RUNTIME = "onnxruntime"
log = logging.getLogger("refit.serve")  # the check runs when serving loads a champion: its log is serving's


class _Exported(torch.nn.Module):
    """The model's forward pass with the feature tensors as positional inputs (ONNX has no dicts)."""

    def __init__(self, model: torch.nn.Module, keys: list[str]):
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, input_ids, attention_mask, *features):
        given = dict(zip(self.keys, features, strict=True)) or None
        return self.model(input_ids=input_ids, attention_mask=attention_mask, features=given)


def _padded(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` on the padded forward pass (the unpadded one indexes by the data), with
    eager attention: its graph has fewer nodes than scaled-dot-product attention's decomposition
    (no NaN guards), and ran 1.17x as many texts/s in ONNX Runtime int8 on all-MiniLM-L6-v2."""
    model = copy.deepcopy(model).cpu().eval()
    for module in model.modules():
        if hasattr(module, "attention") and isinstance(module.attention, str):
            module.attention = "encoder"
        if hasattr(module, "set_attn_implementation") and getattr(module, "config", None) is not None:
            module.set_attn_implementation("eager")
    return model


def export_onnx(model: torch.nn.Module, path: Path) -> list[str]:
    """Write ``model``'s float forward pass to ``path`` as ONNX, for any batch size and length.

    Args:
        model: a :class:`refit.models.fusion.SatisfactionModel` or an ensemble of them (left as it is).
        path: the ``.onnx`` file to write.

    Returns:
        The names of the feature inputs after ``input_ids`` and ``attention_mask``, in order.
    """
    keys = list(model.schema.encode(None, 2))
    example_features = model.schema.encode(None, 2)
    padded = _Exported(_padded(model), keys).eval()
    # Two rows of different lengths: the exported graph masks padding for every input.
    input_ids = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 3, 0, 0, 0]], dtype=torch.long)  # any ids: the shapes matter
    attention_mask = (input_ids != 0).long()
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    # torch.export groups the *features of the signature into one tuple (none when there are none).
    shapes = ({0: batch, 1: length}, {0: batch, 1: length}) + ((tuple({0: batch} for _ in keys),) if keys else ())
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # e.g. "torchvision is not installed": not refit's concern
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # axis-name notices of the exporter
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                padded,
                (input_ids, attention_mask, *(example_features[k] for k in keys)),
                str(path),
                input_names=["input_ids", "attention_mask", *keys],
                output_names=["logits"],
                dynamic_shapes=shapes,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        exporter_log.setLevel(level)
    return keys


def quantize_onnx(source: Path, target: Path) -> None:
    """Quantize a float ONNX model to int8: the weights of the matrix products (one scale per
    output channel) and the embedding tables are int8, and activations are quantized per call.

    Args:
        source: the float ONNX model.
        target: where the int8 model is written.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic  # only quantizing needs it

    # Its hint to run shape pre-processing first is for static quantization; it changed nothing here.
    hint = _DropRecords("Please consider to run pre-processing")
    logging.getLogger().addFilter(hint)
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        logging.getLogger().removeFilter(hint)


class _DropRecords(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


class OnnxModel:
    """An ONNX Runtime session behind the calls :mod:`refit.models.inference` makes on a torch
    model: ``model(input_ids=..., attention_mask=..., features=...)`` returns the logits as a
    tensor; ``schema`` encodes the behaviour features; CPU only.

    Args:
        onnx: the ONNX model, serialized (an int8 artifact's bytes, or any export of :func:`export_onnx`).
        schema: the float model's feature schema (its ``encode`` gives the feature inputs).
        n_outputs: the model's outputs per row.
        threads: intra-op threads; None uses torch's (``torch.get_num_threads()``), one setting
            for both runtimes.
    """

    def __init__(self, onnx: bytes, schema, n_outputs: int, threads: int | None = None):
        import onnxruntime as ort  # slow to import: only loading an int8 model needs it

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings about unused initializers are not the user's concern
        try:
            self.session = ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for a bad model
            raise CheckpointError(f"cannot load the int8 model: {str(exc).splitlines()[0]}") from None
        self.onnx = onnx
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.schema, self.n_outputs = schema, n_outputs
        self.training = False
        # Padded batches of texts sorted by length: small ones pad least (16 ran 1.4x as many
        # texts/s as 64 on all-MiniLM-L6-v2, 2 cores); the torch model runs unpadded, any size.
        self.preferred_batch = 16

    @property
    def nbytes(self) -> int:
        """The size of the serialized model."""
        return len(self.onnx)

    @property
    def fused(self) -> bool:
        return not self.schema.empty

    def eval(self) -> OnnxModel:
        return self

    def to(self, device) -> OnnxModel:
        if torch.device(device).type != "cpu":
            raise ValueError("the int8 model runs on the CPU only")
        return self

    def save(self, path: Path) -> Path:
        """Write the serialized model to ``path`` (the artifact is this one file)."""
        Path(path).write_bytes(self.onnx)
        return Path(path)

    def __call__(self, input_ids=None, attention_mask=None, features=None, **unused) -> torch.Tensor:
        if unused.get("inputs_embeds") is not None or unused.get("feature_input") is not None:
            raise NotImplementedError("the int8 model scores token ids; explanations need the float model")
        given = {"input_ids": input_ids, "attention_mask": attention_mask, **(features or {})}
        feed = {name: given[name].cpu().numpy() for name in self.inputs}
        (logits,) = self.session.run(["logits"], feed)
        return torch.from_numpy(logits)


def quantize_model(model: torch.nn.Module, threads: int | None = None) -> OnnxModel:
    """A model exported to ONNX and quantized to int8 (the model itself is left as it is).

    Args:
        model: the float model.
        threads: ONNX Runtime's intra-op threads (default: torch's, ``torch.get_num_threads()``).

    Returns:
        The int8 model.
    """
    with tempfile.TemporaryDirectory(prefix="refit-int8-") as tmp:
        source, target = Path(tmp) / "model.onnx", Path(tmp) / INT8_FILE
        export_onnx(model, source)
        quantize_onnx(source, target)
        return OnnxModel(target.read_bytes(), model.schema, model.n_outputs, threads)


def load_int8(model: torch.nn.Module, folder: Path) -> OnnxModel:
    """The folder's int8 artifact, ready to predict.

    Args:
        model: the float model freshly loaded from ``folder``: its feature schema is used, its
            weights are not.
        folder: the checkpoint folder.

    Returns:
        The int8 model.
    """
    path = Path(folder) / INT8_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} has no int8 artifact ({INT8_FILE})")
    return OnnxModel(path.read_bytes(), model.schema, model.n_outputs)


def agreement(task: str, float_pred: np.ndarray, int8_pred: np.ndarray) -> dict:
    """How close int8 predictions are to float ones, row by row.

    Returns:
        ``rows``; ``max_abs_diff`` and ``mean_abs_diff`` of the scores (or class probabilities);
        ``label_agreement``: the share of rows given the same label (the same class, or, for a
        satisfaction score, the same side of 0.5).
    """
    a, b = np.asarray(float_pred, dtype=float), np.asarray(int8_pred, dtype=float)
    diff = np.abs(a - b)
    labels = (a >= 0.5, b >= 0.5) if task == "regression" else (a.argmax(-1), b.argmax(-1))
    return {
        "rows": len(a),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "label_agreement": float(np.mean(labels[0] == labels[1])) if len(a) else 1.0,
    }


def quantized(predictor, tolerance: float, sample: list[str] | None = None, features=None):
    """A copy of ``predictor`` on the int8 ONNX Runtime model, kept only if its predictions stay
    within ``tolerance`` of the float model's (the largest absolute difference) on the
    checkpoint's own dev rows.

    Args:
        predictor: a loaded :class:`refit.models.predict.Predictor` (any object with ``model``,
            ``task``, ``folder`` and ``predict(texts, features)``); it is left as it is.
        tolerance: the largest absolute difference of a prediction allowed between int8 and float.
        sample: the texts to compare on; None reads the dev rows the training run saved in the
            checkpoint (``dev_sample.jsonl``), or, for a checkpoint from before it did, the fixed
            :data:`QUANTIZATION_CHECK_TEXTS` (logged).
        features: the sample's behaviour features (with ``sample``).

    Returns:
        The int8 predictor, with the largest difference in ``quantization_gap`` and the whole
        :func:`agreement` record (plus ``source``: ``"dev rows"``, ``"given"`` or ``"fixed texts"``)
        in ``int8_check``.

    Raises:
        RefitError: the int8 predictions differ from float by more than ``tolerance``.
    """
    texts, source = sample, "given"
    if texts is None:
        saved = read_dev_sample(getattr(predictor, "folder", None))
        if saved is not None:
            (texts, features), source = saved, "dev rows"
        else:
            texts, features, source = QUANTIZATION_CHECK_TEXTS, None, "fixed texts"
            log.warning(
                "the checkpoint has no dev sample (trained before refit saved one): int8 checked on fixed texts"
            )
    before = predictor.predict(texts, features)
    quant = copy.copy(predictor)
    quant.model = quantize_model(predictor.model)
    after = quant.predict(texts, features)
    check = {**agreement(predictor.task, before, after), "source": source, "runtime": RUNTIME}
    if check["max_abs_diff"] > tolerance:
        raise RefitError(
            f"int8 predictions differ from float by {check['max_abs_diff']:.4f} > {tolerance} "
            f"on {check['rows']} {source}; serving float instead"
        )
    quant.quantization_gap, quant.int8_check = check["max_abs_diff"], check
    log.info(
        "int8 model within %.4f of float on %d %s (labels agree on %.1f%%)",
        check["max_abs_diff"],
        check["rows"],
        source,
        100 * check["label_agreement"],
    )
    return quant


QUANTIZATION_CHECK_TEXTS = [
    "The headphones are excellent, love it, arrived on time.",
    "Terrible charger, broke after a day, returned it.",
    "The kettle is okay, does the job, nothing special.",
    "Solid jacket, works well, would recommend to my friends.",
    "Cheaply made and flimsy; customer service never answered.",
    "Absolutely fantastic cookbook, best purchase ever.",
    "Meh quality, not worth the price, shipping was slow.",
    "Good blender but the lid leaks a little.",
]
