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


def main() -> None:
    """Entry point: run the app, turning known failures into one line and an exit code."""
    try:
        app(standalone_mode=False)
    except VitslimError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted", highlight=False)
        sys.exit(130)
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if isinstance(exc, click.ClickException):
            err_console.print(f"[red]error:[/red] {exc.format_message()}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
