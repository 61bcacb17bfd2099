"""A compression run: the schedule's stages in order, one working folder, resume, the final file."""

from __future__ import annotations

import copy
import math
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import Subset

from ..errors import NonFiniteError, UsageError, VitslimError
from ..finite import first_nonfinite
from .faults import StopRequest, StopSignals
from .forecast import Forecast
from .checkpoint import (CHECKPOINT, Checkpointer, WorkdirLock, default_workdir, load_checkpoint, run_identity,
                         set_rng_state)
from .options import PruneOptions, TrainOptions
from .schedules import build_schedule
from .stage import RunState, run_stage
from .trainer import world


class Interrupted(VitslimError):
    """The run was stopped (Ctrl-C); ``checkpoint`` names the folder whose checkpoint can continue it."""

    exit_code = 130

    def __init__(self, message: str, checkpoint: Path | None = None):
        super().__init__(message)
        self.checkpoint = checkpoint


class Preempted(Interrupted):
    """The run was asked to stop by a signal (SIGTERM, SIGUSR1): it finished its optimizer step, wrote
    a checkpoint and stopped. ``exit_code`` is 128 + the signal's number (143 for SIGTERM)."""

    def __init__(self, message: str, checkpoint: Path | None, exit_code: int):
        super().__init__(message, checkpoint)
        self.exit_code = exit_code


@dataclass
class CompressionResult:
    """The compressed model, the held-out images (paths or PIL images, for :func:`vitslim.evaluate`;
    empty for tensor data and when none was held out), and what a front end shows (:meth:`summary`)."""

    student: nn.Module
    teacher: nn.Module
    val_images: list = field(default_factory=list)
    images: dict = field(default_factory=dict)
    seconds: float = 0.0
    forecast: dict = field(default_factory=dict)  # what the run was forecast to take (forecast.Forecast)

    def summary(self) -> dict:
        """Sizes before and after, each stage's epochs and last losses, images and time."""
        from ..api import inspect
        from ..info import get_info

        before, after = inspect(self.teacher), inspect(self.student)
        stages: dict[str, dict] = {}
        last = get_info(self.student)["history"][-1]
        speed = {k: last[k] for k in ("target_speedup", "predicted_speedup", "measured_speedup", "measured_ms")
                 if k in last}
        for rec in last["log"]:
            stages[rec["stage"]] = {"epochs": rec["epoch"] + 1, "train_loss": rec["train"]["loss"],
                                    "val_output_mse": rec["val_output_mse"]}
        return {"before": {k: before["model"][k] for k in ("params", "macs")},
                "after": {k: after["model"][k] for k in ("params", "macs")},
                "stages": stages, "images": self.images, "seconds": round(self.seconds, 1),
                "forecast": self.forecast, **({"speed": speed} if speed else {})}


def split(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded train/validation split; at least one validation image and one training image.
    ``val_fraction`` 0: every image trains, and validation measures the fit on them (unaugmented)."""
    if val_fraction == 0:
        if n < 1:
            raise UsageError("compression needs at least 1 image, got 0")
        return list(range(n)), list(range(n))
    if n < 2:
        raise UsageError(f"compression needs at least 2 images (1 for validation), got {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    return sorted(order[n_val:]), sorted(order[:n_val])


@contextmanager
def frozen(model: nn.Module):
    """``requires_grad=False`` on every parameter of ``model`` while inside; the flags are restored."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)


def init_distributed(device: str | None) -> str:
    """Join the process group ``torchrun`` describes (env WORLD_SIZE > 1), once; return the device."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if device is None:
        if torch.cuda.is_available():
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if dist.is_initialized() else "cuda"
        else:
            device = "cpu"
    return device


def run(model: nn.Module, ratio: float, data: Any, prune: PruneOptions, train: TrainOptions,
        workdir: str | os.PathLike | None = None, resume: bool = False, out: str | os.PathLike | None = None,
        progress: bool = True, checkpoint_every: float = 60.0,
        on_epoch: Callable[[dict], None] | None = None) -> CompressionResult:
    """Compress ``model`` (the teacher, left unchanged) by ``ratio``: see :func:`vitslim.compress`."""
    from ..data import as_dataset
    from ..atomic import check_writable
    from ..pruning import check_options
    from ..registry import family_of

    prune.validate()
    if (ratio is None) == (prune.target_speedup is None):
        raise UsageError("give either a ratio or a target speed-up (not both)")
    if prune.target_speedup is not None and train.schedule not in ("alternate", "one-shot"):
        raise UsageError(f"a target speed-up works with the alternate and one-shot schedules, not {train.schedule}")
    check_options(0.0 if ratio is None else ratio, "both", prune.ranking, prune.attention, prune.round_to)
    train.validate(ratio or 0.0)
    if out is not None:
        check_writable(out)
    workdir = Path(workdir) if workdir is not None else default_workdir(out)
    family = family_of(model)
    dataset = as_dataset(data, lambda im: family.preprocess(model, im))
    device = init_distributed(train.device)
    rank, size = world()
    if train.pick is not None and train.pick > len(dataset):
        raise UsageError(f"cannot pick {train.pick} images: the data holds {len(dataset)}")
    if prune.importance_views > 1 and not train.augment.active:
        raise UsageError("importance views are augmented views: they need an augmentation (augment is none)")
    if train.pick is not None:
        dataset, train_idx, val_idx = _picked(model, dataset, train, device, progress and rank == 0)
    else:
        train_idx, val_idx = split(len(dataset), train.val_fraction, train.seed)
    if train.batch_size < size or train.batch_size % size:
        raise UsageError(f"batch size {train.batch_size} must be a multiple of the {size} processes")
    steps_per_epoch = math.ceil(math.ceil(len(train_idx) / train.batch_size) / train.accum)
    opts = train.resolved(max(s.width for s in family.describe(model).streams()), device, steps_per_epoch,
                          len(dataset))
    stages = build_schedule(opts.schedule, ratio or 0.0, opts.epochs, opts.alpha)
    identity = run_identity(model, dataset, ratio, prune.describe(), opts.describe())
    if resume and not (workdir / CHECKPOINT).is_file():  # before the lock creates the folder
        raise UsageError(f"nothing to resume: no {workdir / CHECKPOINT} (start without --resume)")
    with WorkdirLock(workdir) if rank == 0 else nullcontext():
        state = load_checkpoint(workdir, identity) if resume else None
        from ..progress import StageProgress

        ui = StageProgress(enabled=progress and rank == 0)
        original = model.to(device).eval()
        if opts.fast:  # the family's fused attention: same outputs and gradients, less time and memory
            original = family.optimize(copy.deepcopy(original))
        checkpointer = Checkpointer(workdir, identity, checkpoint_every, enabled=rank == 0)
        forecast = _forecast(stages, state, steps_per_epoch, opts, prune, len(train_idx), len(val_idx))
        ui.forecast = forecast
        signals = StopSignals()
        latency = None
        if prune.target_speedup is not None:
            latency = _latency_model(model, opts, ui, prune.latency_batch)
            from ..budget import check_reachable
            from ..latency import measured_ms

            check_reachable(family.describe(model), latency, prune.target_speedup)
            with ui.status("timing the teacher"):
                latency.dense_ms = measured_ms(model, opts.device, _latency_dtype(opts), prune.latency_batch)
        shared = RunState(family, original, Subset(dataset, train_idx), Subset(dataset, val_idx), steps_per_epoch,
                          prune, opts, checkpointer, ui, family.optimize if opts.fast else (lambda m: m), on_epoch,
                          stop=signals, stop_error=lambda: _preempted(checkpointer, workdir, signals.request),
                          forecast=forecast, latency=latency)
        started = time.perf_counter()
        try:
            with frozen(original), signals:
                final = _stages(shared, stages, state)
        except KeyboardInterrupt:
            raise _interrupted(checkpointer, workdir) from None
        seconds = time.perf_counter() - started
        bad = first_nonfinite(final)
        if bad is not None:
            raise NonFiniteError(f"diverged: the student's {bad} is not finite; the output was not written: "
                                 f"try a lower --lr")
    speed = {}
    if latency is not None:
        speed = {"target_speedup": prune.target_speedup,
                 **_measured_speedup(model, final, latency, opts, ui, prune.latency_batch)}
    from ..info import add_history

    add_history(final, {"step": "distill", "ratio": ratio, **speed, **opts.describe(), "importance": prune.describe()["importance"],
                        "images": {"train": len(train_idx), "val": len(val_idx)}, "log": shared.history,
                        "seconds": round(seconds, 2)})
    final.cpu()
    if out is not None and rank == 0:
        from ..modelfile import save

        save(final, out)
    held_out = val_idx != train_idx  # val_fraction=0: validation is the training images, none held out
    return CompressionResult(final, model, _source_images(dataset, val_idx) if held_out else [],
                             {"train": len(train_idx), "val": len(val_idx)}, seconds, forecast.describe())


def _source_images(dataset: Any, idx: list[int]) -> list:
    """The files or PIL images behind ``idx`` of ``dataset`` (through picked subsets); [] for tensors."""
    while isinstance(dataset, Subset):
        idx, dataset = [dataset.indices[i] for i in idx], dataset.dataset
    images = getattr(dataset, "images", None)
    return [images[i] for i in idx] if images is not None else []


def _stages(run: RunState, stages, state: dict | None) -> nn.Module:
    """Every stage from the checkpoint ``state`` (or the start) on; returns the last stage's student."""
    from ..modelfile import from_payload

    current, first = run.original, 0
    if state is not None:
        run.history.extend(state["history"])
        run.checkpointer.resumed(state)
        first = state["stage"]
        if state["previous"] is not None:
            current = run.speed(from_payload(state["previous"])).to(run.train.device).eval()
        set_rng_state(state["rng"])
        if state["epoch"] + 1 >= stages[first].epochs:  # that stage had finished
            current = run.speed(from_payload(state["student"])).to(run.train.device).eval()
            first, state = first + 1, None
    for index in range(first, len(stages)):
        current = run_stage(run, index, stages, current, resume=state if index == first else None)
        state = None
    return current


def _latency_dtype(opts: TrainOptions) -> str:
    return "bf16" if opts.amp_dtype() is not None else "fp32"


def _latency_model(model: nn.Module, opts: TrainOptions, ui, batch: int):
    """The teacher's latency model on the run's device (measured once per device, then cached)."""
    from ..latency import cache_path, latency_model, model_key

    cached = cache_path(model_key(model, opts.device, _latency_dtype(opts), batch)).is_file()
    with ui.bar("latency model: timing the blocks" if not cached else "latency model (cached)") as tick:
        lat = latency_model(model, device=opts.device, dtype=_latency_dtype(opts), batch=batch, progress=tick)
    if not cached:
        ui.note(f"latency model of {opts.device} measured in {lat.seconds:.0f} s (cached for later runs)")
    return lat


def _measured_speedup(teacher: nn.Module, student: nn.Module, latency, opts: TrainOptions, ui, batch: int) -> dict:
    """The student's measured speed-up over the teacher (fused attention on both), for the provenance."""
    from ..api import describe
    from ..latency import measured_ms

    with ui.status("timing the student"):
        dense = latency.dense_ms  # timed before the first stage
        slim = measured_ms(student, opts.device, _latency_dtype(opts), batch)
    predicted = latency.predict(latency.key["widths"]) / latency.predict(describe(student).widths())
    ui.note(f"speed-up: {dense / slim:.2f}x measured ({dense:.1f} -> {slim:.1f} ms on {opts.device}), "
            f"{predicted:.2f}x predicted")
    return {"measured_ms": {"teacher": round(dense, 3), "student": round(slim, 3)},
            "measured_speedup": round(dense / slim, 3), "predicted_speedup": round(predicted, 3)}


def _forecast(stages, state: dict | None, steps_per_epoch: int, opts: TrainOptions, prune: PruneOptions,
              n_train: int, n_val: int) -> Forecast:
    """The work left in the run (all of it, or what follows the checkpoint it resumes)."""
    from ..pruning import resolve_criterion

    epochs = [s.epochs for s in stages]
    if state is not None:
        first = state["stage"] + (1 if state["epoch"] + 1 >= stages[state["stage"]].epochs else 0)
        epochs = epochs[first:] or [0]
        if first == state["stage"]:
            epochs[0] -= state["epoch"] + 1
    needs_data = resolve_criterion(prune.importance, sigma=prune.sigma).needs_data
    calibration = n_train * prune.importance_views
    images = min(calibration, prune.importance_batches or calibration) if needs_data else 0
    return Forecast(epochs, steps_per_epoch, opts.batch_size * opts.accum, images, n_val, str(opts.device))


def _picked(model: nn.Module, dataset: Any, train: TrainOptions, device: str,
            progress: bool) -> tuple[Subset, list[int], list[int]]:
    """(images, train indices, validation indices): every one of the ``train.pick`` images of ``dataset``
    that cover the teacher's outputs best trains (each is there for what only it shows), and validation
    draws its share from the images not picked (seeded). Every rank picks the same."""
    from ..progress import StageProgress
    from ..selection import pick_images

    with StageProgress(enabled=progress).bar(f"picking {train.pick} of {len(dataset)} images") as tick:
        chosen = pick_images(model.to(device), dataset, train.pick, seed=train.seed, progress=tick).tolist()
    if world()[1] > 1:  # rank 0's pick for all (a near tie could go another way on another device)
        box = [chosen]
        torch.distributed.broadcast_object_list(box, src=0)
        chosen = box[0]
    n = len(chosen)
    rest = sorted(set(range(len(dataset))) - set(chosen))
    if train.val_fraction == 0 or not rest:  # nothing held out: validation measures the fit
        return Subset(dataset, chosen), list(range(n)), list(range(n))
    order = torch.randperm(len(rest), generator=torch.Generator().manual_seed(train.seed)).tolist()
    held = [rest[i] for i in order[:max(1, round(n * train.val_fraction))]]
    return Subset(dataset, chosen + sorted(held)), list(range(n)), list(range(n, n + len(held)))


def _interrupted(checkpointer: Checkpointer, workdir: Path) -> Interrupted:
    if checkpointer.last is None:
        return Interrupted("interrupted before the first checkpoint: nothing was kept to resume")
    return Interrupted(f"interrupted: the checkpoint after {checkpointer.describe_last()} is kept in "
                       f"{workdir}; continue with --resume", workdir)


def _preempted(checkpointer: Checkpointer, workdir: Path, request: StopRequest) -> Preempted:
    if checkpointer.last is None:
        return Preempted(f"stopped by {request.signal} before the first checkpoint: nothing was kept to resume",
                         None, request.exit_code)
    return Preempted(f"stopped by {request.signal}: the checkpoint at {checkpointer.describe_last()} is kept in "
                     f"{workdir}; continue with --resume", workdir, request.exit_code)
