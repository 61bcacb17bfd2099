"""Latency against parameters, from the JSON of ``benchmarks/latency.py`` (or ``vitslim bench --json``).

    python benchmarks/plot_latency.py latency.json [more.json ...] --out latency.png

One point per row (model and path), with the spread of its round medians as an error bar; one colour
per path (plain, fast, fast:KERNEL, onnxruntime). Needs matplotlib (``pip install -e ".[plot]"``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="JSON files written by latency.py --json")
    ap.add_argument("--out", default="latency.png")
    args = ap.parse_args()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit('error: plotting needs matplotlib: pip install -e ".[plot]"') from None

    fig, ax = plt.subplots(figsize=(7, 4.5))
    title = []
    for path in args.results:
        result = json.loads(Path(path).read_text())
        title.append(f"{result['device']}, {result['dtype']}, batch {result['batch']}")
        for n, label in enumerate(dict.fromkeys(r["path"] for r in result["rows"])):
            rows = [r for r in result["rows"] if r["path"] == label and r["median_ms"] is not None]
            if not rows:
                continue
            x = [r["params"] / 1e6 for r in rows]
            y = [r["median_ms"] for r in rows]
            spread = [r.get("spread_ms") or [r["median_ms"]] * 2 for r in rows]
            err = [[m - s[0] for m, s in zip(y, spread)], [s[1] - m for m, s in zip(y, spread)]]
            ax.errorbar(x, y, yerr=err, fmt="o", capsize=3, label=label)
            for r, xi, yi in zip(rows, x, y) if n == 0 else ():  # name each model once
                ax.annotate(r["model"], (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import ScalarFormatter

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("encoder parameters (M)")
    ax.set_ylabel("latency, median of round medians (ms)")
    ax.set_title("; ".join(dict.fromkeys(title)), fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
