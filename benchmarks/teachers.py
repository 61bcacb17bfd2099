"""Train the testbed teachers and ship them: one command per teacher, seeded.

    python benchmarks/teachers.py digits-vit [shapes-sam shapes-sam2] [--capabilities avx2 default]
        [--from-cache] [--threads 1]

For each testbed, trains its teacher (seed 0, the testbed's own recipe) on this machine's CPU, scores it
on the held-out data, and writes it beside the testbed, as the family plugin ships it
(``<plugin>/teachers/<name>.safetensors``), with its entry in ``teachers.json``: the file's SHA-256,
the seed, the recipe, this command, the CPU and torch it was trained with, the time, and its metrics.
``--capabilities`` also retrains it under each named ``ATEN_CPU_CAPABILITY`` (in a fresh process; the
kernels round differently on each, so the teacher and its metrics move) and records those metrics as
the spread that the retraining test allows. ``--from-cache`` ships the teacher the cache already holds
(trained earlier by the quality benchmark) instead of training it again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _capability() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability().lower()


def train(name: str, from_cache: bool = False) -> tuple[object, dict]:
    """The teacher (trained now, or the cached one) and what the manifest says of it."""
    import torch

    from vitslim.device import cpu_name
    from vitslim.testbed import get_testbed, teacher_seconds

    tb = get_testbed(name)
    started = time.perf_counter()
    model = tb.teacher(shipped=False) if from_cache else tb.teacher(shipped=False, cache=False)
    seconds = teacher_seconds(model) if from_cache else round(time.perf_counter() - started, 1)
    info = {"seed": 0, "recipe": json.loads(json.dumps(tb.recipe)), "seconds": seconds,
            "threads": torch.get_num_threads(), "cpu": f"{cpu_name()} ({_capability()})",
            "torch": torch.__version__.split("+")[0], "metrics": tb.score(model)}
    return model, info


def _worker(name: str, out: str) -> None:
    _, info = train(name)
    Path(out).write_text(json.dumps(info))


def _elsewhere(name: str, capability: str, threads: int) -> dict:
    """Train and score ``name`` in a fresh process under ``ATEN_CPU_CAPABILITY=capability``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "info.json"
        env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "OMP_NUM_THREADS": str(threads),
               "PYTHONPATH": str(ROOT)}
        subprocess.run([sys.executable, __file__, "--worker", name, str(out), "--threads", str(threads)],
                       check=True, env=env)
        return json.loads(out.read_text())


def ship(name: str, model, info: dict, spread: dict[str, dict]) -> Path:
    import vitslim
    from vitslim.testbed import MANIFEST, get_testbed
    from vitslim.weights import file_digest

    folder = Path(get_testbed(name).shipped_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = vitslim.save(model, folder / f"{name}.safetensors")
    manifest_path = folder / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest[name] = {"file": path.name, "sha256": file_digest(path, "sha256"),
                      "command": f"python benchmarks/teachers.py {name}", **info,
                      "metrics_by_capability": {info["cpu"].rsplit("(", 1)[1].rstrip(")"): info["metrics"],
                                                **{k: v["metrics"] for k, v in spread.items()}}}
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("testbeds", nargs="*")
    ap.add_argument("--capabilities", nargs="*", default=[], help="also retrain under these ATEN_CPU_CAPABILITY "
                    "values (default, avx2, avx512) and record their metrics")
    ap.add_argument("--from-cache", action="store_true", help="ship the cached teacher instead of training one")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--worker", nargs=2, metavar=("NAME", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.worker:
        _worker(*args.worker)
        return
    for name in args.testbeds:
        model, info = train(name, args.from_cache)
        print(f"{name}: {info['metrics']} in {info['seconds']} s on {info['cpu']}", file=sys.stderr, flush=True)
        spread = {}
        for cap in args.capabilities:
            spread[cap] = _elsewhere(name, cap, args.threads)
            print(f"{name} under {cap}: {spread[cap]['metrics']} in {spread[cap]['seconds']} s", file=sys.stderr,
                  flush=True)
        print(f"wrote {ship(name, model, info, spread)}", file=sys.stderr)


if __name__ == "__main__":
    main()
