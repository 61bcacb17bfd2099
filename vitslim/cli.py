"""The ``vitslim`` command line: a thin typer layer over the Python API."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import VitslimError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Structured compression of Vision Transformers (SlimSAM's alternate slimming).",
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)


def _fmt(n: float, unit: str = "") -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


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


def _value(v) -> str:
    return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


@app.command()
def plugins(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List installed plugins and the model families and criteria each provides."""
    from .registry import plugins as list_plugins

    rows = list_plugins()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="vitslim plugins")
    for col in ("plugin", "package", "families (models)", "criteria"):
        table.add_column(col)
    for r in rows:
        fams = "; ".join(f"{k}: {', '.join(v)}" for k, v in r["families"].items())
        table.add_row(r["plugin"], r["package"], fams or "-", ", ".join(r["importances"]) or "-")
    console.print(table)


@app.command()
def inspect(
    model: str = typer.Argument(..., help="A model name (sam-b, timm:vit_base_patch16_224) or a saved file."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Per-block widths, parameters and MACs of a model or a saved file (no weights downloaded)."""
    from .api import inspect as inspect_model

    report = inspect_model(model)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    title = f"{report['name']} ({report['family']})" + (f" — {report['file']}" if "file" in report else "")
    table = Table(title=title)
    for col in ("block", "heads", "head dim", "attn width", "MLP hidden"):
        table.add_column(col, justify="right")
    for i, b in enumerate(report["widths"]["blocks"]):
        table.add_row(str(i), str(b["num_heads"]), str(b["head_dim"]), str(b["num_heads"] * b["head_dim"]), str(b["mlp_hidden"]))
    console.print(table)
    console.print(f"embedding width: {report['widths']['embed_dim']}   input: {report['input_shape']}")
    for part in ("encoder", "model"):
        r = report[part]
        console.print(
            f"{part:8s} params {_fmt(r['params'])}   MACs {_fmt(r['macs'])} (modules, torch-pruning)   "
            f"{_fmt(r['macs_with_attention'])} (with attention matmuls)"
        )
    for step in report["history"]:
        console.print(f"history: {json.dumps(step)}")


def calibration_data(model, folder: Optional[str], batch_size: int = 1):
    """Preprocessed image batches for importance estimation (a folder, or the bundled samples)."""
    from torch.utils.data import DataLoader

    from .data import image_dataset
    from .registry import family_of

    family = family_of(model)
    if folder is None:
        err_console.print("[yellow]warning:[/yellow] no --data given: using scikit-image's 10 sample photos; "
                          "real compression wants thousands of images", highlight=False)
    ds = image_dataset(folder, lambda im: family.preprocess(model, im))
    return DataLoader(ds, batch_size=batch_size, shuffle=False)


@app.command()
def prune(
    model: str = typer.Argument(..., help="Model name or saved file."),
    ratio: float = typer.Option(..., "--ratio", help="Fraction of channels to remove, in [0, 1)."),
    out: str = typer.Option(..., "--out", help="Where to write the pruned model."),
    part: str = typer.Option("both", help="embedding | bottleneck | both"),
    criterion: str = typer.Option("disturbed_taylor", help="Importance criterion (built-in or a plugin's)."),
    ranking: str = typer.Option("global", help="global (per-block widths) | uniform"),
    attention: str = typer.Option("head_dim", help="head_dim | heads (remove whole heads)"),
    round_to: int = typer.Option(1, "--round-to", help="Round kept widths to a multiple of this."),
    data: Optional[str] = typer.Option(None, "--data", help="Folder of calibration images (default: samples)."),
    importance_batches: Optional[int] = typer.Option(None, "--importance-batches", help="Batches used for importance."),
    batch_size: int = typer.Option(1, "--batch-size", help="Images per importance batch."),
    noise_sigma: float = typer.Option(0.01, "--noise-sigma", help="Disturbed Taylor noise std."),
    seed: int = typer.Option(0, "--seed"),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="Local weights instead of a download."),
    random_weights: bool = typer.Option(False, "--random-weights", help="Skip weights (for sizes and timing)."),
) -> None:
    """Prune a model once (no distillation) and save it."""
    from .api import open_model, save
    from .modelfile import check_writable
    from .pruning import check_options, prune as prune_model, resolve_criterion

    check_writable(out)  # fail on bad input before any slow work
    check_options(ratio, part, ranking, attention, round_to)
    crit = resolve_criterion(criterion, sigma=noise_sigma, batches=importance_batches, seed=seed)
    if data is not None:
        from .data import find_images

        find_images(data)
    m = open_model(model, pretrained=not random_weights, checkpoint=checkpoint)
    batches = calibration_data(m, data, batch_size) if crit.needs_data else None
    from .progress import StageProgress

    with StageProgress(console=err_console).bar(f"{crit.name} importance") as tick:
        pruned = prune_model(m, ratio, part=part, importance=crit, ranking=ranking, data=batches,
                             attention=attention, round_to=round_to, seed=seed, progress=tick)
    path = save(pruned, out)
    from .info import get_info

    step = get_info(pruned)["history"][-1]
    console.print(f"wrote {path}  (importance {step['seconds']['importance']} s, surgery {step['seconds']['surgery']} s)")


def _default_out(model: str, ratio: float) -> str:
    from pathlib import Path

    stem = Path(model).stem if model.endswith((".pt", ".pth")) else model.split(":")[-1]
    return f"{stem}-slim{round(ratio * 100)}.pt"


@app.command()
def compress(
    model: str = typer.Argument(..., help="Model name (sam-b, timm:vit_base_patch16_224) or saved file."),
    ratio: float = typer.Option(..., "--ratio", help="Fraction of channels to remove, in [0, 1)."),
    data: Optional[str] = typer.Option(None, "--data", help="Folder of images (recursive jpg/png); default: samples."),
    out: Optional[str] = typer.Option(None, "--out", help="Output file (default: <model>-slim<ratio>.pt)."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="Local weights instead of a download."),
    random_weights: bool = typer.Option(False, "--random-weights", help="Start from random weights (testing)."),
    criterion: str = typer.Option("disturbed_taylor", "--criterion", help="Importance criterion."),
    ranking: str = typer.Option("global", "--ranking", help="global | uniform"),
    attention: str = typer.Option("head_dim", "--attention", help="head_dim | heads"),
    schedule: str = typer.Option("alternate", "--schedule", help="alternate | one-shot | iterative:K"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs per stage (alternate); default: enough for 2000 steps per stage."),
    batch_size: int = typer.Option(4, "--batch-size", help="Images per optimizer step."),
    accum: int = typer.Option(1, "--accum", help="Gradient accumulation steps."),
    micro_batch: int = typer.Option(0, "--micro-batch", help="Images per forward/backward (0: 1 on CPU, batch on GPU)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (default: 0.1 / embedding width)."),
    lr_schedule: str = typer.Option("cosine", "--lr-schedule", help="cosine | plateau (SlimSAM's) | constant"),
    augment: str = typer.Option("default", "--augment", help="Views shared by teacher and student: default | none | e.g. flip,crop=0.5,mixup"),
    noise_sigma: float = typer.Option(0.01, "--noise-sigma", help="Disturbed Taylor noise std."),
    importance_batches: Optional[int] = typer.Option(None, "--importance-batches", help="Batches for importance (default: all)."),
    round_to: int = typer.Option(1, "--round-to"),
    seed: int = typer.Option(0, "--seed"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: cuda if present)."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 on GPU) | fp32 | bf16"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run kept in --workdir."),
    workdir: str = typer.Option("vitslim-work", "--workdir", help="Where epoch checkpoints are kept."),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="Evaluate on the validation split at the end."),
    fast: bool = typer.Option(True, "--fast/--no-fast", help="Fused attention while distilling (same numbers)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Compress a model: prune + distil in stages (SlimSAM's alternate slimming by default)."""
    import time
    from pathlib import Path

    from .api import inspect as inspect_model, open_model
    from .compression import compress as run_compress, dataset_for, split
    from .data import find_images
    from .engine.schedules import build_schedule
    from .errors import UsageError
    from .modelfile import check_writable
    from .pruning import check_options, resolve_criterion

    out = out or _default_out(model, ratio)
    check_writable(out)  # every cheap check before the slow work
    check_options(ratio, "both", ranking, attention, round_to)
    build_schedule(schedule, ratio, epochs or 1)
    from .compression import check_training_options
    from .engine.augment import parse_augment

    check_training_options(lr, lr_schedule, 1)
    parse_augment(augment)
    resolve_criterion(criterion, sigma=noise_sigma)
    if precision not in ("auto", "fp32", "bf16"):
        raise UsageError(f"unknown precision '{precision}': choose auto, fp32 or bf16")
    if batch_size < 1 or accum < 1:
        raise UsageError("--batch-size and --accum must be >= 1")
    if resume and not (Path(workdir) / "checkpoint.pt").is_file():
        raise UsageError(f"nothing to resume in {workdir} (no checkpoint.pt): run without --resume")
    if data is not None:
        find_images(data)
    else:
        err_console.print("[yellow]warning:[/yellow] no --data given: using scikit-image's 10 sample photos; "
                          "real compression wants thousands of images", highlight=False)
    started = time.perf_counter()
    teacher = open_model(model, pretrained=not random_weights, checkpoint=checkpoint)
    before = inspect_model(teacher)
    try:
        student = run_compress(
            teacher, ratio, data=data, schedule=schedule, epochs=epochs, batch_size=batch_size, accum=accum,
            lr=lr, lr_schedule=lr_schedule, augment=augment, importance=criterion, ranking=ranking, attention=attention, round_to=round_to,
            sigma=noise_sigma, importance_batches=importance_batches, seed=seed, device=device,
            precision=precision, workdir=workdir, resume=resume, out=out, micro_batch=micro_batch, fast=fast,
        )
    except KeyboardInterrupt:
        raise VitslimError(f"interrupted: the last epoch checkpoint is kept in {workdir}; continue with --resume") from None
    except RuntimeError as exc:
        text = str(exc).lower()
        if "out of memory" in text or "not enough memory" in text or type(exc).__name__ == "OutOfMemoryError":
            raise VitslimError(f"out of memory: try a smaller --batch-size (now {batch_size}) with --accum") from None
        raise
    after = inspect_model(out)
    summary = {"model": model, "ratio": ratio, "out": out, "seconds": None,
               "before": {k: before["model"][k] for k in ("params", "macs")},
               "after": {k: after["model"][k] for k in ("params", "macs")},
               "stages": {}}
    for rec in after["history"][-1]["log"]:
        summary["stages"][rec["stage"]] = {"train_loss": rec["train"]["loss"], "val_output_mse": rec["val_output_mse"]}
    if evaluate:
        from .registry import family_of

        ds = dataset_for(teacher, data)
        _, val_idx = split(len(ds), 0.1, seed)
        images = [ds.images[i] for i in val_idx]
        summary["eval"] = _evaluate(family_of(teacher), student.cpu(), teacher.cpu(), images)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    rows = [("params", f"{_fmt(summary['before']['params'])} -> {_fmt(summary['after']['params'])}"),
            ("MACs (modules)", f"{_fmt(summary['before']['macs'])} -> {_fmt(summary['after']['macs'])}")]
    rows += [(f"{stage}: last train loss / val MSE", f"{rec['train_loss']:.5f} / {rec['val_output_mse']:.6f}")
             for stage, rec in summary["stages"].items()]
    rows += [(f"eval {k}", _value(v)) for k, v in (summary.get("eval") or {}).items()]
    rows += [("time", f"{summary['seconds']} s"), ("output", out)]
    _show(summary, as_json, f"vitslim compress {model} --ratio {ratio}", rows)


def _evaluate(family, student, teacher, images, annotations=None) -> dict:
    from pathlib import Path

    from PIL import Image

    pil, anns = [], []
    for item in images:
        if isinstance(item, (str, Path)):
            with Image.open(item) as im:
                pil.append(im.convert("RGB"))
            anns.append(Path(item).with_suffix(".json"))
        else:
            pil.append(item)
            anns.append(None)
    return family.evaluate(student, teacher, pil, anns)


@app.command("eval")
def eval_cmd(
    student: str = typer.Argument(..., help="A saved (compressed) model file, or a model name."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Teacher model (default: the student's base model)."),
    data: Optional[str] = typer.Option(None, "--data", help="Folder of images (default: samples)."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="Teacher weights file."),
    random_weights: bool = typer.Option(False, "--random-weights", help="Teacher with random weights (testing)."),
    limit: int = typer.Option(0, "--limit", help="Evaluate at most this many images (0: all)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Label-free evaluation: SAM masks vs the teacher's (and SA-1B ground truth if present);
    timm top-1 agreement and output cosine similarity."""
    from .api import open_model
    from .data import find_images, sample_images
    from .info import get_info
    from .registry import family_of

    images = sample_images() if data is None else find_images(data)
    s = open_model(student, pretrained=not random_weights)
    base = teacher or (get_info(s) or {}).get("name") or student
    t = open_model(base, pretrained=not random_weights, checkpoint=checkpoint)
    if limit > 0:
        images = images[:limit]
    family = family_of(s)
    if family_of(t).name != family.name:
        from .errors import UsageError

        raise UsageError(f"teacher {base} is not of the student's family ({family.name})")
    with console.status(f"evaluating on {len(images)} images"):
        result = _evaluate(family, s, t, images)
    _show(result, as_json, f"{student} vs {base}", [(k, _value(v)) for k, v in result.items()])


@app.command()
def bench(
    models: list[str] = typer.Argument(..., help="Specs: sam-b, sam-b@0.77, sam-b@0.77:heads, timm:NAME@0.5, or files."),
    batch: int = typer.Option(1, "--batch"),
    runs: Optional[int] = typer.Option(None, "--runs", help="Timed runs (default: 50 on GPU, 3 on CPU)."),
    warmup: int = typer.Option(1, "--warmup"),
    fast: bool = typer.Option(False, "--fast", help="Also time the fused-attention path (vitslim.optimize)."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32 | fp16 | bf16"),
    device: Optional[str] = typer.Option(None, "--device"),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the encoder."),
    img_size: Optional[int] = typer.Option(None, "--img-size", help="SAM input size override (names only)."),
    onnxruntime: bool = typer.Option(False, "--onnxruntime", help="Also time the ONNX export in onnxruntime (CPU)."),
    kernel: Optional[list[str]] = typer.Option(None, "--kernel", help="Also time this fused kernel (repeatable; SAM: sdpa, chunked, flex)."),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs", help="Capture each encoder as a CUDA graph (GPU)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Encoder latency, side by side in one run; speed-ups against the first timed row."""
    from .bench import benchmark

    with console.status("timing") as status:
        result = benchmark(models, batch=batch, runs=runs, warmup=warmup, fast=fast, dtype=dtype,
                           device=device, compile=compile, img_size=img_size, onnxruntime=onnxruntime,
                           kernels=kernel, cuda_graphs=cuda_graphs, progress=lambda text: status.update(f"timing {text}"))
    if as_json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"{result['device']} ({result['threads']} threads), torch {result['torch']}, "
                        f"{result['dtype']}, batch {result['batch']}, input {result['input']}")
    for col in ("model", "path", "params", "MACs", "MACs+attn", "median ms", "p90 ms", "speed-up"):
        table.add_column(col, justify="right", overflow="fold")  # wrap long specs rather than cut them
    for r in result["rows"]:
        timing = ([f"{r['median_ms']:.1f}", f"{r['p90_ms']:.1f}", f"{r['speedup']:.2f}x"]
                  if r["median_ms"] is not None else ["failed", "", ""])
        table.add_row(r["model"], r["path"], _fmt(r["params"]), _fmt(r["macs"]), _fmt(r["macs_with_attention"]), *timing)
    console.print(table)
    for r in result["rows"]:
        if r.get("error"):
            console.print(f"{r['model']} ({r['path']}) failed: {r['error']}")


@app.command()
def export(
    model: str = typer.Argument(..., help="A saved model file or a model name."),
    onnx: str = typer.Option(..., "--onnx", help="Output .onnx file."),
    opset: int = typer.Option(17, "--opset"),
    random_weights: bool = typer.Option(False, "--random-weights", help="For names: skip weights."),
) -> None:
    """Export a model's encoder (SAM: image encoder; timm: the model) to ONNX."""
    from .api import open_model
    from .export import export_onnx
    from .modelfile import check_writable

    check_writable(onnx)
    m = open_model(model, pretrained=not random_weights)
    with console.status(f"exporting {model} to {onnx}"):
        path = export_onnx(m, onnx, opset=opset)
    console.print(f"wrote {path}")


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: run the app, turning known failures into one line and an exit code."""
    try:
        app(args=argv, standalone_mode=False)
    except VitslimError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:  # typer/click usage errors: they know their message and exit code
        name = type(exc).__name__
        if name == "Exit":
            sys.exit(getattr(exc, "exit_code", 0))
        if name == "Abort":
            _fail("aborted", 1)
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            _fail(exc.format_message(), exc.exit_code)
        raise


def _fail(message: str, code: int) -> None:
    if message:  # an empty message follows help text already shown
            err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
