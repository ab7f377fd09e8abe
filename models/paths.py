"""How a training step runs on this device: the attention layout and the precision, chosen by the
trainer and recorded in the checkpoint.

- **Precision.** ``bf16`` autocast (weights and optimizer stay fp32) on a CUDA GPU with bf16, and on
  a CPU with bf16 matrix instructions (AMX tiles, or AVX512-BF16) for encoders at least
  ``BF16_MIN_HIDDEN`` wide, where bf16 matmuls run at a multiple of the fp32 rate. A training step
  on two cores (``bench/train_bench.py`` prints it), for encoders 128 to 384 wide: 1.2x to 1.7x
  faster on a Sapphire Rapids (AMX; two runs), 1.8x to 2.6x on an AMD EPYC (AVX512-BF16, no AMX;
  its bf16 ``torch.mm`` peak was 4.4x fp32's). At 64 wide one Sapphire Rapids run gained 1.38x and
  the other lost (0.77x). ``fp32`` elsewhere (AVX-512 or AVX2 without BF16 emulates it). A rule
  from those measurements, not a timing in the run: the same seed on the same machine must give
  the same weights.
- **Attention layout** (:mod:`models.unpad`): ``encoder`` (the plain Hugging Face forward),
  ``padded`` (unpadded dense layers, one masked attention call) or ``packed`` (no padding anywhere,
  one attention block per sequence). Which is fastest depends on the device, the model's size and
  the batches' padding, so the trainer times one forward and backward pass of each on a batch of the
  run's own rows (after one warm-up pass) and takes the fastest. ``padded`` stays unless another is
  faster by ``MARGIN``. The layouts agree only to float rounding, and draw their dropout masks
  differently, so a choice that flipped between two runs would change their metrics (on 300 real
  reviews, the dev MSE went from 0.0897 to 0.0851 and the gate's answer with it): the answer is
  kept for the same processor, model shape, batch size, precision and torch build, in the process
  and in a small JSON file on the machine (``machine_cache()``, or ``REFIT_TRAIN_PATH_CACHE``), and
  every later run there reuses it, in any work dir. A setting
  can pin it (``REFIT_TRAIN_ATTENTION``). The probe leaves the model, its gradients and the random
  generators as it found them.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from refit.models.unpad import bert_modules

ATTENTIONS = ("auto", "encoder", "padded", "packed")
PRECISIONS = ("auto", "fp32", "bf16")
DEFAULT_LAYOUT = "padded"
MARGIN = 0.05  # another layout must be this much faster than the default to be chosen
BF16_MIN_HIDDEN = 128
PROBE_MIN_STEPS = 30  # a shorter run takes the default: the probe (six passes) would cost a fifth of it
_CHOSEN: dict[tuple, tuple[str, dict[str, float]]] = {}
log = logging.getLogger("refit.train")


@dataclass
class TrainPath:
    """What the trainer chose for this run, and why; saved in ``refit.json`` under ``training``."""

    attention: str
    precision: str
    chosen_by: str  # "setting", "measured", "measured earlier in this process", "only choice"
    step_ms: dict[str, float] = field(default_factory=dict)  # forward + backward of the probe batch

    def as_dict(self) -> dict:
        return asdict(self)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware: AMX tiles, or AVX512-BF16's dot
    products (``vdpbf16ps``)."""
    probes = (getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return any(bool(probe and probe()) for probe in probes)


def resolve_precision(setting: str, device: torch.device, hidden_size: int = BF16_MIN_HIDDEN) -> str:
    """``bf16`` or ``fp32`` for ``setting`` (auto | fp32 | bf16) on ``device``, for an encoder
    ``hidden_size`` wide.

    Raises:
        ValueError: bf16 was asked for where it cannot run.
    """
    if setting not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {setting!r}")
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:
        supported = device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if setting == "bf16" and not supported:
        raise ValueError(f"precision bf16 was asked for, but {device} has no bf16 support")
    if setting != "auto":
        return setting
    if device.type == "cuda":
        return "bf16" if supported else "fp32"
    fast = device.type == "cpu" and cpu_has_fast_bf16() and hidden_size >= BF16_MIN_HIDDEN
    return "bf16" if fast else "fp32"


def choose_attention(
    model: torch.nn.Module,
    setting: str,
    precision: str,
    step: Callable[[], torch.Tensor],
    device: torch.device,
    batch_size: int,
    steps: int,
    distributed: bool = False,
    cache: Path | None = None,
) -> TrainPath:
    """The attention layout for this run: the setting, an earlier measurement, or the fastest
    layout timed now.

    Args:
        model: the model to train (a model that is not a plain BERT has only its encoder's own
            forward).
        setting: ``auto``, ``encoder``, ``padded`` or ``packed``.
        precision: the training precision (recorded, and part of what a measurement is for).
        step: runs one forward pass of the probe batch and returns its loss; it is called under
            the layout being timed.
        device: where the model trains.
        batch_size: the training batch size (part of what a measurement is for).
        steps: the run's optimizer steps: a run of fewer than ``PROBE_MIN_STEPS`` takes the
            default layout unprobed.
        distributed: a data-parallel run, whose ranks must agree: the default layout, unprobed.
        cache: the machine's file of earlier answers.

    Returns:
        The layout, the precision, and what chose them (with the timings, when measured).

    Raises:
        ValueError: ``setting`` is not a layout.
    """
    if setting not in ATTENTIONS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, not {setting!r}")
    if bert_modules(model.encoder) is None:  # not a plain BERT: only the encoder's own forward
        return TrainPath("encoder", precision, "only choice")
    if setting != "auto":
        return TrainPath(setting, precision, "setting")
    if distributed or steps < PROBE_MIN_STEPS:
        return TrainPath(DEFAULT_LAYOUT, precision, "default (a short or distributed run)")
    key = _layout_key(model, device, batch_size, precision)
    if key in _CHOSEN:
        layout, timings = _CHOSEN[key]
        return TrainPath(layout, precision, "measured earlier in this process", timings)
    earlier = _read_cache(cache).get(key)
    if earlier and earlier.get("attention") in ATTENTIONS[1:]:
        _CHOSEN[key] = (earlier["attention"], earlier.get("step_ms", {}))
        return TrainPath(earlier["attention"], precision, "measured earlier on this machine", _CHOSEN[key][1])
    timings = _time_layouts(model, step, device)
    fastest = min(timings, key=timings.get)
    default = timings.get(DEFAULT_LAYOUT, float("inf"))
    layout = fastest if timings[fastest] < default * (1 - MARGIN) else DEFAULT_LAYOUT
    _CHOSEN[key] = (layout, timings)
    _write_cache(cache, key, {"attention": layout, "step_ms": timings})
    return TrainPath(layout, precision, "measured", timings)


def _layout_key(model: torch.nn.Module, device: torch.device, batch_size: int, precision: str) -> str:
    """What a layout measurement holds for: the machine, torch, the model's shape, the batch and
    the precision (another of any of them is measured again)."""
    cfg = model.encoder.config
    return "|".join(
        map(
            str,
            (device, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, batch_size, precision,
             torch.__version__, torch.backends.cpu.get_cpu_capability(), processor_name(device)),
        )
    )  # fmt: skip


def machine_cache() -> Path:
    """The machine's file of measured layouts: ``$XDG_CACHE_HOME/refit/train_paths.json``, or
    ``~/.cache/refit/train_paths.json``. Outside any work dir, so that every run on the machine,
    in a fresh work dir too, takes the same layout and gets the same metrics from the same seed."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "refit" / "train_paths.json"


def processor_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name: part of the key, as a home folder may be shared."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _read_cache(cache: Path | None) -> dict:
    if cache is None:
        return {}
    try:
        data = json.loads(Path(cache).read_text())
    except (OSError, ValueError):  # none yet, or unreadable: measure again
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(cache: Path | None, key: str, entry: dict) -> None:
    """Add ``entry`` to the machine's file, atomically (a failure to write only costs a re-probe)."""
    if cache is None:
        return
    cache = Path(cache)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        data = {**_read_cache(cache), key: entry}
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=".tmp-paths-")
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
        os.replace(tmp, cache)
    except OSError as exc:
        log.warning("could not record the training path in %s: %s", cache, exc)


def _time_layouts(model, step, device) -> dict[str, float]:
    """Milliseconds of one forward and backward pass of each layout, after a warm-up pass each."""
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    was = model.attention
    timings = {}
    try:
        for layout in ("encoder", "padded", "packed"):
            model.attention = layout
            try:
                for timed in (False, True):
                    _sync(device)
                    started = time.perf_counter()
                    step().backward()
                    _sync(device)
                    if timed:
                        timings[layout] = round((time.perf_counter() - started) * 1000, 1)
            except (RuntimeError, NotImplementedError) as exc:  # a layout this device cannot run
                log.warning("attention layout %s failed in the probe, not used: %s", layout, exc)
            model.zero_grad(set_to_none=True)
    finally:
        model.attention = was
        model.zero_grad(set_to_none=True)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    return timings


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
