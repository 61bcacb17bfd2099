"""Learning-rate schedules of one distillation stage."""

from __future__ import annotations

import math

import torch

LR_SCHEDULES = ("cosine", "plateau", "constant")


class LrSchedule:
    """``cosine``: from ``lr`` down to 0 over the stage's optimizer steps (no validation needed: the
    right choice when the validation split is a handful of images). ``plateau``: halve the rate after
    ``patience`` epochs without validation gain (SlimSAM's, for thousands of images). ``constant``."""

    def __init__(self, kind: str, optimizer: torch.optim.Optimizer, total_steps: int, patience: int = 3,
                 factor: float = 0.5):
        if kind not in LR_SCHEDULES:
            raise ValueError(f"unknown lr schedule {kind!r}: choose one of {LR_SCHEDULES}")
        self.kind = kind
        self.plateau = None
        self.cosine = None
        if kind == "plateau":
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=factor,
                                                                      patience=patience)
        elif kind == "cosine":
            total = max(1, total_steps)
            self.cosine = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))

    def after_step(self) -> None:
        """Called after every optimizer step."""
        if self.cosine is not None:
            self.cosine.step()

    def after_epoch(self, val_loss: float) -> None:
        """Called after every epoch's validation."""
        if self.plateau is not None:
            self.plateau.step(val_loss)

    def state_dict(self) -> dict:
        inner = self.plateau or self.cosine
        return {"kind": self.kind, "inner": inner.state_dict() if inner is not None else None}

    def load_state_dict(self, state: dict) -> None:
        inner = self.plateau or self.cosine
        if inner is not None and state.get("inner") is not None:
            inner.load_state_dict(state["inner"])
