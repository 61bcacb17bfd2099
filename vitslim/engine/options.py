"""The settings of a compression run, grouped by who reads them, each checked in one place."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch

from ..errors import UsageError
from .augment import Augment, parse_augment
from .lr import LR_SCHEDULES
from .schedules import build_schedule

PRECISIONS = ("auto", "fp32", "bf16")
MIN_STEPS = 2000  # optimizer steps per stage that the default number of epochs reaches from 100 images
FEW_IMAGES = 100  # below this many images the default steps grow, up to MAX_STEPS_FACTOR times
MAX_STEPS_FACTOR = 4


def auto_min_steps(images: int) -> int:
    """The default optimizer steps per stage: 2000 from 100 images up (those the run uses, after any
    pick, validation included); below, 2000 x 100 / images, at most 8000 (25 images or fewer).
    Measured on the digits testbed at 0.77 with 12 images (docs/quality.md): 2000, 4000 and 8000
    steps give 87.1, 91.8 and 95.7% (4 seeds); with 120 images twice the steps buy nothing there (on
    the shapes SAM they add as much agreement with 100 images as with 10: past 100, 2000 is for time)."""
    factor = min(float(MAX_STEPS_FACTOR), max(1.0, FEW_IMAGES / max(1, images)))
    return int(round(MIN_STEPS * factor))


def _number(value: Any, name: str, low: float, *, integer: bool = False, strict: bool = False,
            high: float | None = None) -> None:
    """``value`` must be a finite number >= ``low`` (> with ``strict``), below ``high`` when given."""
    ok = not isinstance(value, bool) and isinstance(value, (int,) if integer else (int, float))
    ok = ok and math.isfinite(value) and (value > low if strict else value >= low)
    ok = ok and (high is None or value < high)
    if not ok:
        kind = "an integer" if integer else "a number"
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise UsageError(f"{name} must be {kind} {bound}{f' and < {high:g}' if high is not None else ''}, got {value!r}")


@dataclass
class PruneOptions:
    """How each stage prunes (see :func:`vitslim.prune`)."""

    importance: Any = "disturbed_taylor"
    ranking: str = "global"
    attention: str = "head_dim"
    round_to: int = 1
    sigma: float = 0.01
    importance_batches: int | None = None
    importance_views: int = 1  # each calibration image scored as it is and in views - 1 augmented views
    target_speedup: float | None = None  # instead of a ratio: widths for this speed-up (vitslim.budget)
    latency_batch: int = 1  # the batch the speed-up is for (the latency model is timed at it)

    def validate(self) -> "PruneOptions":
        from ..groups import ATTENTION_MODES
        from ..pruning import resolve_criterion
        from ..ranking import RANKINGS

        if self.ranking not in RANKINGS:
            raise UsageError(f"unknown ranking '{self.ranking}': choose one of {', '.join(RANKINGS)}")
        if self.attention not in ATTENTION_MODES:
            raise UsageError(f"unknown attention mode '{self.attention}': choose one of {', '.join(ATTENTION_MODES)}")
        _number(self.round_to, "round_to", 1, integer=True)
        _number(self.sigma, "noise sigma", 0, strict=True)
        if self.importance_batches is not None:
            _number(self.importance_batches, "importance batches", 1, integer=True)
        _number(self.importance_views, "importance views", 1, integer=True)
        resolve_criterion(self.importance, sigma=self.sigma)  # an unknown name fails here, before any work
        _number(self.latency_batch, "latency batch", 1, integer=True)
        if self.target_speedup is not None:
            from ..budget import check_target

            self.target_speedup = check_target(self.target_speedup)
        return self

    def describe(self) -> dict:
        """Plain data (for checkpoints and provenance); a criterion object is named by its class."""
        out = asdict(self)
        if not isinstance(self.importance, str):
            out["importance"] = getattr(self.importance, "name", type(self.importance).__name__)
        return out


@dataclass
class TrainOptions:
    """How each stage distils, and the run's schedule (see :func:`vitslim.compress`).

    ``epochs`` None: enough epochs for ``min_steps`` optimizer steps per stage (``min_steps`` None: by
    the number of training images, :func:`auto_min_steps`). ``lr`` None: 0.1 / the
    embedding width. ``micro_batch`` 0: 1 image per forward/backward on the CPU, the whole batch on GPU.
    ``activation_checkpointing`` (auto, on, off): recompute each block in the backward pass instead of
    keeping its activations; auto turns it on when they would not fit (see :mod:`vitslim.memory`).
    ``loss_scale`` (auto, raw, teacher): each distillation MSE as it is, or divided by the reference
    tensor's mean square; auto takes the family's :attr:`~vitslim.family.Family.loss_scale`.
    ``pick`` N: distil on the N given images that cover the teacher's outputs best (k-center greedy,
    :mod:`vitslim.selection`); None: on all of them.
    """

    schedule: str = "alternate"
    epochs: int | None = None
    min_steps: int | None = None
    batch_size: int = 4
    accum: int = 1
    micro_batch: int = 0
    lr: float | None = None
    lr_schedule: str = "cosine"
    patience: int = 3
    factor: float = 0.5
    augment: Any = "default"
    alpha: float = 0.5
    val_fraction: float = 0.1
    seed: int = 0
    device: str | None = None
    precision: str = "auto"
    fast: bool = True
    num_workers: int = 0
    activation_checkpointing: str = "auto"
    loss_scale: str = "auto"
    pick: int | None = None  # distil on this many of the images, picked by vitslim.selection (None: all)

    def validate(self, ratio: float = 0.5) -> "TrainOptions":
        if self.epochs is not None:
            _number(self.epochs, "epochs", 1, integer=True)
        build_schedule(self.schedule, ratio, self.epochs or 1, self.alpha)  # an unknown schedule fails here
        if self.min_steps is not None:
            _number(self.min_steps, "min_steps", 1, integer=True)
        _number(self.batch_size, "batch size", 1, integer=True)
        _number(self.accum, "accum", 1, integer=True)
        _number(self.micro_batch, "micro batch", 0, integer=True)
        if self.lr is not None:
            _number(self.lr, "learning rate", 0, strict=True)
        if self.lr_schedule not in LR_SCHEDULES:
            raise UsageError(f"unknown lr schedule '{self.lr_schedule}': choose one of {', '.join(LR_SCHEDULES)}")
        _number(self.patience, "patience", 0, integer=True)
        _number(self.factor, "factor", 0, strict=True, high=1)
        _number(self.alpha, "alpha", 0)
        _number(self.val_fraction, "validation fraction", 0, high=1)
        if self.precision not in PRECISIONS:
            raise UsageError(f"unknown precision '{self.precision}': choose one of {', '.join(PRECISIONS)}")
        self.augment = parse_augment(self.augment)
        from ..memory import check_mode

        check_mode(self.activation_checkpointing)
        if self.pick is not None:
            _number(self.pick, "pick", 1, integer=True)
        from .losses import LOSS_SCALES

        if self.loss_scale not in LOSS_SCALES:
            raise UsageError(f"unknown loss scale '{self.loss_scale}': choose one of {', '.join(LOSS_SCALES)}")
        return self

    def resolved(self, embed_dim: int, device: str, steps_per_epoch: int, images: int = FEW_IMAGES) -> "TrainOptions":
        """A copy with every automatic setting decided: device, learning rate, steps and epochs (from
        the ``images`` the run was given)."""
        from .schedules import auto_epochs

        min_steps = self.min_steps if self.min_steps is not None else auto_min_steps(images)
        return replace(
            self, device=device, lr=self.lr if self.lr is not None else auto_lr(embed_dim), min_steps=min_steps,
            epochs=self.epochs or auto_epochs(self.schedule, steps_per_epoch, min_steps),
            augment=parse_augment(self.augment))

    def describe(self) -> dict:
        out = asdict(self)
        out["augment"] = self.augment.describe() if isinstance(self.augment, Augment) else self.augment
        return out

    # the training loop's questions
    def micro(self, n: int) -> int:
        if self.micro_batch > 0:
            return self.micro_batch
        return n if torch.device(self.device).type == "cuda" else 1

    def amp_dtype(self):
        if self.precision == "fp32" or (self.precision == "auto" and torch.device(self.device).type != "cuda"):
            return None
        return torch.bfloat16

    def autocast(self):
        dtype = self.amp_dtype()
        if dtype is None:
            return nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=dtype)


def auto_lr(embed_dim: int) -> float:
    """The default learning rate, 0.1 / width: Adam's rate shrinks with width (muP's rule). It gives
    about SlimSAM's 1e-4 for SAM-B (1.3e-4 at 768) and the 1e-3 measured best for width-96 ViTs. A
    hierarchical encoder passes its widest residual stream (SAM 2 b+: 896), where most weights are."""
    return 0.1 / embed_dim


def split_options(options: dict[str, Any]) -> tuple[PruneOptions, TrainOptions]:
    """Flat keyword arguments (as :func:`vitslim.compress` takes them) sorted into the two groups."""
    prune_names = {f.name for f in fields(PruneOptions)}
    train_names = {f.name for f in fields(TrainOptions)}
    unknown = sorted(set(options) - prune_names - train_names)
    if unknown:
        raise UsageError(f"unknown compress option(s) {', '.join(unknown)}: choose from "
                         f"{', '.join(sorted(prune_names | train_names))}")
    return (PruneOptions(**{k: v for k, v in options.items() if k in prune_names}),
            TrainOptions(**{k: v for k, v in options.items() if k in train_names}))
