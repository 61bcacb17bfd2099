"""The ``vitslim`` command line: parse, call the Python API, display. Nothing else lives here."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import UnreadableImagesWarning, UsageError, VitslimError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
    help="Structured compression of Vision Transformers (SlimSAM's alternate slimming).",
)
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 120)  # files and pipes: no 80-column wrap
err_console = Console(stderr=True, soft_wrap=True)

# -- options shared by several commands (one declaration each) ----------------------------------------
ModelArg = Annotated[str, typer.Argument(help="A model name (sam-b, sam2-b+, timm:vit_base_patch16_224) or a saved file.")]
Ratio = Annotated[Optional[float], typer.Option("--ratio", metavar="R", help="Fraction of channels to remove, in [0, 1).")]
TargetSpeedup = Annotated[Optional[float], typer.Option("--target-speedup", metavar="S", help="Instead of --ratio: "
                          "widths that make the encoder S times faster than the dense one on this device "
                          "(measured latency model, cached; whole heads, head dims and MLP widths per block).")]
Data = Annotated[Optional[str], typer.Option("--data", metavar="DIR",
                 help="Folder of images (recursive jpg/png); default: 10 scikit-image photos.")]
Checkpoint = Annotated[Optional[str], typer.Option("--checkpoint", metavar="PATH",
                       help="Local weights file for a model name, instead of a download.")]
RandomWeights = Annotated[bool, typer.Option("--random-weights", help="Random weights for a model name (sizes, timing, tests).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the criterion, the split, the shuffling and random weights.")]
Criterion = Annotated[str, typer.Option("--criterion", help="Importance criterion: disturbed_taylor, magnitude, random, or a plugin's.")]
Ranking = Annotated[str, typer.Option("--ranking", help="global (each block its own width) | uniform")]
Attention = Annotated[str, typer.Option("--attention", help="head_dim | heads (remove whole heads)")]
RoundTo = Annotated[int, typer.Option("--round-to", metavar="N", help="Round kept widths to a multiple of N.")]
NoiseSigma = Annotated[float, typer.Option("--noise-sigma", help="Disturbed Taylor noise std (0.005-0.05 works).")]
ImportanceBatches = Annotated[Optional[int], typer.Option("--importance-batches", metavar="N",
                              help="Calibration batches for importance (default: all).")]
Force = Annotated[bool, typer.Option("--force", help="Replace an output file even if it is an input.")]
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _version(value: bool) -> None:
    if value:
        from . import __version__

        print(f"vitslim {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Structured compression of Vision Transformers (SlimSAM's alternate slimming)."""


# -- display helpers ------------------------------------------------------------------------------------
def _fmt(n: float, unit: str = "") -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def _value(v) -> str:
    return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def _show(data: dict, as_json: bool, title: str, rows: list[tuple[str, str]]) -> None:
    """``data`` as JSON, or ``rows`` as a two-column table for people."""
    if as_json:
        print(json.dumps(data, indent=2))
        return
    table = Table(title=title)
    table.add_column("")
    table.add_column("value", justify="right")
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def _bar(fraction: float, width: int = 10) -> str:
    """A kept fraction at a glance: ``######....  62%``."""
    filled = round(fraction * width)
    return f"{'#' * filled}{'.' * (width - filled)} {fraction:4.0%}"


def _warn_samples(data: Optional[str]) -> None:
    if data is None:
        err_console.print("[yellow]warning:[/yellow] no --data given: using scikit-image's 10 sample photos; "
                          "real compression wants thousands of images (--epochs 1 for a quick try)", highlight=False)


def _history_line(step: dict) -> str:
    """One readable line per provenance step (``--json`` keeps everything)."""
    kind = step.get("step")
    if kind == "prune":
        crit = step.get("criterion", {}).get("name")
        removed = step.get("attention_removed", [step.get("attention")])  # what the blocks allowed
        modes = f", {' and '.join(removed)}" if removed else ""
        if step.get("target_speedup"):
            lat = step.get("latency_model", {})
            measured = f", {step['measured_speedup']:.2f}x measured" if "measured_speedup" in step else ""
            return (f"prune {step.get('part')} for a {step['target_speedup']:g}x speed-up ({crit}{modes}): "
                    f"{step.get('predicted_speedup', 0):.2f}x predicted{measured} on {lat.get('device')} "
                    f"({lat.get('dtype')}, batch {lat.get('batch')}), in {step.get('seconds', {}).get('total')} s")
        return (f"prune {step.get('part')} by {step.get('ratio')} ({crit}, {step.get('ranking')} ranking{modes}) "
                f"in {step.get('seconds', {}).get('total')} s")
    if kind == "distill":
        stages = sorted({r["stage"] for r in step.get("log", [])}, key=[r["stage"] for r in step.get("log", [])].index)
        images = step.get("images", {})
        goal = step.get("ratio") if step.get("ratio") is not None else f"a {step.get('target_speedup'):g}x speed-up"
        speed = (f", {step['measured_speedup']:.2f}x measured ({step['predicted_speedup']:.2f}x predicted)"
                 if "measured_speedup" in step else "")
        return (f"distill: {step.get('schedule')} to {goal}{speed} ({', '.join(stages)}), "
                f"{step.get('epochs')} epochs per stage, lr {step.get('lr'):.2g} {step.get('lr_schedule')}, "
                f"augment {step.get('augment')}, {images.get('train')} + {images.get('val')} images, "
                f"{step.get('seconds')} s")
    if kind == "train":
        return f"trained as the {step.get('testbed')} testbed teacher in {step.get('seconds')} s"
    return json.dumps(step)


def _ratio_or_target(ratio: Optional[float], target: Optional[float]) -> None:
    if (ratio is None) == (target is None):
        raise UsageError("give --ratio R or --target-speedup S (one of the two)")
    if target is not None:
        from .budget import check_target

        check_target(target)


# -- output paths -------------------------------------------------------------------------------------------
def _output(out: Optional[str], default_name: str, inputs: list[Optional[str]], force: bool, flag: str = "--out") -> Path:
    """Where to write: ``out`` (a trailing slash or an existing folder means a folder, created if
    needed, holding ``default_name``), never one of ``inputs`` unless ``force``."""
    if out is None:
        target = Path(default_name)
    elif out.endswith(("/", "\\")) or Path(out).is_dir():
        Path(out).mkdir(parents=True, exist_ok=True)
        target = Path(out) / default_name
    else:
        target = Path(out)
    for item in inputs:
        if item and Path(item).exists() and target.exists() and target.resolve() == Path(item).resolve() and not force:
            raise UsageError(f"{flag} {target} is an input of this command: write elsewhere, or pass --force "
                             f"to replace it")
    from .atomic import check_writable

    return check_writable(target)


def _stem(model: str) -> str:
    from .api import is_model_file

    return Path(model).stem if is_model_file(model) else model.split(":")[-1]


# -- commands ------------------------------------------------------------------------------------------------
@app.command()
def plugins(as_json: AsJson = False) -> None:
    """List installed plugins and the model families, criteria and testbeds each provides."""
    from .registry import plugins as list_plugins

    rows = list_plugins()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="vitslim plugins")
    for col in ("plugin", "package", "families (models)", "criteria", "testbeds"):
        table.add_column(col)
    for r in rows:
        fams = "; ".join(f"{k}: {', '.join(v)}" for k, v in r["families"].items())
        table.add_row(r["plugin"], r["package"], fams or "-", ", ".join(r["importances"]) or "-",
                      ", ".join(r["testbeds"]) or "-")
    console.print(table)


@app.command()
def demo(
    name: Annotated[str, typer.Argument(help="Which demo (see --list).")] = "digits-vit",
    list_demos: Annotated[bool, typer.Option("--list", help="Name the demos and whether their teachers ship.")] = False,
    out: Annotated[str, typer.Option("--out", metavar="DIR", help="Folder for the student file (and overlays).")] = "vitslim-demo",
    as_json: AsJson = False,
) -> None:
    """Compress a shipped, trained teacher with 1% of its images, offline, in a few minutes, and show
    teacher and student side by side: size, measured speed, quality."""
    from .demo import describe_demos, run_demo

    if list_demos:
        rows = describe_demos()
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        table = Table(title="vitslim demos")
        for col in ("demo", "teacher", "compresses", "teacher ships"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["name"], r["about"], f"{r['ratio']} with {r['fraction']:.0%} of its images",
                          "yes" if r["teacher_ships"] else "no (python benchmarks/teachers.py " + r["name"] + ")")
        console.print(table)
        return
    from .progress import StageProgress

    ui = StageProgress(console=err_console)
    result = run_demo(name, out, progress=True, note=ui.note)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    t, s = result["metrics"]["teacher"], result["metrics"]["student"]
    sz, lat = result["sizes"], result["latency"]
    table = Table(title=f"vitslim demo {name}: {result['about']}, compressed by {result['ratio']} with "
                        f"{result['images']['train'] + result['images']['val']} images")
    for col in ("", "teacher", "student", "student / teacher"):
        table.add_column(col, justify="right")
    table.add_row("encoder params", _fmt(sz["teacher"]["params"]), _fmt(sz["student"]["params"]),
                  f"{sz['student']['params'] / sz['teacher']['params']:.0%}")
    table.add_row("MACs (with attention)", _fmt(sz["teacher"]["macs_with_attention"]),
                  _fmt(sz["student"]["macs_with_attention"]),
                  f"{sz['student']['macs_with_attention'] / sz['teacher']['macs_with_attention']:.0%}")
    table.add_row(f"latency, batch {lat['batch']} (ms)", f"{lat['teacher_ms']:.2f}", f"{lat['student_ms']:.2f}",
                  f"{lat['speedup']:.2f}x faster")
    for key in t:
        table.add_row(f"{key} vs ground truth", _value(t[key]), _value(s[key]), f"{s[key] - t[key]:+.3g}")
    for key in (k for k in s if k not in t):
        table.add_row(key, "", _value(s[key]), "")
    console.print(table)
    console.print(f"student: {result['student_file']}   latency: {lat['device']}, {lat['threads']} threads, "
                  f"fused attention on both   time: {result['seconds']['total']} s", highlight=False)
    if result["overlays"]:
        console.print(f"overlays (teacher left, student right): {', '.join(result['overlays'])}", highlight=False)


@app.command()
def inspect(model: ModelArg, as_json: AsJson = False) -> None:
    """Per-block widths, parameters and MACs of a model or a saved file (no weights downloaded)."""
    from .api import inspect as inspect_model

    report = inspect_model(model)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    title = f"{report['name']} ({report['family']})" + (f" - {report['file']}" if "file" in report else "")
    if "file" not in report and report["name"] not in (None, model):
        console.print(f"{model} is {report['name']}", highlight=False)
    base = next((step["widths_before"] for step in report["history"] if "widths_before" in step), None)
    table = Table(title=title)
    for col in ("block", "heads", "head dim", "attn width", "MLP hidden"):
        table.add_column(col, justify="right")
    if base is not None:
        table.add_column("attn kept", no_wrap=True)
        table.add_column("MLP kept", no_wrap=True)
    for i, b in enumerate(report["widths"]["blocks"]):
        row = [str(i), str(b["num_heads"]), str(b["head_dim"]), str(b["num_heads"] * b["head_dim"]), str(b["mlp_hidden"])]
        if base is not None:
            b0 = base["blocks"][i]
            row += [_bar(b["num_heads"] * b["head_dim"] / (b0["num_heads"] * b0["head_dim"])),
                    _bar(b["mlp_hidden"] / b0["mlp_hidden"])]
        table.add_row(*row)
    console.print(table)
    w = report["widths"]
    streams = [w["embed_dim"], *w.get("stream_dims", [])]
    kept = ""
    if base is not None:
        fractions = [a / b for a, b in zip(streams, [base["embed_dim"], *base.get("stream_dims", [])])]
        kept = f" ({_bar(fractions[0])})" if len(fractions) == 1 else f" ({' / '.join(f'{f:.0%}' for f in fractions)} kept)"
    label = "embedding width" if len(streams) == 1 else "embedding widths (per stage)"
    console.print(f"{label}: {' / '.join(map(str, streams))}{kept}   input: {report['input_shape']}")
    for part in ("encoder", "model"):
        r = report[part]
        console.print(f"{part:8s} params {_fmt(r['params'])}   MACs {_fmt(r['macs'])} (modules, torch-pruning)   "
                      f"{_fmt(r['macs_with_attention'])} (with attention matmuls)")
    for step in report["history"]:
        console.print(f"history: {_history_line(step)}", highlight=False)


@app.command()
def prune(
    model: ModelArg,
    ratio: Ratio = None,
    out: Annotated[Optional[str], typer.Option("--out", metavar="FILE", help="Where to write the pruned model "
                   "(default: <model>-pruned<R%>.pt, or <model>-fast<S>x.pt; a folder: that name inside).")] = None,
    part: Annotated[str, typer.Option("--part", help="embedding | bottleneck | both")] = "both",
    criterion: Criterion = "disturbed_taylor",
    ranking: Ranking = "global",
    attention: Attention = "head_dim",
    round_to: RoundTo = 1,
    data: Data = None,
    importance_batches: ImportanceBatches = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per importance batch.")] = 1,
    noise_sigma: NoiseSigma = 0.01,
    seed: Seed = 0,
    checkpoint: Checkpoint = None,
    random_weights: RandomWeights = False,
    target_speedup: TargetSpeedup = None,
    device: Annotated[Optional[str], typer.Option("--device", help="Where to time and prune with --target-speedup "
                      "(cpu, cuda; default: cuda if present).")] = None,
    force: Force = False,
) -> None:
    """Prune a model once (no distillation) and save it."""
    from .api import check_model, open_model, save
    from .data import as_dataset
    from .info import get_info
    from .progress import StageProgress
    from .pruning import check_options, prune as prune_model, resolve_criterion

    _ratio_or_target(ratio, target_speedup)  # every cheap check before the slow work
    check_options(ratio if ratio is not None else 0.0, part, ranking, attention, round_to)
    check_model(model, checkpoint)
    crit = resolve_criterion(criterion, sigma=noise_sigma, batches=importance_batches, seed=seed)
    tag = f"pruned{round(ratio * 100)}" if ratio is not None else f"fast{target_speedup:g}x"
    path = _output(out, f"{_stem(model)}-{tag}.pt", [model, checkpoint], force)
    if crit.needs_data:
        if data is not None:
            from .data import find_images

            find_images(data)
        _warn_samples(data)
    m = open_model(model, pretrained=not random_weights, checkpoint=checkpoint, seed=seed)
    batches = None
    if crit.needs_data:
        from torch.utils.data import DataLoader

        from .registry import family_of

        family = family_of(m)
        batches = DataLoader(as_dataset(data, lambda im: family.preprocess(m, im)), batch_size=batch_size)
    ui = StageProgress(console=err_console)
    speed = {}
    if target_speedup is not None:
        from .latency import latency_model

        dev = device or ("cuda" if __import__("torch").cuda.is_available() else "cpu")
        m = m.to(dev)
        with ui.bar("latency model") as tick:
            speed = {"target_speedup": target_speedup, "latency": latency_model(m, device=dev, progress=tick)}
    with ui.bar(f"{crit.name} importance") as tick:
        pruned = prune_model(m, ratio, part=part, importance=crit, ranking=ranking, data=batches,
                             attention=attention, round_to=round_to, seed=seed, progress=tick, **speed)
    if speed:
        pruned = pruned.cpu()  # prune timed its plan (measured_speedup) on the device
    save(pruned, path)
    step = get_info(pruned)["history"][-1]
    console.print(f"wrote {path}  (importance {step['seconds']['importance']} s, surgery {step['seconds']['surgery']} s)")
    if speed:
        console.print(f"speed-up: {step['measured_speedup']:.2f}x measured, {step['predicted_speedup']:.2f}x "
                      f"predicted, target {target_speedup:g}x ({dev})", highlight=False)


@app.command()
def compress(
    model: ModelArg,
    ratio: Ratio = None,
    data: Data = None,
    out: Annotated[Optional[str], typer.Option("--out", metavar="FILE",
                   help="Output file (default: <model>-slim<R%>.pt; a folder: that name inside).")] = None,
    checkpoint: Checkpoint = None,
    random_weights: RandomWeights = False,
    criterion: Criterion = "disturbed_taylor",
    ranking: Ranking = "global",
    attention: Attention = "head_dim",
    schedule: Annotated[str, typer.Option("--schedule", help="alternate (SlimSAM) | alternate:K | one-shot | iterative:K")] = "alternate",
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Epochs per stage of alternate (default: enough "
                      "for --min-steps optimizer steps per stage).")] = None,
    min_steps: Annotated[Optional[int], typer.Option("--min-steps", help="Optimizer steps per stage the default "
                         "epochs reach (default: 2000 from 100 images, 2000 x 100 / images below, at most 8000).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per optimizer step.")] = 4,
    accum: Annotated[int, typer.Option("--accum", help="Gradient accumulation steps.")] = 1,
    micro_batch: Annotated[int, typer.Option("--micro-batch", help="Images per forward/backward (0: 1 on CPU, "
                           "the batch on GPU).")] = 0,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate (default: 0.1 / embedding width; Hiera: the widest stage's).")] = None,
    lr_schedule: Annotated[str, typer.Option("--lr-schedule", help="cosine | plateau (SlimSAM's) | constant")] = "cosine",
    augment: Annotated[str, typer.Option("--augment", help="Views shared by teacher and student: default | none "
                       "| e.g. flip,crop=0.5,mixup")] = "default",
    noise_sigma: NoiseSigma = 0.01,
    importance_batches: ImportanceBatches = None,
    importance_views: Annotated[int, typer.Option("--importance-views", metavar="K", help="Score each "
                                "calibration image as it is and in K - 1 augmented views (default 1).")] = 1,
    round_to: RoundTo = 1,
    seed: Seed = 0,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:1 (default: cuda if present).")] = None,
    precision: Annotated[str, typer.Option("--precision", help="auto (bf16 on GPU) | fp32 | bf16")] = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run whose checkpoint is in --workdir.")] = False,
    workdir: Annotated[Optional[str], typer.Option("--workdir", metavar="DIR",
                       help="Epoch checkpoints (default: <out>.work).")] = None,
    evaluate: Annotated[bool, typer.Option("--eval/--no-eval", help="Evaluate on the validation split at the end.")] = True,
    fast: Annotated[bool, typer.Option("--fast/--no-fast", help="Fused attention while distilling (same numbers).")] = True,
    activation_checkpointing: Annotated[str, typer.Option(
        "--activation-checkpointing", help="auto | on | off: recompute each block in the backward pass instead "
        "of keeping its activations (auto: when they would take over half the free memory).")] = "auto",
    loss_scale: Annotated[str, typer.Option(
        "--loss-scale", help="auto | raw | teacher: each distillation MSE as it is, or divided by the "
        "teacher tensor's mean square (auto: the family's choice).")] = "auto",
    pick: Annotated[Optional[int], typer.Option("--pick", metavar="N", help="Distil on the N images of --data "
                    "that cover the teacher's outputs best (k-center greedy; validation from the rest).")] = None,
    target_speedup: TargetSpeedup = None,
    force: Force = False,
    as_json: AsJson = False,
) -> None:
    """Compress a model: prune + distil in stages (SlimSAM's alternate slimming by default)."""
    from .api import check_model, open_model
    from .compression import compress_run
    from .engine.options import PruneOptions, TrainOptions
    from .evaluation import evaluate as evaluate_model
    from .pruning import check_options

    _ratio_or_target(ratio, target_speedup)  # every check before the slow work
    check_options(ratio if ratio is not None else 0.0, "both", ranking, attention, round_to)
    prune_opts = PruneOptions(importance=criterion, ranking=ranking, attention=attention, round_to=round_to,
                              sigma=noise_sigma, importance_batches=importance_batches,
                              importance_views=importance_views, target_speedup=target_speedup).validate()
    steps = {} if min_steps is None else {"min_steps": min_steps}
    train_opts = TrainOptions(schedule=schedule, epochs=epochs, **steps, batch_size=batch_size, accum=accum,
                              micro_batch=micro_batch, lr=lr, lr_schedule=lr_schedule, augment=augment, seed=seed,
                              device=device, precision=precision, fast=fast,
                              activation_checkpointing=activation_checkpointing,
                              loss_scale=loss_scale, pick=pick).validate(ratio or 0.0)
    if target_speedup is not None and schedule not in ("alternate", "one-shot"):
        raise UsageError(f"--target-speedup works with the alternate and one-shot schedules, not {schedule}")
    check_model(model, checkpoint)
    tag = f"slim{round(ratio * 100)}" if ratio is not None else f"fast{target_speedup:g}x"
    path = _output(out, f"{_stem(model)}-{tag}.pt", [model, checkpoint], force)
    if data is not None:
        from .data import find_images

        find_images(data)
    _warn_samples(data)
    teacher = open_model(model, pretrained=not random_weights, checkpoint=checkpoint, seed=seed)
    options = {**prune_opts.__dict__, **train_opts.__dict__}
    try:
        result = compress_run(teacher, ratio, data=data, workdir=workdir, resume=resume, out=path, **options)
    except RuntimeError as exc:
        text = str(exc).lower()
        if "out of memory" in text or "not enough memory" in text or type(exc).__name__ == "OutOfMemoryError":
            raise VitslimError(f"out of memory: try a smaller --batch-size (now {batch_size}) with --accum, "
                               "or --activation-checkpointing on") from None
        raise
    summary = {"model": model, "ratio": ratio, "target_speedup": target_speedup, "out": str(path), **result.summary()}
    if evaluate and result.val_images:
        summary["eval"] = evaluate_model(result.student, teacher.cpu(), images=result.val_images)
    rows = [("params", f"{_fmt(summary['before']['params'])} -> {_fmt(summary['after']['params'])}"),
            ("MACs (modules)", f"{_fmt(summary['before']['macs'])} -> {_fmt(summary['after']['macs'])}")]
    rows += [(f"{stage}: epochs, last train loss / val MSE", f"{rec['epochs']}, {rec['train_loss']:.5f} / "
              f"{rec['val_output_mse']:.6f}") for stage, rec in summary["stages"].items()]
    rows += [(f"eval {k}", _value(v)) for k, v in (summary.get("eval") or {}).items()]
    if summary.get("speed"):
        sp = summary["speed"]
        rows += [("speed-up (measured / predicted)", f"{sp['measured_speedup']:.2f}x / {sp['predicted_speedup']:.2f}x")]
    rows += [("time", f"{summary['seconds']} s"), ("output", str(path))]
    goal = f"--ratio {ratio}" if ratio is not None else f"--target-speedup {target_speedup:g}"
    _show(summary, as_json, f"vitslim compress {model} {goal}", rows)


@app.command("eval")
def eval_cmd(
    student: Annotated[str, typer.Argument(help="A saved (compressed) model file, or a model name.")],
    teacher: Annotated[Optional[str], typer.Option("--teacher", help="Teacher model (default: the student's base model).")] = None,
    data: Data = None,
    checkpoint: Annotated[Optional[str], typer.Option("--checkpoint", metavar="PATH", help="Teacher weights file.")] = None,
    random_weights: Annotated[bool, typer.Option("--random-weights", help="Teacher (and a named student) with "
                              "random weights from --seed.")] = False,
    seed: Seed = 0,
    limit: Annotated[int, typer.Option("--limit", help="Evaluate at most this many images (0: all).")] = 0,
    save_overlays: Annotated[Optional[str], typer.Option("--save-overlays", metavar="DIR", help="Write one PNG per "
                             "image of the teacher's and the student's outputs side by side (SAM: masks).")] = None,
    as_json: AsJson = False,
) -> None:
    """Label-free evaluation of a student against its teacher, by its family's protocol (SAM: masks
    against the teacher's, and SA-1B ground truth where present; timm: top-1 agreement, output cosine)."""
    from .api import check_model, open_model
    from .data import find_images
    from .evaluation import evaluate as evaluate_model
    from .info import get_info

    check_model(student)
    if teacher is not None:
        check_model(teacher, checkpoint)
    if data is not None:
        find_images(data)
    s = open_model(student, pretrained=not random_weights, seed=seed)
    base = teacher or (get_info(s) or {}).get("name") or student
    t = open_model(base, pretrained=not random_weights, checkpoint=checkpoint, seed=seed)
    with console.status("evaluating"):
        result = evaluate_model(s, t, data=data, limit=limit, overlays=save_overlays)
    _show(result, as_json, f"{student} vs {base}", [(k, _value(v)) for k, v in result.items()])


@app.command()
def bench(
    models: Annotated[list[str], typer.Argument(help="Specs: sam-b, sam-b@0.77, sam-b@0.77:heads, timm:NAME@0.5, or files.")],
    batch: Annotated[int, typer.Option("--batch", help="Images per forward.")] = 1,
    runs: Annotated[Optional[int], typer.Option("--runs", help="Timed runs per round (default: 50 on GPU, 1 on CPU).")] = None,
    rounds: Annotated[int, typer.Option("--rounds", help="Interleaved rounds over all rows (the median of round "
                      "medians is reported, with their spread).")] = 3,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed runs before timing.")] = 1,
    fast: Annotated[bool, typer.Option("--fast", help="Also time the fused-attention path (vitslim.optimize).")] = False,
    dtype: Annotated[str, typer.Option("--dtype", help="fp32 | fp16 | bf16")] = "fp32",
    device: Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:1 (default: cuda if present).")] = None,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the encoder.")] = False,
    img_size: Annotated[Optional[int], typer.Option("--img-size", help="Input size override for model names (families "
                        "that allow it).")] = None,
    onnxruntime: Annotated[bool, typer.Option("--onnxruntime", help="Also time the ONNX export in onnxruntime (CPU).")] = False,
    kernel: Annotated[Optional[list[str]], typer.Option("--kernel", help="Also time this fused kernel (repeatable; SAM: "
                      "sdpa, chunked, flex).")] = None,
    cuda_graphs: Annotated[bool, typer.Option("--cuda-graphs", help="Capture each encoder as a CUDA graph (GPU).")] = False,
    as_json: AsJson = False,
) -> None:
    """Encoder latency, side by side in one run; speed-ups against the first timed row."""
    from .bench import benchmark

    with console.status("timing") as status:
        result = benchmark(models, batch=batch, runs=runs, warmup=warmup, fast=fast, dtype=dtype,
                           device=device, compile=compile, img_size=img_size, onnxruntime=onnxruntime,
                           kernels=kernel, cuda_graphs=cuda_graphs, rounds=rounds,
                           progress=lambda text: status.update(f"timing {text}"))
    if as_json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"{result['device']} ({result['threads']} threads), torch {result['torch']}, "
                        f"{result['dtype']}, batch {result['batch']}, input {result['input']}, "
                        f"{result['rounds']} rounds x {result['runs_per_round']} runs")
    for col in ("model", "path", "params", "MACs", "MACs+attn", "median ms", "spread ms", "p90 ms", "speed-up"):
        table.add_column(col, justify="right", overflow="fold")  # wrap long specs rather than cut them
    for r in result["rows"]:
        timing = ([f"{r['median_ms']:.1f}", f"{r['spread_ms'][0]:.0f}-{r['spread_ms'][1]:.0f}", f"{r['p90_ms']:.1f}",
                   f"{r['speedup']:.2f}x"] if r["median_ms"] is not None else ["failed", "", "", ""])
        table.add_row(r["model"], r["path"], _fmt(r["params"]), _fmt(r["macs"]), _fmt(r["macs_with_attention"]), *timing)
    console.print(table)
    for r in result["rows"]:
        if r.get("error"):
            console.print(f"{r['model']} ({r['path']}) failed: {r['error']}")


@app.command()
def export(
    model: ModelArg,
    onnx: Annotated[Optional[str], typer.Option("--onnx", metavar="FILE", help="Write the encoder as ONNX.")] = None,
    hf: Annotated[Optional[str], typer.Option("--hf", metavar="DIR", help="Write a Hugging Face model folder "
                  "(config.json + model.safetensors; SAM: transformers.SamModel).")] = None,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset version.")] = 17,
    checkpoint: Checkpoint = None,
    random_weights: RandomWeights = False,
    seed: Seed = 0,
    force: Force = False,
) -> None:
    """Export a model: its encoder as ONNX (--onnx), or the whole model as a Hugging Face folder (--hf)."""
    from .api import check_model, open_model
    from .export import export_hf, export_onnx

    if not onnx and not hf:
        raise UsageError("say what to write: --onnx FILE and/or --hf DIR")
    check_model(model, checkpoint)
    path = _output(onnx, f"{_stem(model)}.onnx", [model], force, flag="--onnx") if onnx else None
    if hf and Path(hf).resolve() in {Path(model).resolve(), *((Path(checkpoint).resolve(),) if checkpoint else ())}:
        raise UsageError(f"--hf {hf} is an input of this command: write elsewhere")
    m = open_model(model, pretrained=not random_weights, checkpoint=checkpoint, seed=seed)
    if path is not None:
        with console.status(f"exporting {model} to {path}"):
            export_onnx(m, path, opset=opset)
        console.print(f"wrote {path}")
    if hf:
        console.print(f"wrote {export_hf(m, hf, force=force)}")


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: run the app, turning known failures into one line and an exit code."""
    import warnings


    def one_line(message, category, filename, lineno, file=None, line=None):  # our warnings: no source lines
        if issubclass(category, UnreadableImagesWarning):
            err_console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)
        else:
            default_show(message, category, filename, lineno, file, line)

    default_show, warnings.showwarning = warnings.showwarning, one_line
    try:
        code = app(args=argv, standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C inside a command into a returned exit code
            _fail("interrupted", 130)
        if isinstance(code, int) and code:
            sys.exit(code)
    except VitslimError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:  # typer/click usage errors: they know their message and exit code
        name = type(exc).__name__
        if name == "Exit":
            sys.exit(getattr(exc, "exit_code", 0))
        if name == "Abort":  # click's word for Ctrl-C (and end of input)
            _fail("interrupted", 130)
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            _fail(exc.format_message(), exc.exit_code)
        raise
    finally:
        warnings.showwarning = default_show


def _fail(message: str, code: int) -> None:
    if message:  # an empty message follows help text already shown
        err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
