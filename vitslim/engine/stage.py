"""One stage of a run: prune the current model (unless resuming inside the stage), then distil it
against its references for the stage's epochs, with an optimiser, a learning-rate schedule and
checkpoints."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..memory import checkpointed
from .checkpoint import Checkpointer
from .losses import resolve_loss_scale
from .lr import LrSchedule
from .options import PruneOptions, TrainOptions
from .schedules import Stage
from .faults import NonFiniteStep, divergence_error
from .trainer import EpochPosition, StageLoss, StoppedMidEpoch, train_epoch, validate, world


@dataclass
class RunState:
    """What the stages of one run share."""

    family: Any
    original: nn.Module  # the teacher (frozen; fused attention when ``fast``)
    train_set: Dataset
    val_set: Dataset
    steps_per_epoch: int
    prune: PruneOptions
    train: TrainOptions
    checkpointer: Checkpointer
    ui: Any
    speed: Callable[[nn.Module], nn.Module]
    on_epoch: Callable[[dict], None] | None = None
    history: list[dict] = field(default_factory=list)
    stop: Any = None  # faults.StopSignals of the run (None: signals are not caught)
    stop_error: Callable[[], Exception] | None = None  # what to raise once stopped and checkpointed
    forecast: Any = None  # forecast.Forecast of the run
    latency: Any = None  # the device's latency.LatencyModel of the teacher, with a target speed-up
    memory_noted: bool = False  # the activation-checkpointing decision has been told


def note_checkpointing(run: RunState):
    """Tells the run's output, once, that activations are recomputed (see :mod:`vitslim.memory`)."""
    def note(state) -> None:
        if not run.memory_noted:
            run.memory_noted = True
            run.ui.note(state.describe())
    return note


class CalibrationViews:
    """The calibration images one at a time: each as it is, then ``views - 1`` passes of augmented views
    of them (the training's augmentation, seeded per pass and chunk: every rank and every resume sees the
    same views), so that few images give the importance more of the input distribution."""

    def __init__(self, dataset: Dataset, views: int, augment: Any, seed: int, chunk: int = 8):
        self.dataset, self.views, self.augment, self.seed, self.chunk = dataset, views, augment, seed, chunk

    def __len__(self) -> int:
        return len(self.dataset) * self.views

    def __iter__(self):
        for view in range(self.views):
            for i, batch in enumerate(DataLoader(self.dataset, batch_size=self.chunk, shuffle=False)):
                if view > 0 and self.augment.active:
                    batch = self.augment(batch, torch.Generator().manual_seed(hash((self.seed, view, i)) % 2**63))
                yield from batch.split(1)


def prune_for_stage(run: RunState, current: nn.Module, stage: Stage, index: int, count: int) -> nn.Module:
    """The stage's pruning of ``current``, scored on the training images one at a time (as SlimSAM's
    reference does; every rank scores the same images alike), and on their augmented views when
    ``importance_views`` > 1."""
    from ..pruning import prune

    p = run.prune
    calib = (CalibrationViews(run.train_set, p.importance_views, run.train.augment, run.train.seed + index)
             if p.importance_views > 1 else DataLoader(run.train_set, batch_size=1, shuffle=False))
    times = [time.perf_counter()]
    with run.ui.bar(f"stage {index + 1}/{count} {stage.name}: importance") as tick:
        def progress(done: int, total: int | None) -> None:  # a stop signal ends the scoring here
            if tick is not None:
                tick(done, total)
            times.append(time.perf_counter())
            # the second image prices the rest (the first also pays for warming up)
            if run.forecast is not None and run.forecast.per_image is None and (done == 2 or done == total):
                run.forecast.importance_timed(times[-1] - times[-2])
                run.ui.note(run.forecast.line())
            if run.stop is not None and run.stop.requested():
                raise run.stop_error()

        speed = ({"target_speedup": p.target_speedup, "latency": run.latency, "dense_ms": run.latency.dense_ms}
                 if p.target_speedup else {})
        student = prune(current, None if speed else stage.ratio, part=stage.part, importance=p.importance,
                        ranking=p.ranking, data=calib, attention=p.attention, round_to=p.round_to, sigma=p.sigma,
                        batches=p.importance_batches, seed=run.train.seed + index, progress=progress,
                        loss_scale=resolve_loss_scale(run.train.loss_scale, run.family),  # as it distils
                        activation_checkpointing=run.train.activation_checkpointing,
                        on_checkpointing=note_checkpointing(run), **speed)
    return student.to(run.train.device)


def run_stage(run: RunState, index: int, stages: list[Stage], current: nn.Module,
              resume: dict | None = None) -> nn.Module:
    """Prune and distil stage ``index``; ``resume`` (a checkpoint inside this stage) continues it, at an
    epoch's end or, after a stop signal, midway through an epoch."""
    stage = stages[index]
    opts = run.train
    position = None
    if resume is not None:
        from ..modelfile import from_payload

        student = run.speed(from_payload(resume["student"])).to(opts.device)
        first_epoch = resume["epoch"] + 1
        if resume.get("partial") is not None:
            done = resume["partial"]
            position = EpochPosition(done["batch"], done["sums"], done["steps"], rng=resume["rng"])
    else:
        student = prune_for_stage(run, current, stage, index, len(stages))
        first_epoch = 0
    for p in student.parameters():
        p.requires_grad_(True)
    previous = current
    for p in previous.parameters():
        p.requires_grad_(False)
    encoder = run.family.encoder(student)
    trainable = torch.nn.parallel.DistributedDataParallel(encoder) if world()[1] > 1 else encoder
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=opts.lr)
    scheduler = LrSchedule(opts.lr_schedule, optimizer, stage.epochs * run.steps_per_epoch, opts.patience, opts.factor)
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
    structure = run.family.describe(student)
    blocks = [b.name for b in structure.blocks]
    scale = resolve_loss_scale(opts.loss_scale, run.family)
    loss = StageLoss(run.family, structure, stage.terms, {"original": run.original, "previous": previous}, scale)
    from ..modelfile import to_payload

    def state() -> dict:
        return {"student": to_payload(student),
                "previous": None if previous is run.original else to_payload(previous),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "history": run.history}

    label = f"{index + 1}/{len(stages)} {stage.name}"
    stop = run.stop.requested if run.stop is not None else None

    def after_step() -> None:
        scheduler.after_step()
        if run.forecast is not None and run.forecast.step_done():
            run.ui.note(run.forecast.line())
            if run.forecast.advice():
                run.ui.note(run.forecast.advice())

    for epoch in range(first_epoch, stage.epochs):
        if run.forecast is not None:
            run.forecast.epoch_started()
        try:
            with run.ui.epoch(index, len(stages), stage.name, epoch, stage.epochs) as tick, \
                    checkpointed(encoder, blocks, opts.activation_checkpointing, note_checkpointing(run)):
                terms = train_epoch(student, trainable, loss, run.train_set, epoch, optimizer, opts, tick,
                                    after_step, start=position, stop=stop)
                val = validate(student, loss, run.val_set, epoch, opts)
        except NonFiniteStep as bad:
            raise divergence_error(bad.what, label, epoch, f"batch {bad.batch + 1}/{bad.batches}",
                                   optimizer.param_groups[0]["lr"], opts.amp_dtype() is not None,
                                   run.checkpointer.describe_last()) from None
        except StoppedMidEpoch as stopped:
            run.checkpointer.save_within(index, epoch, stopped.position.describe(), state(), stopped.batches)
            if world()[1] > 1:  # no rank leaves (and gets its peers killed by torchrun) before rank 0 has written
                torch.distributed.barrier()
            raise run.stop_error() from None
        position = None
        if not math.isfinite(val):
            raise divergence_error(f"the validation MSE is {val:g}", label, epoch, "validation",
                                   optimizer.param_groups[0]["lr"], opts.amp_dtype() is not None,
                                   run.checkpointer.describe_last())
        scheduler.after_epoch(val)
        record = {"stage": stage.name, "epoch": epoch, "train": terms, "val_output_mse": val,
                  "lr": optimizer.param_groups[0]["lr"]}
        run.history.append(record)
        last = epoch + 1 == stage.epochs
        run.ui.log(record, force=last)
        run.checkpointer.maybe_save(index, epoch, force=last, state=state)
        if run.on_epoch is not None:
            run.on_epoch(record)
    return student.eval()
