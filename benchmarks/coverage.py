"""Which digits a student compressed from a few images gets wrong, against the digits it was trained on.

    python benchmarks/quality.py --testbeds digits-vit --sections compress --ratios 0.77 --fractions 0.01 \\
        --seeds 0 1 2 3 --criteria disturbed_taylor --schedules alternate --save students --json q.json
    python benchmarks/coverage.py q.json [--json coverage.json]

For each row of a quality JSON that saved its student (``--save``): the digits among the images it
distilled on (the training part of the run's split; the held-out validation image is not trained on),
the held-out test accuracy on those digits and on the digits it never saw, and the teacher's on both.
It answers whether a bad calibration subset is bad because of the classes it lacks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def coverage(row: dict) -> dict:
    """Per-digit test accuracy of the row's student and of the teacher, split by whether the run trained on
    that digit."""
    import torch

    import vitslim
    from vitslim.engine.run import split
    from vitslim.testbed import get_testbed
    from vitslim_timm.digits import digits_split

    tb = get_testbed(row["testbed"])
    data = digits_split()
    if row.get("pick") == "diverse":
        from vitslim.selection import pick_images

        idx = pick_images(tb.teacher(), tb.train_images(), row["images"], seed=row.get("data_seed", row["seed"]))
    else:
        idx = tb.subset_indices(row["images"], row.get("data_seed", row["seed"]))
    train, _ = split(len(idx), row.get("options", {}).get("val_fraction", 0.1), row.get("run_seed", row["seed"]))
    seen = sorted(set(data["y_train"][idx[train]].tolist()))
    y = data["y_test"]
    out = {"seed": row["seed"], "data_seed": row.get("data_seed", row["seed"]),
           "run_seed": row.get("run_seed", row["seed"]), "trained_digits": seen, "accuracy": row["metrics"]["accuracy"]}
    with torch.no_grad():
        for who, model in (("student", vitslim.load(row["student_file"])), ("teacher", tb.teacher())):
            right = (model.eval()(data["x_test"]).argmax(-1) == y).float()
            mask = torch.isin(y, torch.tensor(seen))
            out[who] = {"per_digit": [round(float(right[y == d].mean()) * 100, 1) for d in range(10)],
                        "seen": round(float(right[mask].mean()) * 100, 1),
                        "unseen": round(float(right[~mask].mean()) * 100, 1) if (~mask).any() else None}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("quality_json", nargs="+")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    rows = [r for f in args.quality_json for r in json.loads(Path(f).read_text())["runs"] if r.get("student_file")]
    if not rows:
        raise SystemExit("no row saved its student: run benchmarks/quality.py with --save DIR")
    results = [coverage(r) for r in rows]
    for r in results:
        s, t = r["student"], r["teacher"]
        print(f"seed {r['seed']} (images {r['data_seed']}, run {r['run_seed']}): trained on digits "
              f"{''.join(map(str, r['trained_digits']))}; accuracy {r['accuracy']:.1f}; "
              f"seen digits {s['seen']} (teacher {t['seen']}), unseen {s['unseen']} (teacher {t['unseen']}); "
              f"per digit {s['per_digit']}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
