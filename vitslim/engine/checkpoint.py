"""Checkpoints of a compression run: what is kept where, which run it belongs to, and resuming it.

A run's working folder holds ``checkpoint.pt`` (the latest epoch checkpoint: student, previous stage's
model, optimiser, learning-rate schedule, RNG state, log and the run's identity) and ``.lock`` while a
run uses it. The identity (model, teacher weights, data, every option that changes the result) is
checked on ``resume``, so a checkpoint can only continue the run that wrote it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import UsageError

CHECKPOINT = "checkpoint.pt"
LOCK = ".lock"
DEFAULT_WORKDIR = "vitslim-work"


def default_workdir(out: str | os.PathLike | None) -> Path:
    """``<out>.work`` beside the output file (so unrelated runs never share one), else ``vitslim-work``."""
    return Path(f"{out}.work") if out is not None else Path(DEFAULT_WORKDIR)


def fingerprint_model(model: nn.Module) -> str:
    """A digest of every tensor of ``model``'s state dict (names, shapes, dtypes and values)."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def fingerprint_data(dataset: Any) -> str:
    """A digest of what a run trains on: file names, sizes and times of a folder's images, the values
    of tensors, the names of in-memory images; otherwise the dataset's type and length."""
    from torch.utils.data import Subset

    h = hashlib.sha256()
    while isinstance(dataset, Subset):
        h.update(repr(list(dataset.indices)).encode())
        dataset = dataset.dataset
    items = getattr(dataset, "images", None)
    tensor = getattr(dataset, "x", None)
    if items is not None:
        for item in items:
            if isinstance(item, (str, Path)):
                st = os.stat(item)
                h.update(f"{Path(item).resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
            else:
                h.update(hashlib.sha256(item.tobytes()).digest())
    elif isinstance(tensor, torch.Tensor):
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    else:
        h.update(f"{type(dataset).__qualname__}:{len(dataset)}".encode())
    return h.hexdigest()[:16]


def run_identity(teacher: nn.Module, dataset: Any, ratio: float, prune_options: dict, train_options: dict) -> dict:
    """What makes two runs the same run: resuming requires every entry to match."""
    from ..info import get_info
    from ..registry import family_of
    from .losses import resolve_loss_scale

    info = get_info(teacher) or {}
    family = family_of(teacher)
    scale = resolve_loss_scale(train_options.get("loss_scale", "auto"), family)
    # min_steps is not kept: the resolved epochs say what it decided (and an explicit --epochs overrides it)
    keep = ("schedule", "epochs", "batch_size", "accum", "lr", "lr_schedule", "patience", "factor",
            "augment", "alpha", "val_fraction", "seed")
    return {
        "model": info.get("name"), "config": json.loads(json.dumps(info.get("config", {}), default=str)),
        "teacher_weights": fingerprint_model(teacher), "data": fingerprint_data(dataset), "ratio": ratio,
        **{k: prune_options[k] for k in ("importance", "ranking", "attention", "round_to", "sigma", "importance_batches")},
        **({k: prune_options[k] for k in ("target_speedup", "latency_batch")} if prune_options.get("target_speedup") else {}),
        **({"importance_views": v} if (v := prune_options.get("importance_views", 1)) != 1 else {}),
        **({"pick": train_options["pick"]} if train_options.get("pick") is not None else {}),
        **{k: train_options[k] for k in keep},
        # the scale the run trains with, recorded when it is not raw (checkpoints written before the
        # option existed were raw, and still resume; a SAM 2 one is refused: its family now scales)
        **({"loss_scale": scale} if scale != "raw" else {}),
        # the importance follows that scale since it could be chosen; before, the family's: a run whose
        # scale is not the family's records it, so its older checkpoints (scored otherwise) are refused
        **({"importance_scale": scale} if scale != family.loss_scale else {}),
    }


def differences(saved: dict, current: dict) -> list[str]:
    """Human-readable ``key: saved != current`` for every entry that differs."""
    out = []
    for key in current:
        if saved.get(key) != current[key]:
            out.append(f"{key} {saved.get(key)!r} != {current[key]!r}" if key not in ("teacher_weights", "data")
                       else f"{key} differ")
    return out


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "py_pos": random.getstate()[2]}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["py_pos"]))


def save_checkpoint(path: Path, payload: dict) -> None:
    from ..atomic import atomic_write, torch_save

    atomic_write(path, lambda tmp: torch_save(payload, tmp))


def load_checkpoint(workdir: Path, identity: dict) -> dict:
    """The checkpoint in ``workdir``, if it belongs to the run ``identity`` describes; else one clear
    :class:`UsageError` (missing, damaged, or another run's)."""
    path = workdir / CHECKPOINT
    if not path.is_file():
        raise UsageError(f"nothing to resume: no {path} (start without --resume)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved = state["identity"]
    except Exception as exc:  # noqa: BLE001 - truncated zip, old format, ...
        raise UsageError(f"cannot resume: {path} is damaged or from an older vitslim ({type(exc).__name__}); "
                         f"delete it and start again without --resume") from None
    diff = differences(saved, identity)
    if diff:
        raise UsageError(f"cannot resume: {path} belongs to another run ({'; '.join(diff[:3])}); "
                         f"use another --workdir, or start again without --resume")
    return state


class WorkdirLock:
    """An exclusive lock on a working folder for the length of a run (``fcntl`` on ``.lock``); a second
    run on the same folder is refused in one line instead of overwriting the first one's checkpoints."""

    def __init__(self, workdir: Path):
        self.path = workdir / LOCK
        self.handle = None

    def __enter__(self) -> "WorkdirLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.seek(0)
            pid = self.handle.read().strip() or "?"
            self.handle.close()
            raise UsageError(f"{self.path.parent} is in use by another vitslim run (pid {pid}): wait for it "
                             f"to end, or use another --workdir") from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(str(os.getpid()))
        self.handle.flush()
        return self

    def __exit__(self, *exc) -> None:
        import fcntl

        fcntl.flock(self.handle, fcntl.LOCK_UN)  # the file stays: unlinking it would race a waiting run
        self.handle.close()


class Checkpointer:
    """Writes the run's checkpoint at the end of an epoch when ``every`` seconds have passed since the
    last one, or when asked (a stage's last epoch, a stop signal midway through an epoch); only on rank
    0. A state with non-finite weights is never written: the last good checkpoint stays."""

    def __init__(self, workdir: Path, identity: dict, every: float, enabled: bool = True):
        import time

        self.path = workdir / CHECKPOINT
        self.identity = identity
        self.every = every
        self.enabled = enabled
        self.saved_at = time.perf_counter()
        self.last: tuple[int, int] | None = None  # (stage, epoch) of the checkpoint this run wrote or resumed
        self.within: tuple[int, int] | None = None  # (batch, batches) when that checkpoint is inside an epoch

    def maybe_save(self, stage: int, epoch: int, force: bool, state: Callable[[], dict]) -> None:
        """Write ``state()`` (built only when a checkpoint is due) with the RNG and the run's identity."""
        import time

        if not (force or (self.enabled and time.perf_counter() - self.saved_at >= self.every)):
            return
        if self.enabled:
            self._write({"stage": stage, "epoch": epoch, "partial": None}, state())
        self.last, self.within = (stage, epoch), None  # other ranks know the forced ones rank 0 writes

    def save_within(self, stage: int, epoch: int, partial: dict, state: dict, batches: int) -> None:
        """Write a checkpoint in the middle of ``epoch`` (``partial``: batches done and running sums)."""
        if self.enabled:
            self._write({"stage": stage, "epoch": epoch - 1, "partial": {**partial, "batches": batches}}, state)
        self.last, self.within = (stage, epoch), (partial["batch"], batches)

    def _write(self, where: dict, state: dict) -> None:
        import time

        from ..errors import NonFiniteError
        from ..finite import finite

        for key in ("student", "previous"):
            if state.get(key) is not None:
                bad = next((k for k, t in state[key]["state_dict"].items()
                            if (t.is_floating_point() or t.is_complex()) and not finite(t)), None)
                if bad is not None:
                    raise NonFiniteError(f"diverged: the {key} model's {bad} is not finite; the last good "
                                         f"checkpoint ({self.path}) is kept: try a lower --lr")
        save_checkpoint(self.path, {"identity": self.identity, **where, "rng": rng_state(), **state})
        self.saved_at = time.perf_counter()

    def resumed(self, state: dict) -> None:
        """Remember the checkpoint a resumed run starts from (so that a new stop can name it)."""
        partial = state.get("partial")
        if partial is None:
            self.last, self.within = (state["stage"], state["epoch"]), None
        else:
            self.last, self.within = (state["stage"], state["epoch"] + 1), (partial["batch"], partial["batches"])

    def describe_last(self) -> str | None:
        """Where the last checkpoint stands, in words (None if there is none)."""
        if self.last is None:
            return None
        stage, epoch = self.last
        if self.within is not None:
            return f"stage {stage + 1} epoch {epoch + 1} batch {self.within[0]}/{self.within[1]}"
        return f"stage {stage + 1} epoch {epoch + 1}"
