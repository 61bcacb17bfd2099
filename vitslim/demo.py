"""``vitslim demo``: the main job on a shipped, trained teacher, offline, in a few minutes.

A demo is a quality testbed whose teacher ships with its plugin (see :mod:`vitslim.testbed`): its
teacher is compressed with 1% of its training images and the library's defaults (a testbed may
shorten the schedule to fit the demo's few minutes, and says so in :attr:`Testbed.demo`), then the
teacher and the student are compared side by side: parameters, MACs, measured latency, and quality
against the ground truth and against the teacher.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .errors import UsageError


def demos() -> dict[str, Any]:
    """Every installed testbed that has a demo, by name."""
    from .testbed import testbeds

    return {name: tb for name, tb in sorted(testbeds().items()) if tb.demo}


def describe_demos() -> list[dict]:
    """What ``vitslim demo --list`` shows: name, what it compresses, whether its teacher ships."""
    rows = []
    for name, tb in demos().items():
        entry = tb.shipped_entry()
        rows.append({"name": name, "about": tb.about, "ratio": tb.demo["ratio"], "fraction": tb.demo["fraction"],
                     "teacher_ships": tb.shipped(0) is not None,
                     "teacher_metrics": entry["metrics"] if entry else None})
    return rows


def _latency(teacher_file: Path, student_file: Path, batch: int, runs: int) -> dict[str, Any]:
    """Median latency of both encoders with the fused path (interleaved rounds) and the speed-up."""
    from .bench import benchmark

    result = benchmark([str(teacher_file), str(student_file)], batch=batch, runs=runs, warmup=3, fast=True,
                       rounds=5)
    fast = [r for r in result["rows"] if r["path"] == "fast"]
    t_ms, s_ms = fast[0]["median_ms"], fast[1]["median_ms"]
    return {"device": result["device"], "threads": result["threads"], "batch": batch,
            "teacher_ms": t_ms, "student_ms": s_ms, "speedup": t_ms / s_ms if t_ms and s_ms else None}


def run_demo(name: str = "digits-vit", out: str | os.PathLike = "vitslim-demo", progress: bool = True,
             note: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Compress the ``name`` testbed's shipped teacher (see :func:`demos`) and compare it with its
    student; the student file (and, for a segmentation teacher, overlays of both models' masks) go to
    the folder ``out``. Returns what the table shows (``--json``)."""
    from .api import inspect, save
    from .compression import compress_run

    found = demos()
    if name not in found:
        raise UsageError(f"unknown demo '{name}': choose one of {', '.join(found) or '(none installed)'}")
    tb = found[name]
    if tb.shipped(0) is None:
        raise UsageError(f"the {name} demo needs its shipped teacher, which this installation lacks: train it "
                         f"with `python benchmarks/teachers.py {name}`")
    say = note or (lambda text: None)
    started = time.perf_counter()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    teacher = tb.teacher()
    cfg = tb.demo
    n = max(2, round(tb.num_train() * cfg["fraction"]))
    options = dict(cfg.get("options", {}))
    say(f"teacher: the shipped {name} teacher ({tb.about}); compressing by {cfg['ratio']} with {n} of its "
        f"{tb.num_train()} training images ({cfg['fraction']:.0%})"
        + (f", {', '.join(f'{k}={v}' for k, v in options.items())}" if options else ", the library's defaults"))
    student_file = folder / f"{name}-slim{round(cfg['ratio'] * 100)}.pt"
    with tempfile.TemporaryDirectory() as tmp:
        result = compress_run(teacher, cfg["ratio"], data=tb.subset(n, seed=0), out=student_file,
                              workdir=Path(tmp) / "work", progress=progress, **options)
        compress_seconds = time.perf_counter() - started
        say("scoring teacher and student on the held-out data, timing both")
        student = result.student
        scores = {"teacher": tb.score(teacher), "student": tb.score(student, teacher)}
        teacher_file = save(teacher, Path(tmp) / f"{name}-teacher.pt")
        latency = _latency(teacher_file, student_file, cfg.get("batch", 1), cfg.get("runs", 10))
    sizes = {}
    for who, model in (("teacher", teacher), ("student", student)):
        report = inspect(model)["encoder"]
        sizes[who] = {k: report[k] for k in ("params", "macs", "macs_with_attention")}
    overlays = [str(p) for p in tb.overlays(student, teacher, folder / "overlays")]
    return {"demo": name, "about": tb.about, "ratio": cfg["ratio"], "images": result.images,
            "options": options, "metric": tb.metric, "metrics": scores, "sizes": sizes, "latency": latency,
            "student_file": str(student_file), "overlays": overlays,
            "seconds": {"compress": round(compress_seconds, 1), "total": round(time.perf_counter() - started, 1)}}
