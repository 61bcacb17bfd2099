"""Quality on trained teachers: does a compressed student keep what its teacher knows?

    python benchmarks/quality.py [--testbeds digits-vit shapes-sam] [--ratios 0.5 0.77]
        [--fractions 0.01 0.1] [--seeds 0 1 2] [--sections teacher prune compress]
        [--set KEY=VALUE ...] [--jobs 2] [--json quality.json]

Every installed testbed (``vitslim.testbed``: the digits ViT from the timm plugin, the shapes SAM from
the SAM plugin, the shapes SAM 2 from the SAM 2 plugin) gives a teacher trained here on real or generated data (cached after the first run).
Sections:

- ``teacher``: the teacher's own held-out metrics, and how long it took to train.
- ``prune``: prune only (both parts, or ``--parts``), each criterion with global and uniform ranking,
  calibrated on 64 training images (a seeded subset per seed).
- ``compress``: ``vitslim.compress`` on 1% and 10% of the training images: the ``alternate`` schedule with
  every criterion, and ``one-shot`` and ``iterative:2`` with disturbed Taylor. ``--set`` overrides any
  ``compress`` argument (``--set lr=1e-4 --set augment=none``): the way to measure a change before/after.

Each run is one row of the JSON (``--json``), written as it finishes so a long run can be read (and
continued with ``--resume``) midway; the table shows the mean over seeds and the min-max range.
"""

from __future__ import annotations

import argparse
import ast
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

CRITERIA = ("disturbed_taylor", "taylor", "magnitude", "random")
RANKINGS = ("global", "uniform")
SCHEDULES = ("alternate", "one-shot", "iterative:2")
CALIBRATION = 64


def _setup(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    import warnings

    warnings.filterwarnings("ignore")


def _criterion(tb, teacher, name: str):
    """A criterion by name; ``taylor`` gets the testbed's supervised loss (labels: its ground truth)."""
    if name != "taylor":
        return name
    from vitslim.criteria import TaylorImportance

    loss = tb.supervised_loss(teacher)
    return None if loss is None else TaylorImportance(loss_fn=loss)


def _size(model) -> dict:
    import vitslim

    report = vitslim.inspect(model)
    return {"params": report["encoder"]["params"], "macs": report["encoder"]["macs"]}


def run_one(job: dict) -> dict:
    """One row: train/load the teacher, then the job's section (in a worker process)."""
    import vitslim
    from vitslim.info import get_info
    from vitslim.testbed import get_testbed, teacher_seconds

    tb = get_testbed(job["testbed"])
    teacher = tb.teacher()
    started = time.perf_counter()
    row = dict(job)
    if job["section"] == "teacher":
        row["metrics"] = tb.score(teacher)
        row["seconds"] = teacher_seconds(teacher)
        row.update(_size(teacher))
        return row
    importance = _criterion(tb, teacher, job["criterion"])
    if importance is None:
        row["skipped"] = f"{tb.name} has no supervised loss"
        return row
    if job["section"] == "prune":
        calib = tb.subset(CALIBRATION, seed=job["seed"])
        student = vitslim.prune(teacher, job["ratio"], part=job.get("part", "both"), importance=importance,
                                ranking=job["ranking"], data=list(calib.split(8)), seed=job["seed"])
    else:
        # the seed picks the images and seeds the run; --data-seed / --run-seed fix one of the two
        count, data_seed = max(2, round(tb.num_train() * job["fraction"])), job.get("data_seed", job["seed"])
        if job.get("pick") == "diverse":  # k-center on the teacher's outputs over the whole pool
            from vitslim.selection import pick_images

            pool = tb.train_images()
            data = pool[pick_images(teacher, pool, count, seed=data_seed)]
        else:
            data = tb.subset(count, seed=data_seed)
        with tempfile.TemporaryDirectory() as work:
            student = vitslim.compress(teacher, job["ratio"], data=data, schedule=job["schedule"],
                                       importance=importance, seed=job.get("run_seed", job["seed"]),
                                       progress=False, workdir=work,
                                       **job.get("options", {}))
        row["images"] = len(data)
        if job.get("save"):  # the student, for analysis after the run (named by its row)
            import hashlib

            name = hashlib.sha1(_key(job).encode()).hexdigest()[:12]
            Path(job["save"]).mkdir(parents=True, exist_ok=True)
            row["student_file"] = str(vitslim.save(student, Path(job["save"]) / f"{job['testbed']}-{name}.pt"))
        distill = [h for h in get_info(student)["history"] if h["step"] == "distill"][-1]
        row["resolved"] = {k: distill[k] for k in ("epochs", "lr", "lr_schedule", "augment")}
    row["seconds"] = round(time.perf_counter() - started, 1)
    row["metrics"] = tb.score(student, teacher)
    row.update(_size(student))
    return row


def jobs_for(args) -> list[dict]:
    from vitslim.testbed import testbeds

    names = args.testbeds or sorted(testbeds())
    options = dict(_parse_set(item) for item in args.set)
    jobs = []
    for name in names:
        if "teacher" in args.sections:
            jobs.append({"testbed": name, "section": "teacher"})
        for ratio in args.ratios:
            for seed in args.seeds:
                if "prune" in args.sections:
                    for part in args.parts:
                        for crit in args.criteria:
                            for ranking in args.rankings:
                                job = {"testbed": name, "section": "prune", "ratio": ratio, "criterion": crit,
                                       "ranking": ranking, "seed": seed}
                                jobs.append(job if part == "both" else {**job, "part": part})
                if "compress" in args.sections:
                    for fraction in args.fractions:
                        runs = [("alternate", c) for c in args.criteria if "alternate" in args.schedules]
                        runs += [(s, "disturbed_taylor") for s in args.schedules if s != "alternate"]
                        for schedule, crit in runs:
                            job = {"testbed": name, "section": "compress", "ratio": ratio,
                                   "fraction": fraction, "schedule": schedule, "criterion": crit,
                                   "seed": seed, "options": options}
                            if args.save:
                                job["save"] = args.save
                            for fixed in ("data_seed", "run_seed"):
                                if getattr(args, fixed) is not None:
                                    job[fixed] = getattr(args, fixed)
                            if args.pick != "random":
                                job["pick"] = args.pick
                            jobs.append(job)
    return jobs


def _parse_set(item: str) -> tuple[str, object]:
    key, _, value = item.partition("=")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _key(job: dict) -> str:
    return json.dumps({k: v for k, v in job.items() if k in (
        "testbed", "section", "ratio", "fraction", "schedule", "criterion", "ranking", "seed", "options", "part",
        "data_seed", "run_seed", "pick")},
        sort_keys=True)


class _Markdown:
    """A stand-in for rich's Table that prints a Markdown table (for the docs)."""

    def __init__(self, title: str):
        self.title, self.columns, self.rows = title, [], []

    def add_column(self, name: str, **_) -> None:
        self.columns.append(name)

    def add_row(self, *cells: str) -> None:
        self.rows.append(cells)

    def __str__(self) -> str:
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "---|" * len(self.columns)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in self.rows]) + "\n"


def summarise(rows: list[dict], markdown: bool = False) -> None:
    """Tables: mean over seeds of each testbed's headline metric, with the min-max range."""
    from rich.console import Console
    from rich.table import Table

    from vitslim.testbed import get_testbed

    console = Console(width=140)
    if markdown:
        Table = _Markdown  # noqa: N806 - same interface
        console.print = print
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if "metrics" not in r:
            continue
        label = {"teacher": "teacher", "prune": f"prune {r.get('part', 'both')} {r.get('criterion')} {r.get('ranking')}",
                 "compress": f"{r.get('schedule')} {r.get('criterion')}"}[r["section"]]
        if r.get("options"):
            label += " [" + ", ".join(f"{k}={v}" for k, v in sorted(r["options"].items())) + "]"
        for fixed in ("data_seed", "run_seed"):
            if fixed in r:
                label += f" ({fixed.replace('_', ' ')} {r[fixed]})"
        if r.get("pick"):
            label += f" (images: {r['pick']})"
        column = "" if r["section"] == "teacher" else (
            f"{r['ratio']}" + (f" @ {r['fraction']:.0%}" if r["section"] == "compress" else ""))
        groups.setdefault((r["testbed"], r["section"], label, column), []).append(r)
    for testbed in sorted({k[0] for k in groups}):
        metric = get_testbed(testbed).metric
        for section in ("teacher", "prune", "compress"):
            keys = [k for k in groups if k[0] == testbed and k[1] == section]
            if not keys:
                continue
            columns = sorted({k[3] for k in keys})
            table = Table(title=f"{testbed} — {section} — {metric} (mean over seeds, min-max)")
            table.add_column("run")
            for c in columns:
                table.add_column(c or "value", justify="right")
            for label in sorted({k[2] for k in keys}):
                cells = []
                for c in columns:
                    rs = groups.get((testbed, section, label, c), [])
                    vals = [r["metrics"][metric] for r in rs if r["metrics"].get(metric) is not None]
                    if not vals:
                        cells.append("-")
                        continue
                    mean = sum(vals) / len(vals)
                    cell = f"{mean:.3f}" if mean <= 1.0 else f"{mean:.1f}"
                    if len(vals) > 1:
                        lo, hi = min(vals), max(vals)
                        cell += f" ({lo:.3f}-{hi:.3f})" if mean <= 1.0 else f" ({lo:.1f}-{hi:.1f})"
                    cells.append(cell)
                table.add_row(label, *cells)
            console.print(table)
        sized = [r for r in rows if r["testbed"] == testbed and "params" in r and r["section"] != "teacher"]
        if sized:
            table = Table(title=f"{testbed} — sizes and time (mean per run)")
            for col in ("ratio", "encoder params", "MACs", "prune s", "compress s (1 core)"):
                table.add_column(col, justify="right")
            for ratio in sorted({r["ratio"] for r in sized}):
                rs = [r for r in sized if r["ratio"] == ratio]

                def mean(key, section):
                    vals = [r[key] for r in rs if r["section"] == section and r.get(key) is not None]
                    return sum(vals) / len(vals) if vals else None

                secs = [mean("seconds", "prune"), mean("seconds", "compress")]
                table.add_row(str(ratio), f"{mean('params', 'prune') or mean('params', 'compress'):,.0f}",
                              f"{mean('macs', 'prune') or mean('macs', 'compress'):,.0f}",
                              *("-" if v is None else f"{v:.1f}" for v in secs))
            console.print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--testbeds", nargs="*", help="default: every installed testbed")
    ap.add_argument("--sections", nargs="+", default=["teacher", "prune", "compress"])
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.5, 0.77])
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.1])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--data-seed", type=int, help="compress: every seed trains on the images this seed picks "
                    "(the seeds then vary only the run: noise, augmentation, order)")
    ap.add_argument("--pick", choices=("random", "diverse"), default="random", help="compress: how the images "
                    "are drawn from the training pool: seeded at random, or k-center on the teacher's outputs "
                    "(vitslim.selection)")
    ap.add_argument("--run-seed", type=int, help="compress: every run is seeded with this (the seeds then vary "
                    "only which images it gets)")
    ap.add_argument("--criteria", nargs="+", default=list(CRITERIA))
    ap.add_argument("--rankings", nargs="+", default=list(RANKINGS))
    ap.add_argument("--parts", nargs="+", default=["both"], help="what the prune section prunes (embedding, "
                    "bottleneck, both)")
    ap.add_argument("--schedules", nargs="+", default=list(SCHEDULES))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a compress() argument for every compress run (repeatable)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (each with --threads threads)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", dest="json_out", help="write rows here as they finish")
    ap.add_argument("--save", metavar="DIR", help="compress: save each student here (the row names its file)")
    ap.add_argument("--resume", action="store_true", help="skip the rows --json already holds")
    ap.add_argument("--table", metavar="JSON", help="only print the tables of an existing JSON file")
    ap.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    args = ap.parse_args()

    if args.table:
        summarise(json.loads(Path(args.table).read_text())["runs"], args.markdown)
        return
    _setup(args.threads)
    from vitslim.testbed import get_testbed

    jobs = jobs_for(args)
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                          "jobs": args.jobs, "python": sys.version.split()[0]}, "runs": []}
    if args.resume and args.json_out and os.path.exists(args.json_out):
        result = json.loads(Path(args.json_out).read_text())
    done = {_key(r) for r in result["runs"]}
    todo = [j for j in jobs if _key(j) not in done]
    for name in {j["testbed"] for j in todo}:  # train (or load) each teacher once, before the workers start
        t0 = time.perf_counter()
        get_testbed(name).teacher()
        print(f"{name}: teacher ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    started = time.perf_counter()
    # spawned, not forked: a child forked from a parent that built a SAM 2 model (hydra) hangs
    with ProcessPoolExecutor(args.jobs, initializer=_setup, initargs=(args.threads,),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        for i, row in enumerate(pool.map(run_one, todo)):
            result["runs"].append(row)
            shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.get("metrics", {}).items()}
            print(f"[{i + 1}/{len(todo)} {time.perf_counter() - started:.0f} s] {_key(row)} -> {shown or row.get('skipped')} "
                  f"({row.get('seconds')} s)", file=sys.stderr, flush=True)
            if args.json_out:
                Path(args.json_out).write_text(json.dumps(result, indent=1))
    summarise(result["runs"], args.markdown)


if __name__ == "__main__":
    main()
