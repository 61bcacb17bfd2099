"""The distillation loop of one stage: AdamW, plateau LR halving, accumulation, autocast, validation."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..structure import Structure
from .losses import OUTPUT, Term, term_loss
from .options import TrainOptions
from .taps import tap_points, tapped


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EpochOrder(torch.utils.data.Sampler):
    """A seeded permutation per epoch, split across ranks like DistributedSampler, so that a global batch
    holds the same images whatever the number of processes."""

    def __init__(self, n: int, seed: int, epoch: int, skip: int = 0):
        self.n, self.seed, self.epoch, self.skip = n, seed, epoch, skip  # skip: items already seen (resume)
        self.rank, self.size = world()

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        usable = (self.n // self.size) * self.size
        return iter(order[:usable][self.rank::self.size][self.skip:])

    def __len__(self) -> int:
        return max(0, self.n // self.size - self.skip)


class StageLoss:
    """Evaluates a stage's terms: runs the student and each reference model with the needed taps."""

    def __init__(self, family, structure_student: Structure, terms: list[Term], refs: dict[str, nn.Module],
                 scale: str = "raw"):
        self.family = family
        self.terms = terms
        self.refs = refs
        self.scale = scale
        self.points = {t.tap: tap_points(structure_student, t.tap) for t in terms if t.tap != OUTPUT}

    def _run(self, model: nn.Module, x: torch.Tensor, taps: set[str], runner=None) -> dict[str, torch.Tensor]:
        encoder = self.family.encoder(model)
        pts = [p for t in taps for p in self.points[t]]
        with tapped(encoder, pts) as feats:
            out = (runner or encoder)(x)
        return {**feats, OUTPUT: self.family.output_features(out)}

    def __call__(self, student: nn.Module, x: torch.Tensor, epoch: int, runner=None) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted sum of the active terms; ``runner`` (e.g. a DDP wrapper of the student's encoder)
        is called instead of the encoder itself."""
        active = [t for t in self.terms if t.weight(epoch) != 0.0]
        s = self._run(student, x, {t.tap for t in active if t.tap != OUTPUT}, runner)
        refs = {}
        with torch.no_grad():
            for name in {t.reference for t in active}:
                refs[name] = self._run(self.refs[name], x, {t.tap for t in active if t.reference == name and t.tap != OUTPUT})
        total = s[OUTPUT][0].new_zeros((), dtype=torch.float32)
        parts = {}
        for t in active:
            keys = [OUTPUT] if t.tap == OUTPUT else [k for k, _ in self.points[t.tap]]
            value = term_loss(t, s, refs[t.reference], keys, self.scale)
            parts[t.name] = float(value.detach())
            total = total + t.weight(epoch) * value
        return total, parts


@dataclass
class EpochPosition:
    """How far an epoch got when it was stopped after an optimizer step: batches done, the running sums
    of its loss terms, and the RNG state to continue from (a checkpoint keeps it; resuming goes on)."""

    batch: int
    sums: dict[str, float]
    steps: int
    rng: dict | None = None

    def describe(self) -> dict:
        return {"batch": self.batch, "sums": self.sums, "steps": self.steps}


class StoppedMidEpoch(Exception):
    """A stop was requested; ``position`` is where the epoch stands, ``batches`` its length."""

    def __init__(self, position: EpochPosition, batches: int):
        super().__init__("stopped")
        self.position, self.batches = position, batches


def train_epoch(student: nn.Module, trainable: nn.Module, loss: StageLoss, data: Dataset, epoch: int,
                optimizer: torch.optim.Optimizer, cfg: TrainOptions, progress=None, on_step=None,
                start: EpochPosition | None = None, stop=None) -> dict[str, float]:
    """One epoch over ``data`` in a seeded order; returns mean loss terms. ``trainable`` is the module
    whose gradients are synchronised (the DDP wrapper of the student's encoder, or the encoder).
    ``start`` continues an epoch stopped midway; ``stop()`` is asked after every optimizer step and, when
    true, ends the epoch there with :class:`StoppedMidEpoch`. A non-finite loss or gradient raises
    :class:`NonFiniteStep` before the optimizer steps."""
    from .faults import NonFiniteStep, grads_finite

    rank, size = world()
    per_rank = max(1, cfg.batch_size // size)
    first = start.batch if start is not None else 0
    n_batches = math.ceil((len(data) // size) / per_rank)
    loader = DataLoader(data, batch_size=per_rank, sampler=EpochOrder(len(data), cfg.seed, epoch, first * per_rank),
                        num_workers=cfg.num_workers, drop_last=False)
    batches = iter(loader)  # draws the loader's seed from the global RNG: a resumed epoch restores it after
    if start is not None and start.rng is not None:
        from .checkpoint import set_rng_state

        set_rng_state(start.rng)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    student.train()
    sums: dict[str, float] = dict(start.sums) if start is not None else {}
    steps = start.steps if start is not None else 0
    optimizer.zero_grad(set_to_none=True)
    for i, x in enumerate(batches, start=first):
        x = x.to(cfg.device, non_blocking=True)
        if cfg.augment.active:  # seeded per (epoch, batch, rank): a resumed run makes the same views
            x = cfg.augment(x, torch.Generator().manual_seed(hash((cfg.seed, epoch, i, rank)) % 2**63))
        last_of_step = (i + 1) % cfg.accum == 0 or i + 1 == n_batches
        # micro-batches weighted by their share of the batch: the same gradient as the whole batch at once
        chunks = x.split(cfg.micro(len(x)))
        value, parts = 0.0, {}
        for j, chunk in enumerate(chunks):
            share = len(chunk) / len(x)
            # under DDP, gradients are averaged across ranks only on the backward before an optimizer step
            sync_now = last_of_step and j + 1 == len(chunks)
            ctx = trainable.no_sync() if (hasattr(trainable, "no_sync") and not sync_now) else nullcontext()
            with ctx:
                with cfg.autocast():
                    v, p = loss(student, chunk, epoch, runner=trainable)
                if not torch.isfinite(v.detach()):
                    raise NonFiniteStep(f"the training loss is {float(v.detach()):g}", i, n_batches)
                (v * share / cfg.accum).backward()
            value = value + share * v.detach()
            for k, pv in p.items():
                parts[k] = parts.get(k, 0.0) + share * pv
        for k, v in {"loss": float(value), **parts}.items():
            sums[k] = sums.get(k, 0.0) + v
        steps += 1
        if last_of_step:
            if not grads_finite(params):
                raise NonFiniteStep("a gradient is not finite", i, n_batches)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if on_step is not None:
                on_step()
        if progress is not None:
            progress(i + 1, n_batches, float(value))
        if last_of_step and stop is not None and stop():
            raise StoppedMidEpoch(EpochPosition(i + 1, sums, steps), n_batches)
    return {k: v / max(steps, 1) for k, v in sums.items()}


@torch.no_grad()
def validate(student: nn.Module, loss: StageLoss, data: Dataset, epoch: int, cfg: TrainOptions) -> float:
    """Mean MSE between the student's output and the original model's, over the validation images."""
    student.eval()
    loader = DataLoader(data, batch_size=max(1, cfg.batch_size), shuffle=False, num_workers=cfg.num_workers)
    total, n = 0.0, 0
    family = loss.family
    for batch in loader:
        for x in batch.split(cfg.micro(len(batch))):
            x = x.to(cfg.device)
            with cfg.autocast():
                s = family.output_features(family.encoder(student)(x))
                r = family.output_features(family.encoder(loss.refs["original"])(x))
            for a, b in zip(s, r):
                total += float(torch.nn.functional.mse_loss(a.float(), b.float(), reduction="sum"))
                n += a.numel()
    return total / max(n, 1)
