"""What a long run meets: divergence (non-finite losses, gradients, weights) and requests to stop
(SIGTERM from a scheduler, ``timeout`` or ``docker stop``; SIGUSR1, which SLURM can send before a job's
time ends).

A non-finite loss or gradient stops the run at once; the step is not skipped. This engine has no fp16
loss scaling (bf16 autocast keeps fp32's exponent range), so an infinity is not an overflow that a
smaller scale would avoid, as it is for AMP's grad scaler; and the distillation targets are the frozen
teacher's outputs, so a batch that gives NaN once gives it again. Stopping at the first bad step keeps
the last checkpoint the last good state.
"""

from __future__ import annotations

import math
import signal
import threading
from dataclasses import dataclass

import torch

from ..errors import NonFiniteError
from ..finite import finite

STOP_SIGNALS = ("SIGTERM", "SIGUSR1")


class NonFiniteStep(Exception):
    """Raised inside an epoch at the first non-finite loss or gradient; the stage turns it into a
    :class:`NonFiniteError` that names the stage, epoch, step and learning rate."""

    def __init__(self, what: str, batch: int, batches: int):
        super().__init__(what)
        self.what, self.batch, self.batches = what, batch, batches


def grads_finite(params) -> bool:
    """Whether every gradient is finite (one fused max-abs per tensor list: no overflow, no copies)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return True
    return finite(torch.stack([n.float() for n in torch._foreach_norm(grads, math.inf)]))


def divergence_error(what: str, stage: str, epoch: int, where: str, lr: float, bf16: bool,
                     kept: str | None) -> NonFiniteError:
    """One line: where the run diverged (``where``: "batch 7/40", "validation"), at which learning
    rate, what was kept (``kept``: the last checkpoint, in words) and what to try."""
    hint = f"try a lower --lr (e.g. {lr / 10:.1e})" + (", or --precision fp32 instead of bf16" if bf16 else "")
    kept = f"the checkpoint at {kept} is kept" if kept else "no checkpoint was written yet"
    return NonFiniteError(f"diverged: {what} at stage {stage}, epoch {epoch + 1}, {where} (lr {lr:.2e}); "
                          f"no output was written, {kept}: {hint}")


@dataclass
class StopRequest:
    """Set by a stop signal; read by the loop after each optimizer step."""

    signal: str | None = None

    @property
    def exit_code(self) -> int:
        return 128 + int(getattr(signal, self.signal or "SIGTERM"))


class StopSignals:
    """While active (a ``with`` block, main thread only), SIGTERM and SIGUSR1 no longer kill the process:
    they ask the run to stop after the current optimizer step, write a checkpoint and exit. A second
    signal of the same kind while stopping is ignored; Ctrl-C keeps its own meaning."""

    def __init__(self):
        self.request = StopRequest()
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for name in STOP_SIGNALS:
                if hasattr(signal, name):
                    num = getattr(signal, name)
                    self._previous[num] = signal.signal(num, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.request.signal is None:
            self.request.signal = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for num, handler in self._previous.items():
            signal.signal(num, handler)
        self._previous.clear()

    def requested(self) -> bool:
        """Whether any process of the run was asked to stop; under torch.distributed every rank calls
        this after the same step and gets the same answer, so all ranks stop at that step."""
        import torch.distributed as dist

        local = self.request.signal is not None
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return local
        flag = torch.tensor([1.0 if local else 0.0])
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0 and self.request.signal is None:
            self.request.signal = "SIGTERM"  # another rank was signalled
        return flag.item() > 0
