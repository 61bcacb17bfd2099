"""Progress display for long work (rich): stage, epoch, step, loss, ETA."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class StageProgress:
    """Shows one bar per epoch and a line per finished epoch (at most one per ``log_every`` seconds,
    and each stage's last); silent when ``enabled`` is False."""

    def __init__(self, enabled: bool = True, console: Console | None = None, log_every: float = 10.0):
        self.enabled = enabled
        self.console = console or Console(stderr=True, soft_wrap=True)  # a redirected line stays one line
        self.bars = self.console.is_terminal  # live bars only on a terminal; logs and files get the lines
        self.log_every = log_every  # seconds between epoch lines (many short epochs print few lines)
        self._logged_at = -float("inf")
        self.forecast = None  # an engine Forecast: epoch bars then show the ETA of the whole run

    def note(self, text: str) -> None:
        """One line for people (a forecast, advice), kept in logs."""
        if self.enabled:
            self.console.print(text, highlight=False, soft_wrap=True)

    def _run_eta(self) -> str:
        from .engine.forecast import duration

        left = self.forecast.remaining() if self.forecast is not None else None
        return "run: ?" if left is None else f"run: {duration(left)} left"

    def status(self, text: str):
        return self.console.status(text) if self.enabled else nullcontext()

    @contextmanager
    def bar(self, description: str):
        """A progress bar; yields ``tick(done, total)`` (``total`` may be None), or None without a bar."""
        if not (self.enabled and self.bars):
            yield None
            return
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task(description, total=None)

            def tick(done: int, total: int | None) -> None:
                bar.update(task, completed=done, total=total)

            yield tick

    @contextmanager
    def epoch(self, stage: int, stages: int, name: str, epoch: int, epochs: int):
        if not (self.enabled and self.bars):
            yield None
            return
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.5f}"), TimeElapsedColumn(), TimeRemainingColumn(),
                   TextColumn("{task.fields[run]}"))
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task(f"stage {stage + 1}/{stages} {name} epoch {epoch + 1}/{epochs}", total=None, loss=0.0,
                                run=self._run_eta())

            def tick(step: int, total: int, loss: float) -> None:
                bar.update(task, completed=step, total=total, loss=loss, run=self._run_eta())

            yield tick

    def log(self, record: dict, force: bool = False) -> None:
        """One line for a finished epoch, unless one was printed less than ``log_every`` s ago."""
        import time

        if not self.enabled or not (force or time.monotonic() - self._logged_at >= self.log_every):
            return
        self._logged_at = time.monotonic()
        terms = " ".join(f"{k} {v:.5f}" for k, v in record["train"].items())
        self.console.print(f"{record['stage']} epoch {record['epoch'] + 1}: {terms} | val {record['val_output_mse']:.6f} "
                           f"| lr {record['lr']:.2e}", highlight=False, soft_wrap=True)
