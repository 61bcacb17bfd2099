"""How long a compression run will take, from its first timed steps.

The run's work is counted up front (per stage: the importance pass over the calibration images, the
optimizer steps of every epoch, a validation pass per epoch), then priced by what the first steps
measure: seconds per calibration image, and seconds per optimizer step. Both are taken from stage 1,
whose model is the largest, so later stages make the forecast pessimistic rather than optimistic.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

HOUR = 3600.0
STEPS_TIMED = 3  # optimizer steps (after the first, which warms up) that price the rest


def duration(seconds: float) -> str:
    """``42 s``, ``12 min``, ``3.4 h``, ``2.1 days``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * HOUR:
        return f"{seconds / HOUR:.1f} h"
    return f"{seconds / (24 * HOUR):.1f} days"


@dataclass
class Forecast:
    """The work of a run (``epochs`` per stage, ``steps_per_epoch`` optimizer steps of ``batch`` images,
    ``importance_images`` per stage, ``val_images`` per epoch) and its measured prices."""

    epochs: list[int]
    steps_per_epoch: int
    batch: int
    importance_images: int
    val_images: int
    device: str
    per_image: float | None = None  # seconds per calibration image (importance)
    per_step: float | None = None  # seconds per optimizer step
    _step_times: list[float] = field(default_factory=list)
    _last_step: float | None = None
    started: float = field(default_factory=time.perf_counter)

    @property
    def steps(self) -> int:
        return sum(self.epochs) * self.steps_per_epoch

    def importance_timed(self, seconds_per_image: float) -> None:
        if self.per_image is None:
            self.per_image = seconds_per_image

    def step_done(self) -> bool:
        """Note one optimizer step; True once (when the steps that price the rest have been timed)."""
        now = time.perf_counter()
        if self._last_step is not None and self.per_step is None:
            self._step_times.append(now - self._last_step)
        self._last_step = now
        if self.per_step is None and len(self._step_times) >= min(STEPS_TIMED, max(1, self.steps - 1)):
            self.per_step = sorted(self._step_times)[len(self._step_times) // 2]
            return True
        return False

    def epoch_started(self) -> None:
        self._last_step = None  # validation and loader start-up between epochs are not a step

    def _val_seconds(self) -> float:
        # a validation image costs a forward of the student and of the teacher: about a third of a
        # training image's forward + backward + teacher forward
        return self.val_images * (self.per_step or 0.0) / max(1, self.batch) / 3

    def total(self) -> float | None:
        """Predicted seconds for the whole run (importance, training, validation); None until priced."""
        importance = len(self.epochs) * self.importance_images * (self.per_image or 0.0)
        if self.per_step is None:  # a step of B images: about B x (forward + backward + teacher forward)
            if not self.per_image:
                return None
            per_step = self.batch * self.per_image * 1.5
            return importance + self.steps * per_step + sum(self.epochs) * self.val_images * per_step / self.batch / 3
        return importance + self.steps * self.per_step + sum(self.epochs) * self._val_seconds()

    def remaining(self) -> float | None:
        total = self.total()
        return None if total is None else max(0.0, total - (time.perf_counter() - self.started))

    def line(self) -> str:
        """One line: the projected duration, and the work it stands for."""
        total = self.total()
        basis = "from the first steps" if self.per_step is not None else "estimated from the importance pass"
        return (f"forecast: about {duration(total)} on {self.device} ({basis}): {len(self.epochs)} stage(s) x "
                f"{self.epochs[0]} epoch(s) x {self.steps_per_epoch} step(s) of {self.batch} image(s) = {self.steps} "
                f"steps, importance over {self.importance_images} image(s) per stage")

    def advice(self) -> str | None:
        """What shortens a run that would take more than an hour on a CPU."""
        total = self.total()
        if total is None or total <= HOUR or not self.device.startswith("cpu"):
            return None
        return ("to shorten it: fewer optimizer steps per stage (--min-steps, now "
                f"{self.steps // max(1, len(self.epochs))}; or --epochs), fewer calibration images "
                "(--importance-batches), or a GPU (--device cuda)")

    def describe(self) -> dict:
        return {"seconds": None if self.total() is None else round(self.total(), 1), "steps": self.steps,
                "importance_images_per_stage": self.importance_images, "val_images_per_epoch": self.val_images,
                "seconds_per_importance_image": self.per_image, "seconds_per_step": self.per_step,
                "device": self.device}
