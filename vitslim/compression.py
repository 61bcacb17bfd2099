"""``compress``: SlimSAM's alternate slimming (or another schedule) as one call; the engine does the work."""

from __future__ import annotations

import os
from typing import Any, Callable

from torch import nn

from .engine.options import split_options
from .engine.run import CompressionResult, Interrupted, Preempted, run

__all__ = ["compress", "compress_run", "CompressionResult", "Interrupted", "Preempted"]


def compress_run(model: nn.Module, ratio: float | None = None, data: Any = None, *, workdir: str | os.PathLike | None = None,
                 resume: bool = False, out: str | os.PathLike | None = None, progress: bool = True,
                 checkpoint_every: float = 60.0, on_epoch: Callable[[dict], None] | None = None,
                 **options: Any) -> CompressionResult:
    """:func:`compress`, returning the student with its summary and held-out images."""
    prune_options, train_options = split_options(options)
    return run(model, ratio, data, prune_options, train_options, workdir=workdir, resume=resume, out=out,
               progress=progress, checkpoint_every=checkpoint_every, on_epoch=on_epoch)


def compress(model: nn.Module, ratio: float | None = None, data: Any = None, *, workdir: str | os.PathLike | None = None,
             resume: bool = False, out: str | os.PathLike | None = None, progress: bool = True,
             checkpoint_every: float = 60.0, on_epoch: Callable[[dict], None] | None = None,
             **options: Any) -> nn.Module:
    """Compress ``model`` (the teacher, left unchanged) by ``ratio`` (or, with ``target_speedup=S``
    instead, to widths that make its encoder S times faster on this device: see :mod:`vitslim.budget`)
    with a schedule of prune + distil stages, and return the student.

    ``data``: a folder of images (None: the scikit-image samples), a (N, C, H, W) tensor of
    preprocessed images, or a Dataset of them. ``options`` (see :mod:`vitslim.engine.options`):

    - how each stage prunes: ``importance`` (``disturbed_taylor``), ``ranking`` (``global``),
      ``attention`` (``head_dim``), ``round_to``, ``sigma``, ``importance_batches``, ``importance_views``
      (1: each calibration image as it is; K: and K - 1 augmented views of it), ``target_speedup``
      (the latency model is measured on the run's device once, then cached; the file records the
      target, the predicted and the measured speed-up);
    - the schedule: ``schedule`` (``alternate``: stage 1 prunes the embedding width and distils while
      aligning the bottleneck features with the original's; stage 2 prunes the bottlenecks and aligns
      the block outputs with stage 1's under dynamic weights ``alpha``; ``alternate:K`` makes the same
      cut in K rounds of both stages, sharing each part's epochs; ``one-shot`` and ``iterative:K`` spend
      the same epochs);
    - made for little data: ``epochs`` per stage (default: enough for ``min_steps`` optimizer steps per
      stage; ``min_steps`` by default 2000 from 100 images, 2000 x 100 / images below, at most 8000),
      ``pick`` (distil on the N images that cover the teacher's outputs best: :mod:`vitslim.selection`),
      ``lr`` (default 0.1 / the
      embedding width), ``lr_schedule`` (``cosine`` over each stage, SlimSAM's ``plateau``,
      ``constant``), ``augment`` (views shared by teacher and student: ``default``, ``none``, or
      e.g. ``"flip,crop=0.5,mixup"``);
    - the loop: ``batch_size`` (4), ``accum``, ``micro_batch`` (images per forward/backward; 0: 1 on
      CPU, the whole batch on GPU), ``val_fraction`` (0.1; 0: none held out), ``patience``/``factor`` (plateau), ``seed``,
      ``device``, ``precision`` (``auto``: bf16 autocast on CUDA), ``fast`` (the family's fused
      attention; same numbers), ``activation_checkpointing`` (``auto``: recompute each block in the
      backward pass when its activations would take over half the free memory; ``on``, ``off``).

    Checkpoints go to ``workdir`` (default ``<out>.work``, else ``vitslim-work``), locked for the run,
    after an epoch when ``checkpoint_every`` seconds have passed and at the end of every stage;
    ``resume=True`` continues the run that wrote them (the same model, weights, data and options, or a
    :class:`UsageError` naming the difference). ``on_epoch(record)`` hears about every epoch; Ctrl-C
    raises :class:`Interrupted`. ``out`` writes the final model.
    """
    return compress_run(model, ratio, data, workdir=workdir, resume=resume, out=out, progress=progress,
                        checkpoint_every=checkpoint_every, on_epoch=on_epoch, **options).student
