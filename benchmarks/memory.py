"""Peak memory of encoders: inference, and one distillation step (student forward + backward with the
teacher forward), each model in a fresh process so that peaks do not mix.

    python benchmarks/memory.py sam-b sam-b@0.77 sam-b@0.77:heads [--fast] [--device cuda] [--json out.json]

CPU: the process's peak resident set (VmHWM, reset through /proc/self/clear_refs just before the
measured work; Linux) minus its resident set at that point.
GPU: torch.cuda.max_memory_allocated. Specs as in ``vitslim bench``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

from _report import emit


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def measure(spec: str, mode: str, fast: bool, device: str) -> dict:
    """Runs in the child process."""
    import vitslim
    from vitslim.bench import build
    from vitslim.registry import family_of

    model = build(spec)
    if fast:
        vitslim.optimize(model)
    family = family_of(model)
    encoder = family.encoder(model).to(device)
    x = torch.randn(1, *family.input_shape(model), device=device)
    teacher = None
    if mode == "train":
        teacher = build(spec.split("@")[0])
        if fast:  # as ``compress`` teaches: with the fused attention
            vitslim.optimize(teacher)
        teacher = family.encoder(teacher).to(device).eval()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set to the current one
        base = _status_kb("VmRSS") * 1024
    if mode == "inference":
        with torch.inference_mode():
            encoder(x)
    else:
        with torch.no_grad():
            target = family.output_features(teacher(x))
        out = family.output_features(encoder(x))
        sum(torch.nn.functional.mse_loss(o, t) for o, t in zip(out, target)).backward()
    peak = torch.cuda.max_memory_allocated() if cuda else _status_kb("VmHWM") * 1024
    return {"model": spec, "mode": mode, "fast": fast, "peak_mb": (peak - base) / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*")
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--child", nargs=2, metavar=("SPEC", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.fast, args.device)))
        return
    rows = []
    for spec in args.models:
        for mode in ("inference", "train"):
            cmd = [sys.executable, __file__, "--child", spec, mode, "--device", args.device] + (["--fast"] if args.fast else [])
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(f"{spec} {mode}: {rows[-1]['peak_mb']:.0f} MB", file=sys.stderr, flush=True)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    emit({"device": device, "torch": torch.__version__, "rows": rows}, args.json_out)


if __name__ == "__main__":
    main()
