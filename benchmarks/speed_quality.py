"""Quality against measured speed: which recipe to compress with, when speed is what you want.

    python benchmarks/speed_quality.py [--testbed digits-vit12] [--fractions 0.01 0.1]
        [--head-dim 0.5 0.77] [--heads 0.5 0.77] [--speedups 2 3 4] [--sam-b] [--set KEY=VALUE]
        [--threads 1] [--rounds 5] [--json speed_quality.json] [--plot speed_quality.png]

1. On a trained many-head teacher (the ``digits-vit12`` testbed: 12 heads, as SAM-B and ViT-B have),
   ``vitslim.compress`` with each recipe and each fraction of the training images: head-dim pruning by
   a ratio (SlimSAM's recipe), whole-head pruning by a ratio, and ``target_speedup`` (the latency model
   of this device chooses whole heads, head dims, MLP and residual widths). Each student's quality
   against the ground truth and against the teacher.
2. The *measured* speed-up of every student over the teacher, all timed together in interleaved rounds
   (fused attention on both sides, the testbed's batch), median of round medians and their spread.
3. With ``--sam-b``: the same recipes on SAM-B (random weights, 1024 x 1024, batch 1): head-dim and
   whole-head widths by ratio (uniform), and ``target_speedup`` widths from SAM-B's own latency model
   on this device, timed together in interleaved rounds; each with its MACs, so the share of the MAC
   cut realised as speed-up shows.

Everything runs on this machine's device (a GPU when present, in bf16 there). The JSON holds every
row; ``--plot`` draws quality against measured speed-up.
"""

from __future__ import annotations

import argparse
import ast
import json
import platform
import sys
import tempfile
import time
from pathlib import Path


def _parse_set(item: str) -> tuple[str, object]:
    key, _, value = item.partition("=")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def recipes(args) -> list[dict]:
    out = [{"recipe": "head dims", "ratio": r, "attention": "head_dim"} for r in args.head_dim]
    out += [{"recipe": "whole heads", "ratio": r, "attention": "heads"} for r in args.heads]
    out += [{"recipe": "target speed-up", "target_speedup": s} for s in args.speedups]
    return out


def label(r: dict) -> str:
    if "target_speedup" in r:
        return f"--target-speedup {r['target_speedup']:g}"
    return f"{r['recipe']} {r['ratio']}"


def testbed_rows(args, folder: Path) -> list[dict]:
    import vitslim
    from vitslim.bench import benchmark
    from vitslim.testbed import get_testbed

    tb = get_testbed(args.testbed)
    teacher = tb.teacher()
    teacher_file = vitslim.save(teacher, folder / "teacher.pt")
    options = dict(_parse_set(s) for s in args.set)
    batch = tb.demo.get("batch", 64) if tb.demo else 64  # the batch the testbed's models are timed at
    rows = []
    for fraction in args.fractions:
        n = max(2, round(tb.num_train() * fraction))
        for r in recipes(args):
            started = time.perf_counter()
            kw = {"attention": r["attention"]} if "attention" in r else {"latency_batch": batch}
            student = vitslim.compress(teacher, r.get("ratio"), data=tb.subset(n, seed=args.seed),
                                       target_speedup=r.get("target_speedup"), seed=args.seed, progress=False,
                                       workdir=folder / f"work-{len(rows)}", **kw, **options)
            path = vitslim.save(student, folder / f"student-{len(rows)}.pt")
            row = {**r, "label": label(r), "fraction": fraction, "images": n, "file": str(path),
                   "seconds": round(time.perf_counter() - started, 1), "metrics": tb.score(student, teacher),
                   "params": vitslim.inspect(student)["encoder"]["params"],
                   "macs": vitslim.inspect(student)["encoder"]["macs_with_attention"]}
            rows.append(row)
            print(f"{args.testbed} {row['label']} @ {fraction:.0%}: {row['metrics']} ({row['seconds']} s)",
                  file=sys.stderr, flush=True)
    timing = benchmark([str(teacher_file)] + [r["file"] for r in rows], batch=batch,
                       runs=args.runs, warmup=3, fast=True, plain=False, rounds=args.rounds)
    timed = timing["rows"]
    for row, t in zip(rows, timed[1:]):
        row.update({"ms": t["median_ms"], "spread_ms": t["spread_ms"], "speedup": t["speedup"]})
    return [{"teacher": True, "metrics": tb.score(teacher), "ms": timed[0]["median_ms"],
             "spread_ms": timed[0]["spread_ms"], "params": vitslim.inspect(teacher)["encoder"]["params"],
             "macs": vitslim.inspect(teacher)["encoder"]["macs_with_attention"]}] + rows, timing


def sam_rows(args, folder: Path) -> tuple[list[dict], dict]:
    import vitslim
    from vitslim.bench import benchmark
    from vitslim.info import get_info

    specs, rows = ["sam-b"], [{"recipe": "dense"}]
    for r in recipes(args):
        if "ratio" in r:
            specs.append(f"sam-b@{r['ratio']}" + (":heads" if r["attention"] == "heads" else ""))
            rows.append(r)
    sam = vitslim.create("sam-b", pretrained=False, seed=0)
    for r in recipes(args):
        if "target_speedup" in r:
            started = time.perf_counter()
            slim = vitslim.prune(sam, target_speedup=r["target_speedup"], importance="magnitude")
            path = vitslim.save(slim, folder / f"sam-b-fast{r['target_speedup']:g}.pt")
            step = get_info(slim)["history"][-1]
            specs.append(str(path))
            rows.append({**r, "predicted_speedup": step["predicted_speedup"],
                         "widths": vitslim.describe(slim).widths(), "seconds": round(time.perf_counter() - started, 1)})
            print(f"sam-b --target-speedup {r['target_speedup']:g}: predicted {step['predicted_speedup']:.2f}x "
                  f"({rows[-1]['seconds']} s)", file=sys.stderr, flush=True)
    from vitslim.bench import build
    from vitslim.latency import latency_model

    lat = latency_model(sam)  # measured by the first target's prune (or now), then cached
    dense_pred = lat.predict(vitslim.describe(sam).widths())
    for row, spec in zip(rows, specs):
        widths = row.get("widths") or vitslim.describe(build(spec)).widths()
        row["predicted_ms"] = lat.predict(widths)
        row["predicted_speedup"] = dense_pred / row["predicted_ms"]
    timing = benchmark(specs, batch=1, runs=1, warmup=1, fast=True, plain=False, rounds=args.rounds)
    for row, t in zip(rows, timing["rows"]):
        row.update({"label": label(row) if row["recipe"] != "dense" else "dense", "ms": t["median_ms"],
                    "spread_ms": t["spread_ms"], "speedup": t["speedup"], "params": t["params"],
                    "macs": t["macs_with_attention"]})
        dense_macs = timing["rows"][0]["macs_with_attention"]
        cut = dense_macs / t["macs_with_attention"]
        row["mac_cut"] = cut
        row["realised"] = t["speedup"] / cut if cut > 1 and t["speedup"] else None  # speed-up / MAC cut
    timing["latency_model_seconds"] = lat.seconds
    return rows, timing


def table(result: dict) -> str:
    lines = []
    tb = result.get("testbed")
    if tb:
        teacher = tb["rows"][0]
        metric = next(iter(teacher["metrics"]))
        lines += [f"{result['args']['testbed']} (teacher {metric} {teacher['metrics'][metric]:.1f}, "
                  f"{teacher['ms']:.2f} ms):", "",
                  "| recipe | images | " + metric + " | agreement with the teacher | params | measured speed-up |",
                  "|---|---|---|---|---|---|"]
        for r in tb["rows"][1:]:
            agree = next((v for k, v in r["metrics"].items() if k != metric), None)
            lines.append(f"| {r['label']} | {r['images']} ({r['fraction']:.0%}) | {r['metrics'][metric]:.1f} | "
                         f"{agree:.1f} | {r['params'] / 1e3:.0f}K | {r['speedup']:.2f}x "
                         f"({r['spread_ms'][0]:.2f}-{r['spread_ms'][1]:.2f} ms) |")
        lines.append("")
    sam = result.get("sam")
    if sam:
        lines += ["SAM-B encoder, 1024 x 1024, batch 1, fused attention:", "",
                  "| recipe | params | MACs with attention (cut) | ms | predicted ms | measured speed-up (predicted) "
                  "| share of the MAC cut realised |",
                  "|---|---|---|---|---|---|---|"]
        for r in sam["rows"]:
            share = f"{r['realised']:.0%}" if r.get("realised") is not None else "-"
            lines.append(f"| {r['label']} | {r['params'] / 1e6:.2f}M | {r['macs'] / 1e9:.1f}G ({r['mac_cut']:.1f}x) | "
                         f"{r['ms']:.0f} ({r['spread_ms'][0]:.0f}-{r['spread_ms'][1]:.0f}) | {r['predicted_ms']:.0f} | "
                         f"{r['speedup']:.2f}x ({r['predicted_speedup']:.2f}x) | {share} |")
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["testbed"]["rows"]
    metric = next(iter(rows[0]["metrics"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for recipe, marker in (("head dims", "o"), ("whole heads", "s"), ("target speed-up", "^")):
        for fraction, color in zip(sorted({r["fraction"] for r in rows[1:]}), ("tab:red", "tab:blue", "tab:green")):
            pts = [(r["speedup"], r["metrics"][metric]) for r in rows[1:] if r["recipe"] == recipe
                   and r["fraction"] == fraction]
            if pts:
                ax.plot(*zip(*sorted(pts)), marker=marker, color=color, label=f"{recipe}, {fraction:.0%} of the images")
    ax.axhline(rows[0]["metrics"][metric], color="grey", ls="--", label="teacher")
    ax.set_xlabel("measured speed-up over the teacher (fused attention on both)")
    ax.set_ylabel(metric)
    ax.set_title(f"{result['args']['testbed']}: quality against measured speed ({result['device']})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--testbed", default="digits-vit12")
    ap.add_argument("--no-testbed", action="store_true", help="only the SAM-B rows")
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.1])
    ap.add_argument("--head-dim", nargs="*", type=float, default=[0.5, 0.77])
    ap.add_argument("--heads", nargs="*", type=float, default=[0.5, 0.77])
    ap.add_argument("--speedups", nargs="*", type=float, default=[2.0, 3.0, 4.0])
    ap.add_argument("--sam-b", action="store_true", help="also the recipes' widths on SAM-B at 1024")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a compress option")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=20, help="timed runs per round of the testbed's students")
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--plot")
    ap.add_argument("--table", metavar="JSON", help="only print the tables of an existing JSON file")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from vitslim.device import cpu_name

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{cpu_name()} ({torch.get_num_threads()} threads)"
    result = {"args": vars(args), "device": device, "torch": torch.__version__, "python": platform.python_version()}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_testbed:
            rows, timing = testbed_rows(args, Path(tmp))
            result["testbed"] = {"rows": [{k: v for k, v in r.items() if k != "file"} for r in rows],
                                 "timing": {k: timing[k] for k in ("device", "threads", "batch", "rounds", "runs_per_round")}}
        if args.sam_b:
            rows, timing = sam_rows(args, Path(tmp))
            result["sam"] = {"rows": rows, "timing": {k: timing[k] for k in ("device", "threads", "rounds",
                                                                             "latency_model_seconds")}}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))
    print(table(result))
    if args.plot and "testbed" in result:
        plot(result, args.plot)


if __name__ == "__main__":
    main()
