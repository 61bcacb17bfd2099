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
err_console = Console(stderr=True)


def _fmt(n: float, unit: str = "") -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


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
    m = open_model(model, pretrained=not random_weights, checkpoint=checkpoint)
    batches = calibration_data(m, data, batch_size) if crit.needs_data else None
    with console.status(f"pruning {model} ({part}, ratio {ratio}, {crit.name})"):
        pruned = prune_model(m, ratio, part=part, importance=crit, ranking=ranking, data=batches,
                             attention=attention, round_to=round_to, seed=seed)
    path = save(pruned, out)
    step = pruned._vitslim_info["history"][-1]
    console.print(f"wrote {path}  (importance {step['seconds']['importance']} s, surgery {step['seconds']['surgery']} s)")


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
