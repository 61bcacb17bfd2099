"""Parameters and MACs of models, dense and pruned, side by side (random weights; nothing is timed).

    python benchmarks/sizes.py sam2-t sam2-t@0.5 sam2-t@0.77 sam2-b+ sam2-b+@0.5 sam2-b+@0.77 --markdown

Model specs as in ``vitslim bench`` (``NAME@RATIO``: both parts pruned, uniform widths, magnitude). MACs
by torch-pruning's ``count_ops_and_params`` at the family's input size; "with attention" adds the
attention matmuls module counters miss (pooled queries and windows included). Prints JSON, or a table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _report import emit

import vitslim
from vitslim.bench import build


def row(spec: str) -> dict:
    report = vitslim.inspect(build(spec))
    w = report["widths"]
    return {"model": spec, "residual": [w["embed_dim"], *w.get("stream_dims", [])],
            "head_dims": sorted({b["head_dim"] for b in w["blocks"]}),
            "model_params": report["model"]["params"], "model_macs": report["model"]["macs"],
            "encoder_params": report["encoder"]["params"], "encoder_macs": report["encoder"]["macs"],
            "encoder_macs_with_attention": report["encoder"]["macs_with_attention"]}


def markdown(rows: list[dict]) -> str:
    lines = ["| model | residual widths | head dims | encoder params / MACs | encoder MACs with attention | "
             "whole model params / MACs |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {'/'.join(map(str, r['residual']))} | "
                     f"{'-'.join(map(str, (r['head_dims'][0], r['head_dims'][-1]))) if len(r['head_dims']) > 1 else r['head_dims'][0]} | "
                     f"{r['encoder_params'] / 1e6:.2f}M / {r['encoder_macs'] / 1e9:.1f}G | "
                     f"{r['encoder_macs_with_attention'] / 1e9:.1f}G | {r['model_params'] / 1e6:.2f}M / "
                     f"{r['model_macs'] / 1e9:.1f}G |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table instead of JSON")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    rows = [row(spec) for spec in args.models]
    if not args.markdown:
        emit({"rows": rows}, args.json_out)
        return
    print(markdown(rows))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
