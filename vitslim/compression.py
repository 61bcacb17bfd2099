"""``compress``: a schedule of prune + distil stages, with checkpoints and resume."""

from __future__ import annotations

import copy
import math
import os
from contextlib import contextmanager
import random
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from .engine.augment import parse_augment
from .engine.lr import LR_SCHEDULES, LrSchedule
from .engine.schedules import build_schedule
from .engine.trainer import StageLoss, TrainConfig, train_epoch, validate, world
from .errors import UsageError
from .info import add_history
from .modelfile import atomic_write, check_writable, from_payload, to_payload
from .pruning import check_options, prune
from .registry import family_of

CHECKPOINT = "checkpoint.pt"
MIN_STEPS = 2000  # optimizer steps per stage that the default number of epochs reaches


def auto_epochs(schedule: str, steps_per_epoch: int, min_steps: int = MIN_STEPS) -> int:
    """Epochs (per stage of ``alternate``; the unit every schedule shares) for ``min_steps`` optimizer
    steps per stage: with little data, many epochs of augmented views; with thousands of images, one."""
    per_stage = max(1, math.ceil(min_steps / max(1, steps_per_epoch)))
    if schedule.startswith("iterative:"):  # K rounds share 2 x epochs: each round gets 2 * epochs / K
        k = int(schedule.split(":", 1)[1])
        per_stage = max(1, math.ceil(per_stage * k / 2))
    return per_stage


def auto_lr(embed_dim: int) -> float:
    """The default learning rate, 0.1 / width: Adam's rate shrinks with width (muP's rule); it gives
    SlimSAM's 1e-4 for SAM-B (1.3e-4 at 768) and the 1e-3 measured best for width-96 ViTs."""
    return 0.1 / embed_dim


def check_training_options(lr: float | None, lr_schedule: str, min_steps: int) -> None:
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0):
        raise UsageError(f"learning rate must be a positive number, got {lr!r}")
    if lr_schedule not in LR_SCHEDULES:
        raise UsageError(f"unknown lr schedule '{lr_schedule}': choose one of {', '.join(LR_SCHEDULES)}")
    if not isinstance(min_steps, int) or min_steps < 1:
        raise UsageError(f"min_steps must be an integer >= 1, got {min_steps!r}")


class _Tensors(Dataset):
    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def dataset_for(model: nn.Module, data: Any) -> Dataset:
    """A dataset of encoder inputs: from a folder (None: scikit-image samples), a tensor, or a Dataset."""
    from .data import image_dataset

    if isinstance(data, torch.Tensor):
        return _Tensors(data)
    if isinstance(data, Dataset):
        return data
    if data is None or isinstance(data, (str, os.PathLike)):
        family = family_of(model)
        return image_dataset(data, lambda im: family.preprocess(model, im))
    raise UsageError(f"data must be a folder, a tensor or a Dataset, not {type(data).__name__}")


def split(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded train/validation split; at least one validation image and one training image."""
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


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "py_pos": random.getstate()[2]}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["py_pos"]))


def _init_distributed(device: str | None) -> str:
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


def compress(
    model: nn.Module,
    ratio: float,
    data: Any = None,
    schedule: str = "alternate",
    epochs: int | None = None,
    batch_size: int = 4,
    accum: int = 1,
    lr: float | None = None,
    importance: Any = "disturbed_taylor",
    ranking: str = "global",
    attention: str = "head_dim",
    round_to: int = 1,
    sigma: float = 0.01,
    importance_batches: int | None = None,
    alpha: float = 0.5,
    val_fraction: float = 0.1,
    patience: int = 3,
    lr_schedule: str = "cosine",
    min_steps: int = MIN_STEPS,
    seed: int = 0,
    device: str | None = None,
    precision: str = "auto",
    workdir: str | os.PathLike | None = None,
    resume: bool = False,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    micro_batch: int = 0,
    fast: bool = True,
    augment: Any = "default",
    checkpoint_every: float = 60.0,
    stop_after: tuple[int, int] | None = None,
) -> nn.Module:
    """Compress ``model`` by ``ratio`` with a schedule of prune + distil stages (SlimSAM by default).

    ``alternate``: stage 1 prunes the embedding width and distils while aligning the bottleneck features
    (attention and MLP hidden activations) with the original model's; stage 2 prunes the bottlenecks and
    distils while aligning the block outputs with the stage-1 model's, under dynamic weights. ``one-shot``
    and ``iterative:K`` spend the same epochs. ``data``: a folder of images (None: the scikit-image
    samples), a (N,C,H,W) tensor of preprocessed images, or a Dataset of them.

    Made for little data: ``epochs`` (per stage of ``alternate``) defaults to enough epochs for
    ``min_steps`` optimizer steps per stage (one epoch from about 8,000 images at batch 4); ``lr``
    defaults to 0.1 / the embedding width (1.3e-4 for SAM-B, 1e-3 for a width-96 ViT), decayed by a
    cosine over each stage (``lr_schedule``: ``cosine``, SlimSAM's ``plateau``, ``constant``); teacher
    and student see the same augmented views of each batch (``augment``: ``default``, ``none`` or a
    list such as ``"flip,crop=0.5,mixup"``, see :mod:`vitslim.engine.augment`).

    An epoch ends with an atomic checkpoint in ``workdir`` when ``checkpoint_every`` seconds have
    passed since the last one, and at the end of every stage; ``resume=True`` continues from it.
    ``out`` writes the final model.
    ``micro_batch`` images go through forward/backward at a time (0: 1 on CPU, the whole batch on GPU);
    the gradient is the whole batch's either way. ``fast`` trains and teaches with the family's fused
    attention (:func:`vitslim.optimize`; same numbers). ``model`` is the teacher: it is moved to ``device``
    and otherwise left unchanged. ``stop_after=(stage, epoch)`` stops after that epoch's checkpoint.
    """
    check_options(ratio, "both", ranking, attention, round_to)
    build_schedule(schedule, ratio, 1 if epochs is None else epochs, alpha)  # bad input fails before any work
    check_training_options(lr, lr_schedule, min_steps)
    augment = parse_augment(augment)
    if out is not None:
        check_writable(out)
    device = _init_distributed(device)
    rank, size = world()
    if batch_size < size or batch_size % size:
        raise UsageError(f"batch size {batch_size} must be a multiple of the {size} processes")
    family = family_of(model)
    if lr is None:
        lr = auto_lr(family.describe(model).embed_dim)
    cfg = TrainConfig(batch_size=batch_size, accum=accum, lr=lr, patience=patience, seed=seed,
                      device=device, precision=precision, micro_batch=micro_batch, augment=augment)
    family = family_of(model)
    workdir = Path(workdir or "vitslim-work")
    ckpt_path = workdir / CHECKPOINT
    state = None
    if resume:
        if not ckpt_path.is_file():
            raise UsageError(f"nothing to resume: no {ckpt_path} (start without --resume)")
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if state.get("ratio") != ratio or state.get("schedule") != schedule:
            raise UsageError(f"{ckpt_path} belongs to another run (ratio {state.get('ratio')}, schedule "
                             f"{state.get('schedule')}): use another --workdir or drop --resume")
    if rank == 0:
        workdir.mkdir(parents=True, exist_ok=True)

    original = model.to(device).eval()
    if fast:  # the family's fused attention: same outputs and gradients, less time and memory
        original = family.optimize(copy.deepcopy(original))
    speed = family.optimize if fast else (lambda m: m)
    with frozen(original):
        dataset = dataset_for(model, data)
        train_idx, val_idx = split(len(dataset), val_fraction, seed)
        train_set, val_set = Subset(dataset, train_idx), Subset(dataset, val_idx)
        steps_per_epoch = math.ceil(math.ceil(len(train_set) / batch_size) / accum)
        if epochs is None:
            epochs = auto_epochs(schedule, steps_per_epoch, min_steps)
        stages = build_schedule(schedule, ratio, epochs, alpha)

        from .progress import StageProgress

        ui = StageProgress(enabled=progress and rank == 0)
        started = saved_at = time.perf_counter()
        history: list[dict] = []
        current, start_stage, start_epoch = original, 0, 0
        student = None
        if state is not None:
            history = state["history"]
            start_stage, start_epoch = state["stage"], state["epoch"] + 1
            current = speed(from_payload(state["previous"])).to(device).eval() if state["previous"] else original
            student = speed(from_payload(state["student"])).to(device)
            if start_epoch >= stages[start_stage].epochs:  # that stage had finished
                current, student = student.eval(), None
                start_stage, start_epoch = start_stage + 1, 0
            _set_rng_state(state["rng"])

        for si in range(start_stage, len(stages)):
            stage = stages[si]
            resuming = state is not None and si == start_stage and student is not None
            first_epoch = start_epoch if resuming else 0
            if not resuming:
                # one image per batch, as SlimSAM's reference does; every rank scores the same images alike
                calib = DataLoader(train_set, batch_size=1, shuffle=False)
                with ui.bar(f"stage {si + 1}/{len(stages)} {stage.name}: importance") as tick:
                    student = prune(current, stage.ratio, part=stage.part, importance=importance,
                                    ranking=ranking, data=calib, attention=attention, round_to=round_to,
                                    sigma=sigma, batches=importance_batches, seed=seed + si, progress=tick)
                student = student.to(device)
            for p in student.parameters():
                p.requires_grad_(True)
            previous = current
            for p in previous.parameters():
                p.requires_grad_(False)
            encoder = family.encoder(student)
            trainable = encoder
            if size > 1:
                trainable = torch.nn.parallel.DistributedDataParallel(encoder)
            optimizer = torch.optim.AdamW(encoder.parameters(), lr=lr)
            scheduler = LrSchedule(lr_schedule, optimizer, stage.epochs * steps_per_epoch, cfg.patience, cfg.factor)
            if resuming:
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
            loss = StageLoss(family, family.describe(student), stage.terms, {"original": original, "previous": previous})
            for epoch in range(first_epoch, stage.epochs):
                with ui.epoch(si, len(stages), stage.name, epoch, stage.epochs) as tick:
                    terms = train_epoch(student, trainable, loss, train_set, epoch, optimizer, cfg, tick,
                                        scheduler.after_step)
                    val = validate(student, loss, val_set, epoch, cfg)
                scheduler.after_epoch(val)
                record = {"stage": stage.name, "epoch": epoch, "train": terms, "val_output_mse": val,
                          "lr": optimizer.param_groups[0]["lr"]}
                history.append(record)
                last = epoch + 1 == stage.epochs
                ui.log(record, force=last)
                due = time.perf_counter() - saved_at >= checkpoint_every or last or stop_after == (si, epoch)
                if rank == 0 and due:
                    payload = {
                        "ratio": ratio, "schedule": schedule, "stage": si, "epoch": epoch,
                        "student": to_payload(student), "previous": None if previous is original else to_payload(previous),
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "rng": _rng_state(), "history": history,
                    }
                    atomic_write(ckpt_path, lambda tmp: torch.save(payload, tmp))
                    saved_at = time.perf_counter()
                if stop_after == (si, epoch):
                    raise KeyboardInterrupt
            current = student.eval()
            student = None
            state = None

        final = current
        add_history(final, {"step": "distill", "schedule": schedule, "ratio": ratio, "epochs": epochs,
                            "batch_size": batch_size, "accum": accum, "lr": lr, "lr_schedule": lr_schedule,
                            "augment": augment.describe(), "seed": seed,
                            "images": {"train": len(train_idx), "val": len(val_idx)}, "log": history,
                            "seconds": round(time.perf_counter() - started, 2)})
        if out is not None and rank == 0:
            from .modelfile import save

            save(final.cpu(), out)
        return final
